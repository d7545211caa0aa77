"""Greedy decoding speed, measured one way for every decoder and every exported file.

A variant's speed and its parent's are compared as a ratio (`speedup`), so
both must be timed alike: the same warm-up, the same clock, and the tokens
actually produced as the count. `backends.generation.greedy_tokens_per_second`
(a Keras model, through `decoder_for`) and
`backends.export.greedy_tokens_per_second` (an export in its own runtime)
both time through `tokens_per_second`.

Example:
    >>> tokens_per_second(lambda prompt, n: runtime.greedy(prompt, n), [464, 2068], 32)
    41.7
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

# A first call traces and compiles the prefill and the step; a few tokens run both.
WARM_UP_TOKENS = 4


def tokens_per_second(greedy: Callable[[list[int], int], Sequence[int]], prompt: list[int], new_tokens: int) -> float:
    """Batch-1 speed of `greedy(prompt, new_tokens)` (which returns the new tokens), after one
    warm-up call whose first-call costs are not counted."""
    greedy(list(prompt), min(WARM_UP_TOKENS, new_tokens))
    started = time.perf_counter()
    produced = greedy(list(prompt), new_tokens)
    return len(produced) / (time.perf_counter() - started)
