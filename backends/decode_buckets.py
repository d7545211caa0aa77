"""The shape buckets both decoders round to: `decoding.CompiledDecoder` and `fast_decoding.RuntimeDecoder`.

A cache holds every position a call can reach, rounded up to CACHE_BUCKET, so
calls of nearby lengths share one compiled function (SPEC: KerasHub recompiles
for every new length). Prompts are padded to a multiple of PROMPT_BUCKET.

Example:
    >>> round_up(70, CACHE_BUCKET), round_up(70, CACHE_BUCKET, limit=100)
    (128, 100)
"""

CACHE_BUCKET = 64
PROMPT_BUCKET = 16


def round_up(value: int, multiple: int, limit: int | None = None) -> int:
    rounded = -(-value // multiple) * multiple
    return min(rounded, limit) if limit is not None else rounded
