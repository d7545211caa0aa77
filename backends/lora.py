"""LoRA adapters on a KerasHub GPT-2, factored as in the LoRA paper and PEFT.

Keras's own `enable_lora` factors an attention kernel of shape
(hidden, heads, head_dim) per head: A is (hidden, heads, r) and B is
(r, head_dim), which for `gpt2` at rank 8 on query and value trains 1.43 % of
the weights, six times what LoRA promises. Here each target kernel is seen as
the matrix it is, (inputs, outputs): A is (inputs, r) and B is (r, outputs),
W' = W + (alpha / r) · A·B, and the low-rank path is added to the layer's own
output, x·W + (alpha / r) · dropout(x)·A·B. That path never forms A·B or a
gradient of W, works the same over a float or an int8 (Keras-quantized)
kernel, and trains 0.24 % of `gpt2` at rank 8 on query and value.

Saved as `adapter.lora.h5` (A and B by layer index) plus `adapter.json`.

Example:
    >>> from backends import keras_gpt2, lora
    >>> lm = keras_gpt2.load("base-preset")
    >>> lora.enable(lm, rank=8, alpha=16, targets="query,value")
    >>> ...  # train
    >>> lora.save_adapter(lm, "adapter-folder")
"""

from __future__ import annotations

import json
import math
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backends.adapter_format import ADAPTER_CONFIG, ADAPTER_FORMAT, ADAPTER_WEIGHTS, merged_kernel
from backends.configs import LORA_TARGETS
from backends.loaded_model import LoadedModel, unwrap
from registry.errors import UsageError

import keras  # noqa: E402
from keras import ops  # noqa: E402

BASE_QUANTIZATIONS = (None, "int8")


def _weighted_layers(backbone) -> list:
    # Layers with weights, in a fixed order: an adapter names its layers by index in this list.
    return [layer for layer in backbone._flatten_layers(include_self=False) if layer.weights]


def target_indices(backbone, targets: str) -> list[int]:
    if targets not in LORA_TARGETS:
        raise UsageError(f"unknown --targets {targets!r}; choose one of: {', '.join(LORA_TARGETS)}")
    names = LORA_TARGETS[targets]
    return [index for index, layer in enumerate(_weighted_layers(backbone)) if layer.name in names]


def _kernel_shape(layer) -> tuple[int, ...]:
    return tuple(getattr(layer, "original_kernel_shape", None) or layer._kernel.shape)


def _split(layer) -> tuple[int, int]:
    """How many leading kernel axes the layer contracts with its input, and the input width."""
    shape = _kernel_shape(layer)
    equation = getattr(layer, "equation", None)
    if equation is None:  # Dense: (inputs, outputs)
        return 1, shape[0]
    inputs, rest = equation.split(",")
    kernel = rest.split("->")[0]
    contracted = len([axis for axis in kernel if axis in inputs])
    # Every GPT-2 kernel contracts its leading axes with the input's trailing ones.
    if kernel[:contracted] != inputs[-contracted:]:
        raise ValueError(f"LoRA cannot factor layer {layer.name} ({equation})")
    return contracted, math.prod(shape[:contracted])


@dataclass
class _LowRank:
    """An adapted layer's factors and what its low-rank path and the weight-reading decoders need."""

    a: Any  # [inputs, r] trainable variable, tracked by the layer
    b: Any  # [r, outputs] trainable variable, tracked by the layer
    scale: float  # alpha / r
    activation: Any  # the layer's own activation, applied after the update
    seed: Any  # SeedGenerator of the dropout on the adapter's input, or None
    dropout: float  # on the adapter's input, while training
    fan_in: int  # the width the input is seen as: the kernel's contracted axes


# By layer, held weakly: the factors are the layer's weights, the rest lives beside it.
_ADAPTED: "weakref.WeakKeyDictionary[Any, _LowRank]" = weakref.WeakKeyDictionary()


def factor_variables(layer) -> tuple[Any, Any] | None:
    """The trainable (A, B) variables of an adapted layer; None for a plain layer."""
    low_rank = _ADAPTED.get(layer)
    return None if low_rank is None else (low_rank.a, low_rank.b)


