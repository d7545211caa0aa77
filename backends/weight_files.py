"""A variant's weights read straight from its files, without TensorFlow or Keras.

A KerasHub preset keeps its weights in `model.weights.h5`, one group per
layer in the order Keras saved them (`layers/transformer_decoder_1/
_self_attention_layer/query_dense/vars/0` is layer 1's query kernel). This
module reads them with h5py into the `backends.fast_decoding.ModelTensors` a
runtime graph is written from, equal, array for array, to what
`fast_decoding.model_tensors` reads from the loaded model: so a graph can be
written and run with onnxruntime alone, and it has the same digest, hence the
same cached file, as one written through Keras.

Float32 presets and Keras int8 presets (int8 kernels with one scale per
output, as `gpt2reg quantize --mode int8` writes them) are read; a preset of
any other precision (int4, GPTQ, AWQ, float8, bfloat16) is refused with a
line that says to load it through Keras.

A LoRA adapter (`adapter.lora.h5`, see `backends.lora`) is read over its
base's tensors: over a float32 base each factor pair is folded into its
matrix exactly as `gpt2reg merge` writes it (so the adapter decodes with its
merged variant's weights, and shares its graph file); over an int8 base the
update is kept apart, as Keras computes it.

Example:
    >>> decoder = decoder_from_preset("preset-folder", "onnx", cache_dir="runtimes")
    >>> adapted = decoder_from_preset("base-folder", "onnx", adapter_dir="adapter-folder")
    >>> tensors = read_model_tensors("preset-folder")
    >>> tensors.tensors["transformer.h.0.attn.c_attn.weight"].shape
    (64, 192)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from backends.fast_decoding import ModelTensors, RuntimeDecoder
from backends.onnx_graph import FileSpan
from registry.errors import UsageError

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"
# KerasHub names the backbone's blocks by class when it saves them: the first has no number.
_BLOCK = re.compile(r"transformer_decoder(?:_(\d+))?")


def read_model_tensors(preset_dir: str | Path) -> ModelTensors:
    """The weights of a float32 or int8 KerasHub GPT-2 preset, in the Hugging Face layout a runtime graph takes."""
    import h5py

    from backends import model_files

    preset_dir = Path(preset_dir)
    config = json.loads((preset_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    shape = config.get("config", config)
    precision = _precision(preset_dir, shape)
    width, layers = int(shape["hidden_dim"]), int(shape["num_layers"])
    weights = preset_dir / WEIGHTS_FILE
    model_files.check_hdf5_file(weights)  # no external links or virtual datasets
    tensors: dict[str, np.ndarray] = {}
    int8: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    spans: dict[str, list[FileSpan]] = {}  # float32 tensors as they lie in the file (see ModelTensors)
    part_spans: list = []  # the (kernel, bias) spans of the parts `put` is about to join
    with h5py.File(weights, "r") as store:
        saved = store["layers"]
        blocks = sorted((int(match.group(1) or 0), name) for name in saved
                        if (match := _BLOCK.fullmatch(name)))
        if [number for number, _ in blocks] != list(range(layers)):
            raise UsageError(f"{weights} holds {len(blocks)} transformer blocks where its config says {layers}; "
                             "the preset is damaged: run `gpt2reg doctor`")

        def variables(path: str) -> list[np.ndarray]:
            group = saved[path]["vars"]
            found = [np.asarray(group[str(index)]) for index in range(len(group))]
            for index, values in enumerate(found):
                if values.dtype not in (np.float32, np.int8) or (values.dtype == np.int8 and index != 0):
                    raise UsageError(f"{preset_dir} holds {values.dtype} weights ({path}); only float32 and int8 "
                                     "presets are read without Keras: load it with --runtime keras")
            return found

        def span(path: str, index: int, shape: tuple[int, ...]):
            """Where a float32 dataset lies in the file, when it lies there whole and plain."""
            dataset = saved[path]["vars"][str(index)]
            offset = dataset.id.get_offset()
            if (dataset.dtype.str != "<f4" or offset is None or dataset.chunks is not None
                    or dataset.id.get_storage_size() != dataset.size * 4):
                return None
            return FileSpan(offset=offset, length=dataset.size * 4, shape=shape)

        def note_spans(name: str, parts: list) -> None:
            if all(part is not None for part in parts):
                spans[name] = parts

        def dense(path: str, inputs: int) -> tuple[np.ndarray, np.ndarray, tuple | None]:
            """The kernel as [inputs, outputs] float32, its bias, and (int8 values, per-output scale) when int8."""
            kernel, bias, *scale = variables(path)
            if kernel.dtype != np.int8:
                kernel = kernel.reshape(inputs, -1)
                part_spans.append((span(path, 0, kernel.shape), span(path, 1, (kernel.shape[1],))))
                return kernel, bias.reshape(-1), None
            values = kernel.reshape(inputs, -1)
            # Keras stores value = round(weight * scale), one scale per output, in the kernel's output order.
            column_scale = (1.0 / scale[0].astype(np.float32)).reshape(-1)
            return values.astype(np.float32) * column_scale, bias.reshape(-1), (values, column_scale)

        def put(name: str, parts: list) -> None:
            tensors[f"{name}.weight"] = np.concatenate([weight for weight, _, _ in parts], axis=1)
            tensors[f"{name}.bias"] = np.concatenate([bias for _, bias, _ in parts])
            if len(part_spans) == len(parts):
                note_spans(f"{name}.weight", [kernel for kernel, _ in part_spans])
                note_spans(f"{name}.bias", [bias for _, bias in part_spans])
            part_spans.clear()
            if parts[0][2] is not None:
                int8[f"{name}.weight"] = (np.concatenate([q for _, _, (q, _) in parts], axis=1),
                                          np.concatenate([c for _, _, (_, c) in parts]))

        embedding = variables("reversible_embedding")
        if embedding[0].dtype == np.int8:  # [vocabulary, width], one scale per row
            row_scale = 1.0 / embedding[1].astype(np.float32).reshape(-1)
            tensors["transformer.wte.weight"] = embedding[0].astype(np.float32) * row_scale[:, None]
            int8["transformer.lm_head.weight"] = (embedding[0].T, row_scale)
        else:
            tensors["transformer.wte.weight"] = embedding[0]
            note_spans("transformer.wte.weight", [span("reversible_embedding", 0, embedding[0].shape)])
        [tensors["transformer.wpe.weight"]] = variables("position_embedding")
        note_spans("transformer.wpe.weight", [span("position_embedding", 0, tensors["transformer.wpe.weight"].shape)])
        tensors["transformer.ln_f.weight"], tensors["transformer.ln_f.bias"] = variables("layer_normalization")
        for number, part in enumerate(("weight", "bias")):
            note_spans(f"transformer.ln_f.{part}", [span("layer_normalization", number, (width,))])
        for index, (_, block) in enumerate(blocks):
            prefix = f"transformer.h.{index}"
            attention = f"{block}/_self_attention_layer"
            put(f"{prefix}.attn.c_attn", [dense(f"{attention}/{name}_dense", width) for name in ("query", "key", "value")])
            put(f"{prefix}.attn.c_proj", [dense(f"{attention}/output_dense", width)])
            for name, norm in (("ln_1", "_self_attention_layer_norm"), ("ln_2", "_feedforward_layer_norm")):
                tensors[f"{prefix}.{name}.weight"], tensors[f"{prefix}.{name}.bias"] = variables(f"{block}/{norm}")
                for number, part in enumerate(("weight", "bias")):
                    note_spans(f"{prefix}.{name}.{part}", [span(f"{block}/{norm}", number, (width,))])
            put(f"{prefix}.mlp.c_fc", [dense(f"{block}/_feedforward_intermediate_dense", width)])
            hidden = saved[f"{block}/_feedforward_output_dense/vars/0"].shape[0]
            put(f"{prefix}.mlp.c_proj", [dense(f"{block}/_feedforward_output_dense", hidden)])
    if (precision == "int8") != bool(int8):
        raise UsageError(f"{weights} does not hold the {precision} weights its config names; the preset is damaged: "
                         "run `gpt2reg doctor`")
    if precision != "float32":
        spans = {}  # an int8 graph holds its weights in the layout of its int8 kernel
    return ModelTensors(tensors=tensors, int8=int8, low_rank={}, precision=precision, weights_file=weights.resolve(),
                        spans=spans)


# What Keras's int8 mode quantizes in a GPT-2 backbone: every dense matrix, one scale per output.
_INT8_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _abs_max_int8(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Keras's `abs_max_quantize` (to_numpy, as its int8 mode runs it): int8 values and the scale they
    were multiplied by, in the same float32 operations."""
    scale = np.divide(127, np.add(np.max(np.abs(values), axis=axis, keepdims=True), 1e-7))
    return np.clip(np.round(np.multiply(values, scale)), -127, 127).astype(np.int8), scale.astype(np.float32)


