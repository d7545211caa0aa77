"""Everything a plugin author needs, in one import.

    from registry.plugin_api import Capability, CapabilityResult, UsageError, hookimpl, option

A capability plugin declares its options, does its work in `run(context,
options)` and returns a `CapabilityResult`; the core records it and gives it
a `gpt2reg NAME` command (see `docs/plugins.md`). This module is the surface a
plugin may rely on: the contract classes, the errors, the option declaration,
and the model operations below, which keep TensorFlow and KerasHub inside the
backend. Importing it is cheap (the CLI imports every plugin at start); the
backend loads on the first call.

Progress goes through the run's own sink: ``context.progress(description=...)``,
or ``context.progress(step=, total=, loss=, tokens_per_second=)`` for a bar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.capability import Capability, CapabilityResult, Outcome, RunContext
from registry.errors import NotFoundError, RegistryError, RunFailed, UsageError
from registry.hookspecs import hookimpl
from registry.options import option

__all__ = [
    "Capability", "CapabilityResult", "Outcome", "RunContext", "hookimpl", "option",
    "UsageError", "RunFailed", "RegistryError", "NotFoundError",
    "load_model", "save_model", "build_model", "parameter_count", "weights",
    "encode", "decode", "read_documents", "heldout_documents", "score",
    "EVALUATION_TOKENS",
]

EVALUATION_TOKENS = 2048  # of the default held-out text: enough for a stable perplexity, quick to score


# ---------------------------------------------------------------- models


def load_model(preset: str | Path, dtype: str | None = None):
    """A KerasHub ``GPT2CausalLM`` from a preset folder (``context.parent_preset()`` gives the parent's)."""
    from backends import keras_gpt2

    return keras_gpt2.load(preset, dtype=dtype)


def save_model(lm, folder: str | Path) -> None:
    """Write `lm` as a KerasHub preset folder: what `CapabilityResult.preset_dir` points at."""
    from backends import keras_gpt2

    keras_gpt2.save(lm, Path(folder))


def build_model(config: str = "tiny", seed: int = 0):
    """A randomly initialised GPT-2 of a named configuration (tiny, gpt2, gpt2-medium, ...)."""
    from backends import keras_gpt2

    return keras_gpt2.build(keras_gpt2.get_config(config), seed=seed)


def parameter_count(lm) -> int:
    from backends import keras_gpt2

    return keras_gpt2.parameter_count(lm)


def weights(lm) -> dict[str, Any]:
    """The backbone's variables by path (``transformer_layer_0/self_attention/query/kernel``), the model's
    own: ``.numpy()`` reads one, ``.assign(array)`` writes it."""
    return {variable.path: variable for variable in lm.backbone.weights}


# ---------------------------------------------------------------- text


def encode(text: str) -> list[int]:
    """GPT-2 token ids of `text`, as every command gives them to the model."""
    from backends.tokenizer import encode as encode_text

    return encode_text(text)


def decode(token_ids: list[int]) -> str:
    from backends.tokenizer import decode as decode_ids

    return decode_ids(token_ids)


def read_documents(paths: list[str], text_field: str = "text") -> list[list[int]]:
    """Token ids of each document in text files, folders of them or JSONL (one clear error for a bad path)."""
    from registry.data import read_texts, tokenize_documents

    return tokenize_documents(read_texts(paths, text_field=text_field))


def heldout_documents(paths: list[str] | None = None, text_field: str = "text") -> list[list[int]]:
    """The documents of `paths`, or when none are given the embedded held-out text (its first
    `EVALUATION_TOKENS` tokens), on which `quantize` and `export` measure perplexity too."""
    if paths:
        return read_documents(paths, text_field)
    from registry.corpus import documents

    texts, _ = documents()
    return [encode("\n\n".join(texts[::10]))[:EVALUATION_TOKENS]]


# ---------------------------------------------------------------- measuring


def score(lm, documents: list[list[int]], *, stride: int | None = None, batch_size: int = 8):
    """Perplexity of `lm` over `documents` as `gpt2reg evaluate` computes it: ``.perplexity``,
    ``.mean_nll``, ``.tokens``."""
    from backends import scoring

    return scoring.score(lm, documents, stride=stride, batch_size=batch_size)
