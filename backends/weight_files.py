"""A variant's weights read straight from its files, without TensorFlow or Keras.

A KerasHub preset keeps its weights in `model.weights.h5`, one group per
layer in the order Keras saved them (`layers/transformer_decoder_1/
_self_attention_layer/query_dense/vars/0` is layer 1's query kernel). This
module reads them with h5py into the `backends.fast_decoding.ModelTensors` a
runtime graph is written from, equal, array for array, to what
`fast_decoding.model_tensors` reads from the loaded model: so a graph can be
written and run with onnxruntime alone, and it has the same digest, hence the
same cached file, as one written through Keras.

Float32 presets only for now; a preset with int8 (or any other) weights is
refused with a line that says to load it through Keras.

Example:
    >>> decoder = decoder_from_preset("preset-folder", "onnx", cache_dir="runtimes")
    >>> tensors = read_model_tensors("preset-folder")
    >>> tensors.tensors["transformer.h.0.attn.c_attn.weight"].shape
    (64, 192)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from backends.fast_decoding import ModelTensors, RuntimeDecoder
from registry.errors import UsageError

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"
# KerasHub names the backbone's blocks by class when it saves them: the first has no number.
_BLOCK = re.compile(r"transformer_decoder(?:_(\d+))?")


def read_model_tensors(preset_dir: str | Path) -> ModelTensors:
    """The weights of a float32 KerasHub GPT-2 preset, in the Hugging Face layout a runtime graph takes."""
    import h5py

    from backends import model_files

    preset_dir = Path(preset_dir)
    config = json.loads((preset_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    shape = config.get("config", config)
    width, layers = int(shape["hidden_dim"]), int(shape["num_layers"])
    weights = preset_dir / WEIGHTS_FILE
    model_files.check_hdf5_file(weights)  # no external links or virtual datasets
    with h5py.File(weights, "r") as store:
        saved = store["layers"]
        blocks = sorted((int(match.group(1) or 0), name) for name in saved
                        if (match := _BLOCK.fullmatch(name)))
        if [number for number, _ in blocks] != list(range(layers)):
            raise UsageError(f"{weights} holds {len(blocks)} transformer blocks where its config says {layers}; "
                             "the preset is damaged: run `gpt2reg doctor`")

        def read(path: str) -> np.ndarray:
            dataset = saved[path]
            if dataset.dtype != np.float32:
                raise UsageError(f"{preset_dir} holds {dataset.dtype} weights ({path}); only float32 presets are "
                                 "read without Keras: load it with --runtime keras")
            return np.asarray(dataset, dtype=np.float32)

        def variables(path: str) -> list[np.ndarray]:
            group = saved[path]["vars"]
            return [read(f"{path}/vars/{index}") for index in range(len(group))]

        tensors = {
            "transformer.wte.weight": read("reversible_embedding/vars/0"),
            "transformer.wpe.weight": read("position_embedding/vars/0"),
        }
        tensors["transformer.ln_f.weight"], tensors["transformer.ln_f.bias"] = variables("layer_normalization")
        for index, (_, block) in enumerate(blocks):
            prefix = f"transformer.h.{index}"
            attention = f"{block}/_self_attention_layer"
            projections = [variables(f"{attention}/{name}_dense") for name in ("query", "key", "value")]
            tensors[f"{prefix}.attn.c_attn.weight"] = np.concatenate(
                [kernel.reshape(width, -1) for kernel, _ in projections], axis=1)
            tensors[f"{prefix}.attn.c_attn.bias"] = np.concatenate([bias.reshape(-1) for _, bias in projections])
            kernel, bias = variables(f"{attention}/output_dense")
            tensors[f"{prefix}.attn.c_proj.weight"], tensors[f"{prefix}.attn.c_proj.bias"] = (
                kernel.reshape(width, -1), bias.reshape(-1))
            for name, norm in (("ln_1", "_self_attention_layer_norm"), ("ln_2", "_feedforward_layer_norm")):
                tensors[f"{prefix}.{name}.weight"], tensors[f"{prefix}.{name}.bias"] = variables(f"{block}/{norm}")
            kernel, bias = variables(f"{block}/_feedforward_intermediate_dense")
            tensors[f"{prefix}.mlp.c_fc.weight"], tensors[f"{prefix}.mlp.c_fc.bias"] = kernel.reshape(width, -1), bias
            kernel, bias = variables(f"{block}/_feedforward_output_dense")
            tensors[f"{prefix}.mlp.c_proj.weight"] = kernel.reshape(kernel.shape[0], -1)
            tensors[f"{prefix}.mlp.c_proj.bias"] = bias
    return ModelTensors(tensors=tensors, int8={}, low_rank={}, precision="float32")


def decoder_from_preset(preset_dir: str | Path, runtime: str = "onnx", cache_dir: str | Path | None = None) -> RuntimeDecoder:
    """The runtime decoder of a float32 preset, built from its files alone: the same graph file
    `RuntimeDecoder.build` writes for the loaded model."""
    config = json.loads((Path(preset_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    return RuntimeDecoder.from_tensors(lambda: read_model_tensors(preset_dir), config.get("config", config), runtime,
                                       cache_dir)