def _int8_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The embedding as Keras's int8 mode quantizes it: int8 values, and one weight-per-value scale per row."""
    values, scale = _abs_max_int8(table, axis=-1)
    return values, 1.0 / scale.reshape(-1)


def quantized_int8(weights: ModelTensors) -> ModelTensors:
    """A float32 model's tensors as Keras's int8 mode quantizes them (``lora --quantize-base int8``
    quantizes its base so when loading it): the same int8 values and scales, the same digest."""
    if weights.precision != "float32":
        raise ValueError(f"only float32 weights are quantized to int8, not {weights.precision}")
    tensors, int8 = dict(weights.tensors), {}
    for index in range(sum(name.endswith(".attn.c_attn.weight") for name in tensors)):
        for matrix in _INT8_MATRICES:
            name = f"transformer.h.{index}.{matrix}.weight"
            values, scale = _abs_max_int8(tensors[name], axis=0)
            column_scale = (1.0 / scale).reshape(-1)
            tensors[name] = values.astype(np.float32) * column_scale
            int8[name] = (values, column_scale)
    values, row_scale = _int8_rows(tensors["transformer.wte.weight"])
    tensors["transformer.wte.weight"] = values.astype(np.float32) * row_scale[:, None]
    int8["transformer.lm_head.weight"] = (values.T, row_scale)
    return ModelTensors(tensors=tensors, int8=int8, low_rank=dict(weights.low_rank), precision="int8")  # no spans


