"""Weights that are not finite (NaN or infinite), found in a variant's files without loading the model.

A model with one NaN in a kernel computes NaN for every token after it, yet
loads, saves and registers like any other. The registry scans what it is
about to register: every float tensor of the HDF5 files (`model.weights.h5`,
an adapter's `adapter.lora.h5`) and safetensors files (a Hugging Face
export) in the new variant's folder, a bounded slice at a time, so memory
stays at one slice whatever the model's size. Integer tensors (int8 and int4
kernels) are finite by construction; their float scales are scanned.

Example:
    >>> from backends import finite_weights
    >>> found = finite_weights.scan_folder("preset-folder")
    >>> finite_weights.describe(found)
    'transformer_layer_0/self_attention/query/kernel holds 1 NaN value(s)'
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Elements read at a time: 32 MB of float32, whatever the tensor's size.
SLICE_ELEMENTS = 8 * 1024 * 1024
_SAFETENSORS_FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
# How Keras names the variables KerasHub's GPT-2 saves under `layers/` (see `backends.weight_files`).
_KERAS_LAYERS = {
    "reversible_embedding": "token_embedding", "position_embedding": "position_embedding",
    "layer_normalization": "layer_norm", "_self_attention_layer": "self_attention",
    "_self_attention_layer_norm": "self_attention_layer_norm", "_feedforward_layer_norm": "feedforward_layer_norm",
    "_feedforward_intermediate_dense": "feedforward_intermediate_dense",
    "_feedforward_output_dense": "feedforward_output_dense", "query_dense": "query", "key_dense": "key",
    "value_dense": "value", "output_dense": "attention_output",
}
_KERAS_VARIABLES = {
    "embedding": ("embeddings", "embeddings_scale"), "norm": ("gamma", "beta"),
    "dense": ("kernel", "bias", "kernel_scale"),
}
_KERAS_BLOCK = re.compile(r"transformer_decoder(?:_(\d+))?")


@dataclass(frozen=True)
class NonFinite:
    """A tensor holding values that are not finite: its name as Keras (or the file) calls it, and how many."""

    tensor: str
    nan: int
    infinite: int
    file: str

    def __str__(self) -> str:
        counts = [f"{count} {kind} value(s)" for count, kind in ((self.nan, "NaN"), (self.infinite, "infinite")) if count]
        return f"{self.tensor} holds {' and '.join(counts)}"


def scan_folder(folder: str | os.PathLike) -> list[NonFinite]:
    """Every tensor of the folder's HDF5 and safetensors files that holds a NaN or an infinity."""
    found = []
    for file in sorted(Path(folder).rglob("*")):
        if file.is_file() and file.suffix.lower() in (".h5", ".hdf5"):
            found += scan_hdf5(file)
        elif file.is_file() and file.suffix.lower() == ".safetensors":
            found += scan_safetensors(file)
    return found


def describe(found: list[NonFinite]) -> str:
    """The first tensor found, and how many more, for a one-line message."""
    if not found:
        return ""
    more = f" (and {len(found) - 1} more tensor(s))" if len(found) > 1 else ""
    return f"{found[0]}{more}"


def scan_hdf5(path: str | os.PathLike) -> list[NonFinite]:
    import h5py

    from backends import checkpoint_shapes, model_files

    path = Path(path)
    if not h5py.is_hdf5(path):
        return []  # not weights this scan can read; whoever loads the file reports it
    model_files.check_hdf5_file(path)  # no links that would make h5py read another file
    found = []
    with h5py.File(path, "r") as store:
        checkpoint_shapes.check_declared_sizes(store, path)  # no dataset read fills more than the file holds
        names = []
        store.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        for name in names:
            dataset = store[name]
            if dataset.dtype.kind != "f" or dataset.size == 0:
                continue
            counts = _count(_slices(dataset, path))
            if counts is not None:
                keras_name = _keras_name(name)
                found.append(NonFinite(keras_name if keras_name != name else f"{path.name}:/{name}", *counts,
                                       file=path.name))
    return found


def scan_safetensors(path: str | os.PathLike) -> list[NonFinite]:
    from backends.checkpoint_shapes import read_safetensors_header

    path = Path(path)
    found = []
    for name, (dtype, shape, offset) in read_safetensors_header(path).items():
        if dtype not in _SAFETENSORS_FLOATS or math.prod(shape) == 0:
            continue  # bfloat16 and float8 have no numpy type; integers are finite
        values = np.memmap(path, dtype=np.dtype(_SAFETENSORS_FLOATS[dtype]).newbyteorder("<"), mode="r",
                           offset=offset, shape=(math.prod(shape),))
        counts = _count(values[start:start + SLICE_ELEMENTS] for start in range(0, values.size, SLICE_ELEMENTS))
        del values
        if counts is not None:
            found.append(NonFinite(name, *counts, file=path.name))
    return found


def _slices(dataset, path: Path):
    """The dataset a bounded number of elements at a time, as flat arrays."""
    if dataset.ndim == 0:
        yield np.asarray(dataset[()]).reshape(-1)
        return
    offset = dataset.id.get_offset()
    if offset is not None and dataset.chunks is None and dataset.compression is None and dataset.dtype.isnative:
        # Stored whole and plain (as Keras writes weights): mapped, so the page cache is read in place,
        # about three times faster than h5py copying each slice out.
        values = np.memmap(path, dtype=dataset.dtype, mode="r", offset=offset, shape=(dataset.size,))
        for start in range(0, values.size, SLICE_ELEMENTS):
            yield values[start:start + SLICE_ELEMENTS]
        return
    row = math.prod(dataset.shape[1:]) or 1
    rows = max(1, SLICE_ELEMENTS // row)
    for start in range(0, dataset.shape[0], rows):
        yield np.asarray(dataset[start:start + rows]).reshape(-1)


def _count(slices) -> tuple[int, int] | None:
    """(NaN count, infinity count) over the slices, or None when every value is finite."""
    nan = infinite = 0
    for values in slices:
        # One reduction per slice: a NaN or an infinity makes the sum not finite. So can an overflow of
        # finite values, which the count below then finds to be none.
        if np.isfinite(values.sum()):
            continue
        nan += int(np.count_nonzero(np.isnan(values)))
        infinite += int(np.count_nonzero(np.isinf(values)))
    return (nan, infinite) if nan or infinite else None


def _keras_name(name: str) -> str:
    """`layers/transformer_decoder/_self_attention_layer/query_dense/vars/0` as Keras names the variable,
    `transformer_layer_0/self_attention/query/kernel`; any other dataset keeps its path in the file."""
    parts = name.split("/")
    if len(parts) < 4 or parts[0] != "layers" or parts[-2] != "vars" or not parts[-1].isdigit():
        return name
    layers = []
    for part in parts[1:-2]:
        block = _KERAS_BLOCK.fullmatch(part)
        layers.append(f"transformer_layer_{block.group(1) or 0}" if block else _KERAS_LAYERS.get(part, part))
    last = parts[-3]
    kind = "embedding" if last.endswith("embedding") else "norm" if "norm" in last else "dense"
    variables = _KERAS_VARIABLES[kind]
    index = int(parts[-1])
    return "/".join([*layers, variables[index] if index < len(variables) else parts[-1]])