def _add_factors(layer, *, rank: int, alpha: float, dropout: float, seed: int) -> None:
    contracted, fan_in = _split(layer)
    fan_out = math.prod(_kernel_shape(layer)[contracted:])
    layer._tracker.unlock()
    # As in the LoRA paper: A random, B zero, so training starts from the base model exactly.
    # `add_weight` makes them the layer's weights, which training, the optimizer and checkpoints see.
    a = layer.add_weight(
        name="lora_a", shape=(fan_in, rank), initializer=keras.initializers.HeUniform(seed=seed), trainable=True
    )
    b = layer.add_weight(name="lora_b", shape=(rank, fan_out), initializer="zeros", trainable=True)
    # Tracked by the layer, as any Keras seed generator in it: its state is among the
    # model's variables, which training seeds and checkpoints save.
    seed_generator = layer._tracker.track(keras.random.SeedGenerator(seed)) if dropout else None
    layer._tracker.lock()
    # The update belongs before the activation (the feed-forward Dense applies GELU):
    # the layer's own product runs linear and the activation is applied after the sum.
    # Decoders that read the weights instead of calling the layer need both the
    # scale and the activation the layer had (`factors`, `activation`).
    activation = getattr(layer, "activation", None) or keras.activations.linear
    _ADAPTED[layer] = _LowRank(a=a, b=b, scale=alpha / rank, activation=activation, seed=seed_generator,
                               dropout=dropout, fan_in=fan_in)
    layer.activation = keras.activations.linear
    # The layer becomes its class's LoRA version (as PEFT swaps a LoRA module in): the same
    # object, weights and tracking, with a call that adds the low-rank path.
    layer.__class__ = _lora_class(type(layer))


def _low_rank_output(layer, inputs, outputs, training):
    """The layer's own `outputs` plus its low-rank path on `inputs`, then its activation."""
    low_rank = _ADAPTED[layer]
    x = inputs
    if low_rank.dropout and training:
        x = keras.random.dropout(x, low_rank.dropout, seed=low_rank.seed)
    x = ops.reshape(x, (-1, low_rank.fan_in))
    update = ops.matmul(ops.matmul(x, low_rank.a), low_rank.b)
    return low_rank.activation(outputs + ops.cast(low_rank.scale * ops.reshape(update, ops.shape(outputs)),
                                                  outputs.dtype))


_LORA_CLASSES: dict[type, type] = {}


def _lora_class(base: type) -> type:
    """`base` (Dense, EinsumDense) with the low-rank path added to its output.

    Keras runs `quantized_call` for a quantized layer and `call` otherwise; both keep the
    layer's own maths, so the path works the same over a float or an int8 kernel.
    """
    if base in _LORA_CLASSES:
        return _LORA_CLASSES[base]

    class LoRALayer(base):
        def call(self, inputs, *args, training=None, **kwargs):
            return _low_rank_output(self, inputs, super().call(inputs, *args, training=training, **kwargs), training)

        def quantized_call(self, inputs, *args, training=None, **kwargs):
            outputs = super().quantized_call(inputs, *args, training=training, **kwargs)
            return _low_rank_output(self, inputs, outputs, training)

    LoRALayer.__name__ = LoRALayer.__qualname__ = f"LoRA{base.__name__}"
    _LORA_CLASSES[base] = LoRALayer
    return LoRALayer


def enable(model, *, rank: int, alpha: float, targets: str, dropout: float = 0.0, seed: int = 0,
           base_quantization: str | None = None) -> list[int]:
    """Freeze every weight and add trainable rank-`rank` factors to the target layers.

    `model`: a `backends.loaded_model.LoadedModel` or a bare `GPT2CausalLM`; the
    adapter's settings are kept with it (`settings`).
    `base_quantization="int8"` quantizes the frozen backbone first (Keras int8,
    as QLoRA does with 4 bits): the factors train against the int8 weights.
    """
    if base_quantization not in BASE_QUANTIZATIONS:
        raise UsageError(f"unknown base quantization {base_quantization!r}; choose int8 or none")
    loaded = LoadedModel.of(model)
    backbone = loaded.lm.backbone
    indices = target_indices(backbone, targets)
    if base_quantization:
        from backends.quantization import quantize_backbone

        # Only the backbone: KerasHub's tokenizer layer cannot be quantized before first use.
        quantize_backbone(backbone, base_quantization)
    for variable in backbone.variables:
        variable.trainable = False
    layers = _weighted_layers(backbone)
    for position, index in enumerate(indices):
        _add_factors(layers[index], rank=rank, alpha=alpha, dropout=dropout, seed=seed + position)
    # A scoring function traced before LoRA was enabled runs the bare layers: drop it.
    loaded.forget_compiled()
    loaded.adapter = {
        "format": ADAPTER_FORMAT, "rank": rank, "alpha": alpha, "targets": targets, "dropout": dropout,
        "base_quantization": base_quantization, "indices": indices,
    }
    return indices