def output_embedding(preset_dir: str | Path, *, as_int8: bool = False) -> np.ndarray:
    """The token embedding [vocabulary, width] as float32, which GPT-2 also multiplies its final states by
    for the logits; an int8 preset's dequantized, and with `as_int8` a float32 one's as Keras's int8 mode
    would quantize it (the base of ``lora --quantize-base int8``). Read alone, not with every weight."""
    import h5py

    from backends import model_files

    weights = Path(preset_dir) / WEIGHTS_FILE
    model_files.check_hdf5_file(weights)
    with h5py.File(weights, "r") as store:
        group = store["layers/reversible_embedding/vars"]
        table = np.asarray(group["0"])
        if table.dtype == np.int8:
            return table.astype(np.float32) * (1.0 / np.asarray(group["1"], dtype=np.float32)).reshape(-1, 1)
    if as_int8:
        values, row_scale = _int8_rows(table)
        return values.astype(np.float32) * row_scale[:, None]
    return table.astype(np.float32, copy=False)


def readable_precision(preset_dir: str | Path) -> str | None:
    """``float32`` or ``int8`` when the preset's weights can be read here, else None (it needs Keras)."""
    try:
        config = json.loads((Path(preset_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
        shape = config.get("config", config)
        if not (Path(preset_dir) / WEIGHTS_FILE).is_file() or not {"hidden_dim", "num_layers"} <= set(shape):
            return None  # not a KerasHub preset (a Hugging Face folder, an export)
        return _precision(Path(preset_dir), shape)
    except (OSError, ValueError, AttributeError, TypeError, UsageError):
        return None


def _precision(preset_dir: Path, shape: dict) -> str:
    """``float32`` or ``int8`` from the preset's dtype policy; any other precision is refused."""
    policy = json.dumps(shape.get("dtype"))
    modes = set(re.findall(r'"mode":\s*"([^"]+)"', policy))
    names = set(re.findall(r'"name":\s*"([^"]+)"', policy)) - {"float32"}
    if modes - {"int8"} or names:
        found = ", ".join(sorted((modes - {"int8"}) | names))
        raise UsageError(f"{preset_dir} holds {found} weights; only float32 and int8 presets are read without "
                         "Keras: load it with --runtime keras")
    return "int8" if modes else "float32"


def decoder_from_preset(preset_dir: str | Path, runtime: str = "onnx", cache_dir: str | Path | None = None, *,
                        adapter_dir: str | Path | None = None, files_key: str | None = None) -> RuntimeDecoder:
    """The runtime decoder of a float32 or int8 preset (with the adapter in `adapter_dir` applied, when
    given), built from its files alone: the same graph file `RuntimeDecoder.build` writes for the loaded model.

    `files_key`: a digest the caller vouches for the files by (the registry's content hashes, checked
    against the files). A graph written for the same key is then opened without reading the weights
    at all (for `gpt2`, reading and digesting 500 MB is most of a cold call); the key is noted beside
    the graph when it is written.
    """
    config = json.loads((Path(preset_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    shape = config.get("config", config)
    note = None
    if files_key is not None:
        from backends.fast_decoding import GRAPH_VERSION, runtime_folder

        note = runtime_folder(cache_dir) / f"files-{files_key}-{runtime}-v{GRAPH_VERSION}.json"
        try:
            kept = json.loads(note.read_text(encoding="utf-8"))
            decoder = RuntimeDecoder.from_kept_graph(kept["digest"], kept["precision"], shape, runtime, cache_dir)
            if decoder is not None:
                return decoder
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no note yet, or an unreadable one: the weights are read and the note written again
    weights = read_model_tensors(preset_dir)
    if adapter_dir is not None:
        from backends.adapter_files import apply_adapter, needs_quantized_base

        if needs_quantized_base(adapter_dir) and weights.precision == "float32":
            weights = quantized_int8(weights)  # the adapter trained over its base quantized so
        weights = apply_adapter(weights, adapter_dir, int(shape["num_layers"]))
    decoder = RuntimeDecoder.from_tensors(weights, shape, runtime, cache_dir)
    if note is not None:
        partial = note.with_name(f".{note.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps({"digest": decoder.digest, "precision": decoder.precision}), encoding="utf-8")
        os.replace(partial, note)  # whole or absent
    return decoder
