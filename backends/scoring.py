"""Log-likelihood of texts under a GPT-2, as Hugging Face computes perplexity.

Each text is scored as one sequence with no token prepended: the loss covers
tokens 2..n given their prefix. A text longer than the context is scored with
a sliding window: each window is at most the context long, moves by `stride`,
and only counts the tokens not already counted by an earlier window (each with
as much left context as the window gives it).

Example:
    >>> from backends import keras_gpt2, scoring
    >>> lm = keras_gpt2.load("preset-folder")
    >>> scoring.score(lm, [[464, 2068, 7586]]).mean_nll
    10.8...
"""

from __future__ import annotations

import weakref

import numpy as np

from backends.loaded_model import LoadedModel, unwrap
from backends.perplexity import ContinuationScore, Score, continuation_sequences, windows  # noqa: F401

import keras  # noqa: E402
from keras import ops  # noqa: E402


def forget_compiled(model) -> None:
    """Drop the compiled scoring functions and the decoders kept for the model after changing its
    layers or weights (they would read the old ones: a decoder packs the weights it was built from)."""
    LoadedModel.of(model).forget_compiled()


def _compiled(model, name: str, make):
    """The model's compiled function `name`, made by `make(model_ref)` on first use and kept with the model.

    The function reaches the model through a weak reference: it is kept beside the
    model, and a strong one would keep the model alive for as long as its own state.
    """
    loaded = LoadedModel.of(model)
    compiled = loaded.compiled.get(name)
    if compiled is None:
        import tensorflow as tf

        # One compiled function per model; shapes vary so let tf.function relax them.
        compiled = loaded.compiled[name] = tf.function(make(weakref.ref(loaded.lm)), reduce_retracing=True)
    return compiled


def _token_nll(model_ref):
    def token_nll(token_ids, padding_mask):
        logits = model_ref()({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
        logits = ops.cast(logits[:, :-1, :], "float32")
        targets = token_ids[:, 1:]
        return keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)

    return token_nll


def score(model, texts: list[list[int]], *, stride: int | None = None, batch_size: int = 8) -> Score:
    """Summed negative log-likelihood over `texts` (token ids), weighted by tokens.

    `model`: a `backends.loaded_model.LoadedModel` or a bare `GPT2CausalLM`.
    """
    context = unwrap(model).backbone.max_sequence_length
    stride = stride or context // 2
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..{context}")
    spans = [span for ids in texts for span in windows(ids, context, stride)]
    # Sorting by length keeps padding (and wasted compute) small within a batch.
    spans.sort(key=lambda span: len(span[0]))
    token_nll = _compiled(model, "token_nll", _token_nll)
    total = 0.0
    counted = 0
    for start in range(0, len(spans), batch_size):
        batch = spans[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        token_ids = np.zeros((len(batch), width), dtype="int32")
        padding_mask = np.zeros((len(batch), width), dtype="int32")
        for row, (ids, _) in enumerate(batch):
            token_ids[row, : len(ids)] = ids
            padding_mask[row, : len(ids)] = 1
        nll = np.asarray(token_nll(token_ids, padding_mask), dtype=np.float64)
        for row, (ids, targets) in enumerate(batch):
            # Targets are the last `targets` tokens of the window: positions len-targets..len-1,
            # predicted from logits at one position earlier.
            total += float(nll[row, len(ids) - 1 - targets : len(ids) - 1].sum())
            counted += targets
    return Score(total_nll=total, tokens=counted)


# ---------------------------------------------------------------- continuations (tasks)


def _target_logprobs(model_ref):
    def target_logprobs(token_ids, padding_mask, targets):
        logits = ops.cast(model_ref()({"token_ids": token_ids, "padding_mask": padding_mask}, training=False), "float32")
        logprobs = -keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
        return logprobs, ops.equal(ops.cast(ops.argmax(logits, axis=-1), targets.dtype), targets)

    return target_logprobs


def score_continuations(model, requests: list[tuple[list[int], list[int]]], *, batch_size: int = 8) -> list[ContinuationScore]:
    """Log-likelihood of each continuation given its context, batched with padding masks.

    A context longer than the model's positions leaves room by dropping its
    oldest tokens (callers that must not cut a question check the length first).
    An empty context starts from the end-of-text token, as generation does.
    """
    context = unwrap(model).backbone.max_sequence_length
    sequences = continuation_sequences(requests, context)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    function = _compiled(model, "target_logprobs", _target_logprobs)
    scores: list[ContinuationScore | None] = [None] * len(sequences)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in batch) - 1
        token_ids = np.zeros((len(batch), width), dtype="int32")
        targets = np.zeros((len(batch), width), dtype="int32")
        padding_mask = np.zeros((len(batch), width), dtype="int32")
        for row, index in enumerate(batch):
            ids = sequences[index]
            token_ids[row, : len(ids) - 1] = ids[:-1]
            targets[row, : len(ids) - 1] = ids[1:]
            padding_mask[row, : len(ids) - 1] = 1
        logprobs, greedy = function(token_ids, padding_mask, targets)
        logprobs, greedy = np.asarray(logprobs, dtype=np.float64), np.asarray(greedy)
        for row, index in enumerate(batch):
            end = len(sequences[index]) - 1
            count = len(requests[index][1])
            scores[index] = ContinuationScore(
                logprob=float(logprobs[row, end - count : end].sum()), tokens=count,
                greedy=bool(greedy[row, end - count : end].all()),
            )
    return scores
