"""Logits processors: numpy functions over one row of next-token logits.

`backends.generation` applies them between decoding steps;
`fast_decoding.next_token_log_probs` scores with `log_softmax`.

Example:
    >>> import numpy as np
    >>> top_k_filter(np.array([1.0, 3.0, 2.0]), 2)
    array([-inf,   3.,   2.])
"""

from __future__ import annotations

import numpy as np


def apply_repetition_penalty(logits: np.ndarray, seen: list[int], penalty: float) -> np.ndarray:
    """Every token already in the prompt or output: positive logits divided by `penalty`, negative multiplied."""
    if penalty == 1.0 or not seen:
        return logits
    ids = np.unique(np.asarray(seen))
    chosen = logits[ids]
    logits[ids] = np.where(chosen > 0, chosen / penalty, chosen * penalty)
    return logits


def banned_by_ngrams(history: list[int], size: int) -> set[int]:
    """Tokens that would repeat an n-gram of `size` already in `history` (prompt and output)."""
    if size <= 0 or len(history) + 1 < size:
        return set()
    if size == 1:
        return set(history)
    prefix = tuple(history[len(history) - size + 1:])
    return {history[i + size - 1] for i in range(len(history) - size + 1) if tuple(history[i:i + size - 1]) == prefix}


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits (ties at the boundary kept too); the rest become -inf."""
    if k >= logits.shape[-1]:
        return logits
    threshold = np.partition(logits, -k)[-k]
    return np.where(logits >= threshold, logits, -np.inf)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probabilities = softmax(logits[order].astype(np.float64))
    cumulative = np.cumsum(probabilities)
    kept = int(np.searchsorted(cumulative, p, side="left")) + 1  # first index whose total reaches p
    filtered = np.full_like(logits, -np.inf)
    keep = order[: min(kept, len(order))]
    filtered[keep] = logits[keep]
    return filtered


def softmax(logits: np.ndarray) -> np.ndarray:
    finite = logits[np.isfinite(logits)]
    shifted = np.exp(logits - (finite.max() if finite.size else 0.0))
    return shifted / shifted.sum()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    finite_max = np.max(logits[np.isfinite(logits)])
    shifted = logits - finite_max
    return shifted - np.log(np.sum(np.exp(shifted)))
