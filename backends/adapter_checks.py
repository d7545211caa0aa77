"""A saved LoRA adapter's settings checked against its factors' shapes, from the files' metadata alone.

Shared by `backends.lora` (which loads an adapter into Keras) and `backends.adapter_files`
(which applies one to runtime tensors): an `adapter.json` whose rank or layer list disagrees
with the factors in `adapter.lora.h5` is one line before any factor is read.

Example:
    >>> from backends.adapter_checks import read_adapter
    >>> read_adapter("adapter-folder")["rank"]
    8
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.adapter_format import ADAPTER_CONFIG, ADAPTER_FORMAT, ADAPTER_WEIGHTS
from registry.errors import UsageError


def read_adapter(adapter_dir: str | Path) -> dict:
    """The adapter's settings (`adapter.json`), once they and the factors' shapes in `adapter.lora.h5` agree.

    Read from the files' metadata alone: a rank, or a factor, that disagrees with the other is one
    line here rather than a shape error halfway through loading, and no factor declares more bytes
    than its file holds.
    """
    import h5py

    from backends import checkpoint_shapes, model_files

    adapter_dir = Path(adapter_dir)
    saved = checkpoint_shapes.read_json_file(adapter_dir / ADAPTER_CONFIG)
    fix = "the adapter is damaged: train it again (gpt2reg lora) or restore its files"
    if not isinstance(saved, dict) or saved.get("format") != ADAPTER_FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else None
        raise UsageError(f"{adapter_dir} holds an adapter of another format ({found}); train it again")
    rank, alpha, indices = saved.get("rank"), saved.get("alpha"), saved.get("indices")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise UsageError(f"{adapter_dir / ADAPTER_CONFIG} sets rank to {rank!r}, not a positive whole number; {fix}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not np.isfinite(alpha):
        raise UsageError(f"{adapter_dir / ADAPTER_CONFIG} sets alpha to {alpha!r}, not a finite number; {fix}")
    if (not isinstance(indices, list) or not indices or len(set(map(str, indices))) != len(indices)
            or not all(isinstance(index, int) and not isinstance(index, bool) and index >= 0 for index in indices)):
        raise UsageError(f"{adapter_dir / ADAPTER_CONFIG} lists the adapted layers as {str(indices)[:80]}, "
                         f"not distinct layer numbers; {fix}")
    weights = adapter_dir / ADAPTER_WEIGHTS
    model_files.check_hdf5_file(weights)
    with h5py.File(weights, "r") as store:
        checkpoint_shapes.check_declared_sizes(store, weights)
        for index in indices:
            a, b = store.get(f"{index}/a"), store.get(f"{index}/b")
            if not (isinstance(a, h5py.Dataset) and isinstance(b, h5py.Dataset)):
                raise UsageError(f"{weights} lacks the factors of layer {index}, which {ADAPTER_CONFIG} lists; {fix}")
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != rank or b.shape[0] != rank:
                raise UsageError(f"{ADAPTER_CONFIG} declares rank {rank} but {weights.name} holds factors of shapes "
                                 f"{list(a.shape)} and {list(b.shape)} for layer {index}; {fix}")
    return saved


def check_factor_shapes(index: int, a_shape: tuple, b_shape: tuple, inputs: int, outputs: int) -> None:
    """Refuse factors whose product is not the shape of the kernel they adapt: [inputs, r] · [r, outputs]."""
    if a_shape[0] != inputs or b_shape[1] != outputs:
        raise UsageError(f"the adapter's factors for layer {index} ({list(a_shape)} and {list(b_shape)}) do not make "
                         f"its {inputs}x{outputs} kernel; load the adapter on its own base variant")
