"""LoRA adapters on a KerasHub GPT-2, with Keras's own LoRA layers underneath.

KerasHub's `GPT2Backbone.enable_lora` fixes the targets (query, value) and
has no `alpha`; here the same Keras `enable_lora(rank, lora_alpha=...)` is
called on the chosen layers, and an adapter is saved as its own small file
(`adapter.lora.h5`: the A and B factors by layer index) plus `adapter.json`.

Example:
    >>> from backends import keras_gpt2, lora
    >>> lm = keras_gpt2.load("base-preset")
    >>> lora.enable(lm, rank=8, alpha=16, targets="query,value")
    >>> ...  # train
    >>> lora.save_adapter(lm, "adapter-folder")
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends import scoring
from backends.configs import LORA_TARGETS
from registry.errors import UsageError

from keras import ops  # noqa: E402

ADAPTER_WEIGHTS = "adapter.lora.h5"
ADAPTER_CONFIG = "adapter.json"


def _weighted_layers(backbone) -> list:
    # The same indexing KerasHub's save_lora_weights uses: layers with weights, in order.
    return [layer for layer in backbone._flatten_layers(include_self=False) if layer.weights]


def target_indices(backbone, targets: str) -> list[int]:
    if targets not in LORA_TARGETS:
        raise UsageError(f"unknown --targets {targets!r}; choose one of: {', '.join(LORA_TARGETS)}")
    names = LORA_TARGETS[targets]
    return [index for index, layer in enumerate(_weighted_layers(backbone)) if layer.name in names]


def enable(lm, *, rank: int, alpha: float, targets: str) -> list[int]:
    """Freeze every weight and add trainable rank-`rank` factors to the target layers."""
    backbone = lm.backbone
    indices = target_indices(backbone, targets)
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    layers = _weighted_layers(backbone)
    for index in indices:
        layer = layers[index]
        layer.trainable = True
        layer.enable_lora(rank, lora_alpha=alpha)
        # Keras leaves the bias of a LoRA layer trainable; an adapter stores only A and B,
        # so a trained bias would be lost on save. Keep it frozen.
        if getattr(layer, "bias", None) is not None:
            layer.bias.trainable = False
    backbone.trainable = True
    # A scoring function traced before LoRA was enabled reads the bare kernels: drop it.
    scoring.forget_compiled(lm)
    lm._gpt2reg_lora = {"rank": rank, "alpha": alpha, "targets": targets, "indices": indices}
    return indices


def parameter_counts(lm) -> tuple[int, int]:
    """(trainable, total) parameters, LoRA factors included."""
    trainable = sum(int(np.prod(w.shape)) for w in lm.backbone.trainable_weights)
    total = sum(int(np.prod(w.shape)) for w in lm.backbone.weights)
    return trainable, total


def save_adapter(lm, folder: str | Path) -> Path:
    import h5py

    settings = getattr(lm, "_gpt2reg_lora", None)
    if settings is None:
        raise ValueError("LoRA is not enabled on this model")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = _weighted_layers(lm.backbone)
    with h5py.File(folder / ADAPTER_WEIGHTS, "w") as store:
        for index in settings["indices"]:
            group = store.create_group(str(index))
            group["a"] = ops.convert_to_numpy(layers[index].lora_kernel_a)
            group["b"] = ops.convert_to_numpy(layers[index].lora_kernel_b)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return folder


def load_adapter(lm, folder: str | Path) -> dict:
    """Enable LoRA as the adapter was trained and load its factors into `lm`."""
    import h5py

    folder = Path(folder)
    settings = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    indices = enable(lm, rank=settings["rank"], alpha=settings["alpha"], targets=settings["targets"])
    if indices != settings["indices"]:
        raise UsageError("this adapter was trained on a model with other layers; load it on its own base variant")
    layers = _weighted_layers(lm.backbone)
    with h5py.File(folder / ADAPTER_WEIGHTS, "r") as store:
        for index in indices:
            layers[index].lora_kernel_a.assign(np.asarray(store[str(index)]["a"]))
            layers[index].lora_kernel_b.assign(np.asarray(store[str(index)]["b"]))
    return settings


def merge_into(adapted_lm, plain_lm) -> None:
    """Write base + scaled A·B of each LoRA layer of `adapted_lm` into the same layer of `plain_lm`."""
    settings = adapted_lm._gpt2reg_lora
    adapted, plain = _weighted_layers(adapted_lm.backbone), _weighted_layers(plain_lm.backbone)
    for index in settings["indices"]:
        # `kernel` of a LoRA-enabled layer is already base + (alpha / rank) · A·B.
        plain[index]._kernel.assign(ops.convert_to_numpy(adapted[index].kernel))
