"""A checkpoint's configuration checked against its tensors' names and shapes, read without their data.

A checkpoint folder is untrusted input, and its `config.json` decides how
large a model Keras builds: a config that claims 48 layers 4096 wide over
weights for 2 layers 64 wide would make Keras allocate gigabytes before it
finds the first missing tensor. Here the config is compared, tensor by
tensor, with what the weight files declare, before anything is built:

- a Hugging Face folder: the safetensors header of `model.safetensors` (or of
  each shard a `model.safetensors.index.json` names): an 8-byte little-endian
  length, then that many bytes of JSON naming each tensor's dtype, shape and
  byte range;
- a KerasHub preset: the dataset shapes of `model.weights.h5`, read as HDF5
  metadata.

Every size a file declares (a header's length, a JSON file's size, a
tensor's byte range, a dataset's byte count) is bounded by the file's real
size first, so the memory and time of the checks follow the input's size.

Example:
    >>> from backends import checkpoint_shapes
    >>> checkpoint_shapes.check_checkpoint_shapes("hf-gpt2-folder")   # UsageError naming the first mismatch
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

from registry.errors import UsageError, shown

# Safetensors' own reader refuses headers over 100 MB; a GPT-2 header is a few kilobytes.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# A config or weight map is kilobytes; anything near this is not one.
MAX_JSON_FILE = 16 * 1024 * 1024
SAFETENSORS_ITEM_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "F8_E8M0": 1, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
INCONSISTENT_FIX = ("the checkpoint is inconsistent: correct config.json to describe the weights the folder holds, "
                    "or import the checkpoint the config was written for")
# Tensors a Hugging Face GPT-2 checkpoint may hold besides the weights: attention masks kept as
# buffers by older transformers, and the output projection, tied to the token embedding.
_HF_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_HF_BLOCK = re.compile(r"h\.(\d+)\.")
# KerasHub names the backbone's blocks by class when it saves them: the first has no number.
_KERAS_BLOCK = re.compile(r"transformer_decoder(?:_(\d+))?")


def read_json_file(path: Path, limit: int = MAX_JSON_FILE):
    """A JSON file's content, refused with one line when it is far larger than any config."""
    size = path.stat().st_size
    if size > limit:
        raise UsageError(f"{path} is {size:,} bytes, more than any model config or weight map ({limit:,}); "
                         "the checkpoint is damaged: use the checkpoint's own file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise UsageError(f"{path} is not valid JSON ({str(error)[:120]}); the checkpoint is damaged") from None


def check_checkpoint_shapes(folder: str | os.PathLike) -> None:
    """Refuse a checkpoint folder whose config.json disagrees with its weight files' tensors.

    A folder without the config or the weight files its kind needs is left to the caller,
    which names what is missing.
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        return
    config = read_json_file(config_file)
    if not isinstance(config, dict):
        raise UsageError(f"{config_file} is not a JSON object; the checkpoint is damaged")
    if "registered_name" in config:
        if (folder / "model.weights.h5").is_file() and isinstance(config.get("config"), dict):
            check_keras_preset(folder, config["config"])
    elif config.get("model_type") == "gpt2":
        if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
            check_hf_checkpoint(folder, config)


# ---------------------------------------------------------------- safetensors


def read_safetensors_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """Each tensor's dtype, shape and data offset in the file, as the header declares them, after
    checking every declared size against the file's own."""
    path = Path(path)
    size = path.stat().st_size
    fix = "the file is truncated or damaged: download or convert it again"
    if size < 8:
        raise UsageError(f"{path} is {size} bytes, too short for a safetensors header; {fix}")
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > size - 8 or length > MAX_SAFETENSORS_HEADER:
            raise UsageError(f"{path} declares a {length:,}-byte header but the file is {size:,} bytes"
                             f"{' (and headers stop at 100 MB)' if length > MAX_SAFETENSORS_HEADER else ''}; {fix}")
        raw = file.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UsageError(f"{path} has a header that is not JSON; {fix}") from None
    if not isinstance(header, dict):
        raise UsageError(f"{path} has a header that is not a JSON object; {fix}")
    data_size = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, offsets = ((entry.get(key) for key in ("dtype", "shape", "data_offsets"))
                                 if isinstance(entry, dict) else (None, None, None))
        if (dtype not in SAFETENSORS_ITEM_SIZES or not _int_list(shape) or not _int_list(offsets)
                or len(offsets) != 2 or any(dimension < 0 for dimension in shape)):
            raise UsageError(f"{path} describes the tensor {shown(name)} with {shown(json.dumps(entry)[:120])}, not a "
                             f"dtype, shape and byte range; {fix}")
        start, end = offsets
        needed = math.prod(shape) * SAFETENSORS_ITEM_SIZES[dtype]
        if not 0 <= start <= end <= data_size or end - start != needed:
            raise UsageError(f"{path} places the tensor {shown(name)} ({dtype} {list(shape)}, {needed:,} bytes) at bytes "
                             f"{start:,}-{end:,} of its {data_size:,} bytes of data; {fix}")
        tensors[name] = (dtype, tuple(shape), 8 + length + start)
    return tensors


def _int_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)


