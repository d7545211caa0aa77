"""A LoRA adapter's files, read without Keras: what `backends.lora` saves and the runtime graphs apply.

An adapter is `adapter.lora.h5` (the factors A [inputs, r] and B [r, outputs] of
each adapted layer, by the layer's index) and `adapter.json` (rank, alpha,
targets, the base's quantization, the indices). `apply_adapter` applies one to
a base's `ModelTensors` as the loaded adapter computes: over a float32 base each
pair is folded into its matrix exactly as `gpt2reg merge` writes it (so the
adapter decodes with its merged variant's weights and shares its graph file);
over an int8 base the update is kept apart, x·A·B beside the int8 product.

Example:
    >>> weights = apply_adapter(read_model_tensors("base-folder"), "adapter-folder", num_layers=2)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends.adapter_checks import check_factor_shapes, read_adapter
from backends.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, merged_kernel
from backends.fast_decoding import ModelTensors, fused_low_rank
from registry.errors import UsageError

# An adapter names the layers it adapts by their index among the backbone's layers that hold
# weights (`backends.lora`): the two embeddings, then ten per block in this order, then the final norm.
_BLOCK_LAYERS = ("transformer_layer", "feedforward_layer_norm", "feedforward_output_dense",
                 "feedforward_intermediate_dense", "self_attention_layer_norm", "self_attention",
                 "attention_output", "value", "key", "query")
_LEADING_LAYERS = 2
# The matrix each adaptable layer is part of in the runtime's layout, and its place among the fused parts.
_ADAPTABLE = {
    "query": ("attn.c_attn", 0), "key": ("attn.c_attn", 1), "value": ("attn.c_attn", 2),
    "attention_output": ("attn.c_proj", 0), "feedforward_intermediate_dense": ("mlp.c_fc", 0),
    "feedforward_output_dense": ("mlp.c_proj", 0),
}


def weighted_layer_name(index: int, num_layers: int) -> str:
    """The path of the `index`-th layer with weights of a GPT-2 backbone of `num_layers` blocks, as
    Keras names it (``transformer_layer_1/self_attention/query``)."""
    last = _LEADING_LAYERS + len(_BLOCK_LAYERS) * num_layers  # the final layer norm
    if not 0 <= index <= last:
        raise UsageError(f"a GPT-2 of {num_layers} blocks has no layer {index}; load the adapter on its own base variant")
    if index < _LEADING_LAYERS:
        return ("token_embedding", "position_embedding")[index]
    if index == last:
        return "layer_norm"
    block, offset = divmod(index - _LEADING_LAYERS, len(_BLOCK_LAYERS))
    parent = f"transformer_layer_{block}"
    if offset == 0:
        return parent
    name = _BLOCK_LAYERS[offset]
    inside = "self_attention/" if name in ("attention_output", "value", "key", "query") else ""
    return f"{parent}/{inside}{name}"


def needs_quantized_base(adapter_dir: str | Path) -> bool:
    """Whether the adapter trained over its base quantized to int8 when loaded (``lora --quantize-base
    int8``): it then decodes over the base's int8 tensors, as Keras quantizes them."""
    saved = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return saved.get("base_quantization") is not None


def apply_adapter(weights: ModelTensors, adapter_dir: str | Path, num_layers: int) -> ModelTensors:
    """`weights` (the base's) with the adapter in `adapter_dir` applied, as the loaded adapter computes."""
    import h5py

    adapter_dir = Path(adapter_dir)
    saved = read_adapter(adapter_dir)  # the files' links and the factors' shapes checked
    if needs_quantized_base(adapter_dir) and weights.precision != "int8":
        raise UsageError(f"the adapter in {adapter_dir} trained over its base quantized to int8: apply it to the "
                         "base's int8 tensors (backends.weight_files.quantized_int8)")
    scale = saved["alpha"] / saved["rank"]
    tensors, low_rank = dict(weights.tensors), dict(weights.low_rank)
    factors: dict[str, list] = {}  # matrix name -> factors of each fused part (None: not adapted)
    with h5py.File(adapter_dir / ADAPTER_WEIGHTS, "r") as store:
        for index in saved["indices"]:
            path = weighted_layer_name(index, num_layers)
            block, layer = path.partition("/")[0], path.rpartition("/")[2]
            if layer not in _ADAPTABLE:
                raise UsageError(f"this adapter adapts layer {index}, which a GPT-2 of {num_layers} blocks cannot "
                                 "have adapted; load it on its own base variant")
            matrix, part = _ADAPTABLE[layer]
            name = f"transformer.h.{block.rpartition('_')[2]}.{matrix}.weight"
            a = np.asarray(store[str(index)]["a"], dtype=np.float32)
            b = np.asarray(store[str(index)]["b"], dtype=np.float32)
            parts = 3 if matrix == "attn.c_attn" else 1
            width = tensors[name].shape[1] // parts
            check_factor_shapes(index, a.shape, b.shape, tensors[name].shape[0], width)
            if name in weights.int8:  # kept apart from the int8 matrix, as Keras computes it
                factors.setdefault(name, [None] * parts)[part] = (a, (np.float32(scale) * b).astype(np.float32))
            else:  # folded as `gpt2reg merge` writes it
                kernel = tensors[name].copy() if name not in factors else tensors[name]
                columns = slice(part * width, (part + 1) * width)
                kernel[:, columns] = merged_kernel(kernel[:, columns], a, b, scale)
                tensors[name] = kernel
                factors.setdefault(name, [])
    for name, parts in factors.items():
        if parts:
            width = tensors[name].shape[1] // len(parts)
            low_rank[name] = fused_low_rank(parts, [width] * len(parts))
    # A folded matrix is no longer the one in the base's file: the graph holds it.
    spans = {name: parts for name, parts in weights.spans.items() if name not in factors}
    return ModelTensors(tensors=tensors, int8=weights.int8, low_rank=low_rank, precision=weights.precision,
                        weights_file=weights.weights_file, spans=spans)
