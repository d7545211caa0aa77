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

import math
from dataclasses import dataclass

import numpy as np

import keras  # noqa: E402
from keras import ops  # noqa: E402


@dataclass(frozen=True)
class Score:
    total_nll: float
    tokens: int  # tokens whose likelihood was counted

    @property
    def mean_nll(self) -> float:
        return self.total_nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll) if self.tokens else float("nan")


def windows(token_ids: list[int], context: int, stride: int) -> list[tuple[list[int], int]]:
    """(window ids, number of targets at the window's end) covering tokens 2..n once."""
    n = len(token_ids)
    if n < 2:
        return []
    if n <= context:
        return [(list(token_ids), n - 1)]
    spans = []
    previous_end = 1  # token 0 is never a target
    begin = 0
    while previous_end < n:
        end = min(begin + context, n)
        spans.append((list(token_ids[begin:end]), end - previous_end))
        previous_end = end
        begin += stride
    return spans


_COMPILED = "_gpt2reg_token_nll"


def forget_compiled(lm) -> None:
    """Drop the compiled scoring function after changing the model's layers (it would read the old ones)."""
    if hasattr(lm, _COMPILED):
        delattr(lm, _COMPILED)


def _token_nll_function(lm):
    # One compiled function per model; shapes vary so let tf.function relax them.
    cached = getattr(lm, _COMPILED, None)
    if cached is not None:
        return cached

    def token_nll(token_ids, padding_mask):
        logits = lm({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
        logits = ops.cast(logits[:, :-1, :], "float32")
        targets = token_ids[:, 1:]
        return keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)

    import tensorflow as tf

    compiled = tf.function(token_nll, reduce_retracing=True)
    setattr(lm, _COMPILED, compiled)
    return compiled


def score(lm, texts: list[list[int]], *, stride: int | None = None, batch_size: int = 8) -> Score:
    """Summed negative log-likelihood over `texts` (token ids), weighted by tokens."""
    context = lm.backbone.max_sequence_length
    stride = stride or context // 2
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..{context}")
    spans = [span for ids in texts for span in windows(ids, context, stride)]
    # Sorting by length keeps padding (and wasted compute) small within a batch.
    spans.sort(key=lambda span: len(span[0]))
    token_nll = _token_nll_function(lm)
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