def hf_checkpoint_tensors(folder: Path) -> tuple[dict[str, tuple[int, ...]], str]:
    """The tensors' shapes of a Hugging Face folder, names without `transformer.`, and the file(s) they come from."""
    index_file = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        files, described = [folder / "model.safetensors"], "model.safetensors"
    else:
        index = read_json_file(index_file)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise UsageError(f"{index_file} has no weight_map; the checkpoint is damaged")
        names = sorted({shard for shard in weight_map.values() if isinstance(shard, str)})
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise UsageError(f"{index_file} names the shard {shown(missing[0])}, which is not in {folder}; "
                             "download every shard of the checkpoint")
        files, described = [folder / name for name in names], f"{index_file.name} ({len(names)} shards)"
    shapes = {}
    for file in files:
        for name, (_, shape, _) in read_safetensors_header(file).items():
            shapes[name.removeprefix("transformer.")] = shape
    return shapes, described


def _positive_settings(config: dict, keys: tuple[str, ...], where: Path) -> dict[str, int]:
    settings = {}
    for key in keys:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UsageError(f"{where} sets {key} to {shown(value)}; it must be a positive whole number: "
                             f"{INCONSISTENT_FIX}")
        settings[key] = value
    return settings


def check_hf_checkpoint(folder: Path, config: dict) -> None:
    """Refuse a Hugging Face GPT-2 folder whose config.json disagrees with the tensors its safetensors declare."""
    where = folder / "config.json"
    settings = _positive_settings(config, ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"), where)
    if config.get("n_inner") is not None:
        settings.update(_positive_settings(config, ("n_inner",), where))
    layers, width, heads = settings["n_layer"], settings["n_embd"], settings["n_head"]
    if width % heads:
        raise UsageError(f"{where} sets n_embd={width}, which n_head={heads} does not divide; {INCONSISTENT_FIX}")
    inner = settings.get("n_inner", 4 * width)
    shapes, described = hf_checkpoint_tensors(folder)
    held_blocks = sorted({int(match.group(1)) for name in shapes if (match := _HF_BLOCK.match(name))})
    if held_blocks != list(range(layers)):
        held = f"{len(held_blocks)} (h.{held_blocks[0]}-h.{held_blocks[-1]})" if held_blocks else "none"
        raise UsageError(f"config.json says {layers} layers but {described} holds tensors for {held}; {INCONSISTENT_FIX}")
    expected = {
        "wte.weight": ((settings["vocab_size"], width), "vocab_size x n_embd"),
        "wpe.weight": ((settings["n_positions"], width), "n_positions x n_embd"),
    }
    for index in range(layers):
        block = f"h.{index}"
        for norm in ("ln_1", "ln_2"):
            expected[f"{block}.{norm}.weight"] = expected[f"{block}.{norm}.bias"] = ((width,), "n_embd")
        expected[f"{block}.attn.c_attn.weight"] = ((width, 3 * width), "n_embd x 3·n_embd")
        expected[f"{block}.attn.c_attn.bias"] = ((3 * width,), "3·n_embd")
        expected[f"{block}.attn.c_proj.weight"] = ((width, width), "n_embd x n_embd")
        expected[f"{block}.attn.c_proj.bias"] = ((width,), "n_embd")
        expected[f"{block}.mlp.c_fc.weight"] = ((width, inner), "n_embd x n_inner")
        expected[f"{block}.mlp.c_fc.bias"] = ((inner,), "n_inner")
        expected[f"{block}.mlp.c_proj.weight"] = ((inner, width), "n_inner x n_embd")
        expected[f"{block}.mlp.c_proj.bias"] = ((width,), "n_embd")
    expected["ln_f.weight"] = expected["ln_f.bias"] = ((width,), "n_embd")
    for name, (shape, meaning) in expected.items():
        if name not in shapes:
            raise UsageError(f"{described} lacks {name}, which config.json's {layers} layers of {width} need; "
                             f"{INCONSISTENT_FIX}")
        if shapes[name] != shape:
            raise UsageError(f"config.json implies {name} of shape {list(shape)} ({meaning}) but {described} holds "
                             f"{list(shapes[name])}; {INCONSISTENT_FIX}")
    extra = sorted(name for name in shapes if name not in expected and not _HF_BUFFERS.fullmatch(name)
                   and not (name == "lm_head.weight" and shapes[name] == expected["wte.weight"][0]))
    if extra:
        raise UsageError(f"{described} holds {len(extra)} tensor(s) config.json does not account for "
                         f"({shown(extra[0])} first); {INCONSISTENT_FIX}")


# ---------------------------------------------------------------- KerasHub presets


def check_keras_preset(folder: Path, config: dict) -> None:
    """Refuse a KerasHub GPT-2 preset whose backbone config disagrees with its model.weights.h5 datasets."""
    import h5py

    where = folder / "config.json"
    settings = _positive_settings(
        config, ("num_layers", "hidden_dim", "num_heads", "intermediate_dim", "max_sequence_length", "vocabulary_size"),
        where)
    layers, width, heads = settings["num_layers"], settings["hidden_dim"], settings["num_heads"]
    if width % heads:
        raise UsageError(f"{where} sets hidden_dim={width}, which num_heads={heads} does not divide; {INCONSISTENT_FIX}")
    inner, head_width = settings["intermediate_dim"], width // heads
    weights = folder / "model.weights.h5"
    # Quantized kernels are stored packed or beside their scales: only float tensors have the config's shapes.
    dtype = config.get("dtype")
    plain_float = not (isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicyMap")
    try:
        store = h5py.File(weights, "r")
    except OSError as error:
        raise UsageError(f"{weights} is not a readable HDF5 file ({str(error)[:120]}); the checkpoint is damaged") from None
    with store:
        check_declared_sizes(store, weights)
        saved = store.get("layers")
        if not isinstance(saved, h5py.Group):
            raise UsageError(f"{weights} holds no layers; the preset is damaged: save it again with KerasHub")
        blocks = sorted((int(match.group(1) or 0), name) for name in saved if (match := _KERAS_BLOCK.fullmatch(name)))
        if [number for number, _ in blocks] != list(range(layers)):
            raise UsageError(f"config.json says {layers} layers but model.weights.h5 holds {len(blocks)} transformer "
                             f"blocks; {INCONSISTENT_FIX}")
        expected = {
            "position_embedding": [((settings["max_sequence_length"], width), "max_sequence_length x hidden_dim")],
            "layer_normalization": [((width,), "hidden_dim")] * 2,
        }
        if plain_float:
            expected["reversible_embedding"] = [((settings["vocabulary_size"], width), "vocabulary_size x hidden_dim")]
        for _, block in blocks:
            for norm in ("_self_attention_layer_norm", "_feedforward_layer_norm"):
                expected[f"{block}/{norm}"] = [((width,), "hidden_dim")] * 2
            if not plain_float:
                continue
            for projection in ("query", "key", "value"):
                expected[f"{block}/_self_attention_layer/{projection}_dense"] = [
                    ((width, heads, head_width), "hidden_dim x num_heads x head width"),
                    ((heads, head_width), "num_heads x head width")]
            expected[f"{block}/_self_attention_layer/output_dense"] = [
                ((heads, head_width, width), "num_heads x head width x hidden_dim"), ((width,), "hidden_dim")]
            expected[f"{block}/_feedforward_intermediate_dense"] = [
                ((width, inner), "hidden_dim x intermediate_dim"), ((inner,), "intermediate_dim")]
            expected[f"{block}/_feedforward_output_dense"] = [
                ((inner, width), "intermediate_dim x hidden_dim"), ((width,), "hidden_dim")]
        for layer, variables in expected.items():
            for index, (shape, meaning) in enumerate(variables):
                dataset = saved.get(f"{layer}/vars/{index}")
                name = f"layers/{layer}/vars/{index}"
                if not isinstance(dataset, h5py.Dataset):
                    raise UsageError(f"model.weights.h5 lacks {name}, which config.json's {layers} layers of {width} "
                                     f"need; {INCONSISTENT_FIX}")
                if dataset.shape != shape:
                    raise UsageError(f"config.json implies {name} of shape {list(shape)} ({meaning}) but "
                                     f"model.weights.h5 holds {list(dataset.shape)}; {INCONSISTENT_FIX}")


def check_declared_sizes(store, path: Path) -> None:
    """Refuse an HDF5 file with a dataset that declares more bytes than the file holds.

    Keras writes its weights uncompressed, so each dataset's data lies in the file whole; a
    dataset declaring more would be filled in memory from nothing when read.
    """
    import h5py

    size = path.stat().st_size
    datasets = []
    h5py.h5o.visit(store.id, lambda name, info: datasets.append(name) if info.type == h5py.h5o.TYPE_DATASET else None,
                   info=True)
    for raw_name in datasets:
        dataset = h5py.h5d.open(store.id, raw_name)
        declared = math.prod(dataset.shape or ()) * dataset.get_type().get_size()
        if declared > size:
            raise UsageError(f"{path}: the dataset {shown('/' + raw_name.decode('utf-8', 'replace'))} declares "
                             f"{declared:,} bytes but the file is {size:,} bytes; the file is damaged: save it again")