def settings(model) -> dict | None:
    """The settings of the adapter enabled on the model (as `save_adapter` writes them), or None."""
    return LoadedModel.of(model).adapter


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters, LoRA factors included."""
    lm = unwrap(model)
    trainable = sum(int(np.prod(w.shape)) for w in lm.backbone.trainable_weights)
    total = sum(int(np.prod(w.shape)) for w in lm.backbone.weights if "scale" not in w.path)
    return trainable, total


def _factors(loaded: LoadedModel) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    layers = _weighted_layers(loaded.lm.backbone)
    return {
        index: tuple(ops.convert_to_numpy(variable) for variable in factor_variables(layers[index]))
        for index in loaded.adapter["indices"]
    }


# -- what decoders that read weights need ---------------------------------------------
# The compiled Keras decoder and the onnxruntime and LiteRT graphs do not call the layers;
# they read the kernels. An adapted layer's kernel is its base's: the update lives in the
# factors, and these functions hand it to them.


def factors(layer) -> tuple[np.ndarray, np.ndarray] | None:
    """(A [inputs, r], (alpha / r) · B [r, outputs]) of an adapted layer as float32; None for a plain layer."""
    low_rank = _ADAPTED.get(layer)
    if low_rank is None:
        return None
    a = ops.convert_to_numpy(low_rank.a).astype("float32")
    b = ops.convert_to_numpy(low_rank.b).astype("float32")
    return a, (np.float32(low_rank.scale) * b).astype("float32")


def activation(layer):
    """The activation the layer applies after its (adapted) product."""
    low_rank = _ADAPTED.get(layer)
    return (low_rank.activation if low_rank is not None else None) or getattr(layer, "activation", None)


def folded_kernel(layer, kernel: np.ndarray) -> np.ndarray:
    """`kernel` (the layer's float kernel, any shape) with the layer's update folded in: W + (alpha / r) · A·B.

    Computed exactly as `merge_into` writes a merged variant, so an adapter decodes
    with the very weights its merged variant holds.
    """
    low_rank = _ADAPTED.get(layer)
    if low_rank is None:
        return kernel
    a = ops.convert_to_numpy(low_rank.a)
    b = ops.convert_to_numpy(low_rank.b)
    return merged_kernel(np.asarray(kernel), a, b, low_rank.scale)


def save_adapter(model, folder: str | Path) -> Path:
    import h5py

    loaded = LoadedModel.of(model)
    adapter = loaded.adapter
    if adapter is None:
        raise ValueError("LoRA is not enabled on this model")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / ADAPTER_WEIGHTS, "w") as store:
        for index, (a, b) in _factors(loaded).items():
            group = store.create_group(str(index))
            group["a"], group["b"] = a, b
    (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter, indent=2), encoding="utf-8")
    return folder


def load_adapter(model, folder: str | Path) -> dict:
    """Enable LoRA as the adapter was trained (on an int8 base if it was) and load its factors."""
    import h5py

    from backends.adapter_checks import check_factor_shapes, read_adapter

    folder = Path(folder)
    # Its settings against its factors' shapes, and no links h5py would follow, before anything is read.
    saved = read_adapter(folder)
    indices = enable(model, rank=saved["rank"], alpha=saved["alpha"], targets=saved["targets"],
                     dropout=saved["dropout"], base_quantization=saved["base_quantization"])
    if indices != saved["indices"]:
        raise UsageError("this adapter was trained on a model with other layers; load it on its own base variant")
    layers = _weighted_layers(unwrap(model).backbone)
    with h5py.File(folder / ADAPTER_WEIGHTS, "r") as store:
        for index in indices:
            a, b = factor_variables(layers[index])
            saved_a, saved_b = store[str(index)]["a"], store[str(index)]["b"]
            check_factor_shapes(index, saved_a.shape, saved_b.shape, a.shape[0], b.shape[1])
            a.assign(np.asarray(saved_a))
            b.assign(np.asarray(saved_b))
    return saved


def merge_into(adapted, plain_model) -> None:
    """Write W + (alpha / r) · A·B of each adapted layer into the same layer of `plain_model` (a float model).

    Either may be a `backends.loaded_model.LoadedModel` or a bare `GPT2CausalLM`.
    """
    loaded = LoadedModel.of(adapted)
    scale = loaded.adapter["alpha"] / loaded.adapter["rank"]
    plain = _weighted_layers(unwrap(plain_model).backbone)
    for index, (a, b) in _factors(loaded).items():
        kernel = plain[index]._kernel
        kernel.assign(merged_kernel(ops.convert_to_numpy(kernel), a, b, scale))
