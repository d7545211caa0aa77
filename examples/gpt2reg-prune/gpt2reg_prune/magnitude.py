"""Magnitude pruning on numpy arrays: which weights to zero, and how many are zero.

Exactly round(sparsity * n) weights are set to zero, n being the weights in
scope (one matrix for `per-matrix`, all of them together for `global`): the
smallest by absolute value, ties at the threshold broken by position so the
result is the same on every run. Weights that are already zero are the
smallest of all, so pruning a pruned model to the same sparsity zeroes nothing
more.

Example:
    >>> import numpy as np
    >>> from gpt2reg_prune import magnitude
    >>> pruned = magnitude.prune({"w": np.array([[0.1, -3.0], [2.0, -0.2]])}, 0.5, "per-matrix")
    >>> pruned["w"].tolist()
    [[0.0, -3.0], [2.0, 0.0]]
    >>> magnitude.zero_fraction(pruned.values())
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

SCOPES = ("per-matrix", "global")


def prune(matrices: dict[str, np.ndarray], sparsity: float, scope: str) -> dict[str, np.ndarray]:
    """Copies of `matrices` with their smallest-magnitude weights set to zero."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of: {', '.join(SCOPES)}")
    if scope == "per-matrix":
        # Each matrix loses the same fraction: no layer is emptied because its weights are small.
        return {name: _zero_smallest([weights], sparsity)[0] for name, weights in matrices.items()}
    return dict(zip(matrices, _zero_smallest(list(matrices.values()), sparsity)))


def _zero_smallest(arrays: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    total = sum(array.size for array in arrays)
    count = math.floor(sparsity * total + 0.5)
    if count == 0:
        return [array.copy() for array in arrays]
    magnitudes = np.concatenate([np.abs(array).ravel() for array in arrays])
    threshold = np.partition(magnitudes, count - 1)[count - 1]
    ties_left = count - int(np.count_nonzero(magnitudes < threshold))
    del magnitudes  # one copy of the weights at a time: a gpt2-xl has 1.2 billion in its dense kernels
    pruned = []
    for array in arrays:
        size = np.abs(array)
        drop = size < threshold
        if ties_left > 0:
            tied = np.flatnonzero(size == threshold)[:ties_left]
            drop.ravel()[tied] = True
            ties_left -= tied.size
        pruned.append(np.where(drop, np.zeros_like(array), array))
    return pruned


def zero_count(arrays: Iterable[np.ndarray]) -> int:
    """How many weights are exactly zero, over all `arrays`."""
    return sum(array.size - int(np.count_nonzero(array)) for array in arrays)


def zero_fraction(arrays: Iterable[np.ndarray]) -> float:
    """The fraction of the weights that are exactly zero, counted over all `arrays` together."""
    arrays = list(arrays)
    total = sum(array.size for array in arrays)
    return zero_count(arrays) / total if total else 0.0
