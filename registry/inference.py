"""Decoders of registered variants, opened without TensorFlow where the files allow, and kept loaded.

A float32 or int8 variant, or an adapter over one, decodes through onnxruntime
from its own files (`backends.weight_files.decoder_from_preset`): `gpt2reg
generate` on such a variant never imports TensorFlow, Keras or KerasHub. Any
other variant (int4, GPTQ, AWQ, float8, bfloat16, an HF-layout export), and
``--runtime keras`` or ``--xla``, loads the KerasHub model as before.

What is opened stays open in this process (`KEPT`): the runtime decoder, or
the Keras model with its compiled decoders, under the content hashes of the
weights it was built from. A second call on the same variant pays only for its
own prefill and decoding. The files are hashed once, when first opened; their
size and modification time are part of the key, so files changed on disk since
are opened (and checked against their hash) again. What is kept is bounded by
the bytes of the weights behind it (``GPT2REG_KEEP_LOADED_MB``, default 4096;
0 keeps nothing), the least recently used released first; `Registry.release`
releases on request.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from registry import artifacts
from registry.errors import UsageError
from registry.variant import Variant
from registry.variant_files import check_pinned_base, checked

KEEP_LOADED_ENV = "GPT2REG_KEEP_LOADED_MB"
DEFAULT_KEEP_LOADED_MB = 4096
LIGHT_RUNTIMES = ("auto", "onnx", "litert")


@dataclass
class _Kept:
    value: Any
    size: int  # bytes of the weight files behind it
    variants: frozenset[str]  # content hashes it was built from


class KeptModels:
    """Loaded decoders and models by key, least recently used first out past `limit_bytes`."""

    def __init__(self):
        self._kept: OrderedDict[tuple, _Kept] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def limit_bytes() -> int:
        text = os.environ.get(KEEP_LOADED_ENV, str(DEFAULT_KEEP_LOADED_MB))
        try:
            return max(0, int(float(text) * 2**20))
        except ValueError:
            raise UsageError(f"{KEEP_LOADED_ENV}={text!r} is not a number of megabytes; e.g. {KEEP_LOADED_ENV}=2048") from None

    def get(self, key: tuple) -> Any:
        with self._lock:
            kept = self._kept.get(key)
            if kept is None:
                return None
            self._kept.move_to_end(key)
            return kept.value

    def put(self, key: tuple, value: Any, *, size: int, variants: frozenset[str]) -> None:
        limit = self.limit_bytes()
        with self._lock:
            self._kept[key] = _Kept(value, size, variants)
            self._kept.move_to_end(key)
            while self._kept and sum(kept.size for kept in self._kept.values()) > limit:
                self._kept.popitem(last=False)

    def release(self, content_hash: str | None = None) -> int:
        """Forget what was built from `content_hash` (everything when None); returns how many were kept."""
        with self._lock:
            keys = [key for key, kept in self._kept.items() if content_hash is None or content_hash in kept.variants]
            for key in keys:
                del self._kept[key]
            return len(keys)

    def __len__(self) -> int:
        return len(self._kept)


KEPT = KeptModels()


def _stamp(folder: Path) -> tuple:
    """What changes when the weight files change on disk: each file's name, size and modification time."""
    return tuple((file.name, (stat := file.stat()).st_size, stat.st_mtime_ns) for file in artifacts.weight_files(folder))


def _weights_size(folder: Path) -> int:
    return sum(file.stat().st_size for file in artifacts.weight_files(folder))


def _files_key(variants: list[Variant], paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for variant, path in zip(variants, paths):
        digest.update(variant.content_hash.encode() + b"\0")
        for settings in ("config.json", "adapter.json"):
            if (path / settings).is_file():
                digest.update((path / settings).read_bytes() + b"\0")
    return digest.hexdigest()[:32]


class VariantDecoders:
    """Opens the decoders of one registry's variants; `Registry.light_decoder` and `Registry.keras_decoder` call it.

    `get`, `preset_path` and `load` are the registry's own (`registry.sdk.Registry`).
    """

    def __init__(self, *, get: Callable[[Any], Variant], preset_path: Callable[[Variant], Path],
                 load: Callable[..., Any], runtime_cache: Path | None):
        self.get, self.preset_path, self.load = get, preset_path, load
        self.runtime_cache = runtime_cache

    def _base_of(self, adapter: Variant) -> Variant:
        base = self.get(adapter.parent)
        check_pinned_base(adapter, base)
        return base

    def light(self, variant: Variant, *, runtime: str = "auto", xla: bool | None = None):
        """The variant's runtime decoder read from its files without Keras, or None when it needs Keras
        (another precision, ``runtime="keras"``, an XLA setting, an export Keras cannot load either)."""
        from backends.weight_files import readable_precision

        if runtime not in LIGHT_RUNTIMES or xla is not None or variant.kind not in ("full", "adapter"):
            return None
        runtime = "onnx" if runtime == "auto" else runtime
        files = [variant]
        if variant.kind == "adapter":
            files.insert(0, self._base_of(variant))
        paths = [self.preset_path(v) for v in files]
        if readable_precision(paths[0]) is None:
            return None
        key = ("light", runtime, *((v.content_hash, _stamp(p)) for v, p in zip(files, paths)))
        decoder = KEPT.get(key)
        if decoder is None:
            from backends.weight_files import decoder_from_preset

            for v, path in zip(files, paths):
                checked(v, path)
            adapter = paths[1] if len(paths) > 1 else None
            # The weight files were just checked against their content hashes: those, with the
            # settings files beside them, name the graph too.
            files_key = _files_key(files, paths)
            decoder = decoder_from_preset(paths[0], runtime, self.runtime_cache, adapter_dir=adapter,
                                          files_key=files_key)
            KEPT.put(key, decoder, size=sum(_weights_size(p) for p in paths),
                     variants=frozenset(v.content_hash for v in files))
        return decoder

    def light_scorer(self, variant: Variant):
        """A `backends.perplexity.RuntimeScorer` of the variant, from its files without Keras, kept
        loaded; None when the variant needs Keras."""
        decoder = self.light(variant)
        if decoder is None:
            return None
        key = ("scorer", decoder)
        scorer = KEPT.get(key)
        if scorer is None:
            from backends.adapter_files import needs_quantized_base
            from backends.perplexity import RuntimeScorer
            from backends.weight_files import output_embedding

            if variant.kind == "adapter":
                base = self._base_of(variant)
                as_int8 = needs_quantized_base(self.preset_path(variant))
            else:
                base, as_int8 = variant, False
            path = self.preset_path(base)
            scorer = RuntimeScorer(decoder, output_embedding(path, as_int8=as_int8))
            KEPT.put(key, scorer, size=_weights_size(path) // 4,  # the embedding, about a quarter of GPT-2
                     variants=frozenset({variant.content_hash, base.content_hash}))
        return scorer

    def keras(self, variant: Variant, *, runtime: str = "auto", xla: bool | None = None, device: str = "auto"):
        """The variant's decoder through its loaded KerasHub model (kept loaded, with its compiled decoders)."""
        from backends.decoding import decoder_for

        files = [self._base_of(variant), variant] if variant.kind == "adapter" else [variant]
        paths = [self.preset_path(v) for v in files]
        key = ("keras", device, *((v.content_hash, _stamp(p)) for v, p in zip(files, paths)))
        lm = KEPT.get(key)
        if lm is None:
            lm = self.load(variant)
            KEPT.put(key, lm, size=sum(_weights_size(p) for p in paths),
                     variants=frozenset(v.content_hash for v in files))
        return decoder_for(lm, xla, runtime)
