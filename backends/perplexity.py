"""Perplexity as Hugging Face computes it, without Keras: the windows, the sums, and a runtime scorer.

Each text is scored as one sequence with no token prepended: the loss covers
tokens 2..n given their prefix. A text longer than the context is scored with
a sliding window: each window is at most the context long, moves by `stride`,
and only counts the tokens not already counted by an earlier window (each with
as much left context as the window gives it). `backends.scoring` computes
this through the KerasHub model; `RuntimeScorer` through a runtime decoder
(`backends.fast_decoding.RuntimeDecoder`), whose prefill gives the final
hidden state of every token, times the output embedding for the logits.

Example:
    >>> scorer = RuntimeScorer(decoder_from_preset("preset-folder"), output_embedding("preset-folder"))
    >>> scorer.score([[464, 2068, 7586]]).mean_nll
    10.8...
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from backends.decoder import Decoder

# Logits of this many positions at a time: [rows, vocabulary] float64 stays near 100 MB for GPT-2.
_LOGIT_ROWS = 256


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


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float  # sum of log p(continuation token | everything before it)
    tokens: int
    greedy: bool  # every continuation token is the model's top choice


def continuation_sequences(requests: list[tuple[list[int], list[int]]], context: int) -> list[list[int]]:
    """Each (prefix, continuation) as one sequence of at most `context` + 1 tokens (the oldest prefix
    tokens dropped); an empty prefix starts from the end-of-text token, as generation does."""
    from backends.configs import END_OF_TEXT_ID

    sequences = []
    for prefix, continuation in requests:
        if not continuation:
            raise ValueError("an empty continuation has no likelihood")
        if len(continuation) > context:
            raise ValueError(f"a continuation of {len(continuation)} tokens does not fit a context of {context}")
        whole = (list(prefix) or [END_OF_TEXT_ID]) + list(continuation)
        sequences.append(whole[-(context + 1):])
    return sequences


class RuntimeScorer:
    """Scores texts through a runtime decoder's prefill and the model's output embedding [vocabulary, width]."""

    def __init__(self, decoder: Decoder, output_embedding: np.ndarray):
        self.decoder = decoder
        self.runtime = decoder.runtime
        self._embedding_t = np.ascontiguousarray(np.asarray(output_embedding, dtype=np.float32).T)
        self._head = None  # the graph from states to log-probabilities, made at the first score

    def score(self, texts: list[list[int]], *, stride: int | None = None, batch_size: int = 8) -> Score:
        """Summed negative log-likelihood over `texts` (token ids), weighted by tokens; as `backends.scoring.score`."""
        context = self.decoder.max_positions
        stride = stride or context // 2
        if not 0 < stride <= context:
            raise ValueError(f"stride must be in 1..{context}")
        spans = [span for ids in texts for span in windows(ids, context, stride)]
        spans.sort(key=lambda span: len(span[0]))  # rows of one prefill differ little in length
        total, counted = 0.0, 0
        for start in range(0, len(spans), batch_size):
            batch = spans[start : start + batch_size]
            with self.decoder.lock:
                hidden = self.decoder.start([ids for ids, _ in batch], max_new_tokens=0).prompt_hidden
            for row, (ids, targets) in enumerate(batch):
                # The states at positions len-1-targets .. len-2 predict the last `targets` tokens.
                first = len(ids) - 1 - targets
                total += self._nll(hidden[row, first : len(ids) - 1], ids[first + 1 :])
                counted += targets
        return Score(total_nll=total, tokens=counted)

    def score_continuations(self, requests: list[tuple[list[int], list[int]]], *,
                            batch_size: int = 8) -> list[ContinuationScore]:
        """Log-likelihood of each continuation given its prefix; as `backends.scoring.score_continuations`."""
        sequences = continuation_sequences(requests, self.decoder.max_positions)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        scores: list[ContinuationScore | None] = [None] * len(sequences)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            with self.decoder.lock:
                hidden = self.decoder.start([sequences[i][:-1] for i in batch], max_new_tokens=0).prompt_hidden
            for row, index in enumerate(batch):
                ids, count = sequences[index], len(requests[index][1])
                end = len(ids) - 1  # the state at position i predicts token i + 1
                logprobs, greedy = self._target_log_probs(hidden[row, end - count : end], ids[end - count + 1 :])
                scores[index] = ContinuationScore(logprob=float(logprobs.sum()), tokens=count, greedy=bool(greedy.all()))
        return scores

    def _target_log_probs(self, states: np.ndarray, targets: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """log p(target) of each state's next token, and whether it was the top choice."""
        if self._head is None:
            self._head = _target_head()
        found, top = [], []
        for begin in range(0, len(targets), _LOGIT_ROWS):
            chosen = np.asarray(targets[begin : begin + _LOGIT_ROWS], dtype=np.int64)
            outputs = self._head.run({"states": np.ascontiguousarray(states[begin : begin + _LOGIT_ROWS]),
                                      "embedding": self._embedding_t, "targets": chosen})
            found.append(outputs["log_prob"].astype(np.float64))
            top.append(outputs["top"] == chosen)
        return np.concatenate(found), np.concatenate(top)

    def _nll(self, states: np.ndarray, targets: list[int]) -> float:
        return float(-self._target_log_probs(states, targets)[0].sum())


def _target_head():
    """An onnxruntime session from final hidden states to each target's log-probability and the
    top choice: logits, log-softmax over the vocabulary and the gather in one multi-threaded
    graph, in float32. The embedding is an input, not a weight of the graph: nothing is copied.
    The same in numpy (float64 log-softmax) took scoring of `gpt2` from 509 tokens/s for a bare
    forward pass to logits down to 391 (`python bench/run.py --only scoring-runtime`)."""
    from onnx import TensorProto, helper

    from backends.runtime_sessions import OnnxSession, cpu_threads

    nodes = [
        helper.make_node("MatMul", ["states", "embedding"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=-1),
        helper.make_node("Unsqueeze", ["targets", "one"], ["target_column"]),
        helper.make_node("GatherElements", ["log_probs", "target_column"], ["chosen"], axis=1),
        helper.make_node("Squeeze", ["chosen", "one"], ["log_prob"]),
        helper.make_node("ArgMax", ["logits"], ["top"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "target_log_probs",
        [helper.make_tensor_value_info("states", TensorProto.FLOAT, ["rows", "width"]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["width", "vocabulary"]),
         helper.make_tensor_value_info("targets", TensorProto.INT64, ["rows"])],
        [helper.make_tensor_value_info("log_prob", TensorProto.FLOAT, ["rows"]),
         helper.make_tensor_value_info("top", TensorProto.INT64, ["rows"])],
        [helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="gpt2-registry")
    return OnnxSession(model.SerializeToString(), threads=cpu_threads())
