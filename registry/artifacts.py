"""Files of a variant: content hash, size, and durable writes.

A variant's content hash is a sha256 over its weight files (relative names
and bytes), so the same weights give the same hash wherever they are stored.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import uuid
from pathlib import Path

# Weight files of every kind of variant: KerasHub presets and adapters (.h5), Hugging
# Face folders (.safetensors), exports (.tflite, .onnx, a SavedModel's graph and
# variables). Tokenizer files are not weights and do not enter the hash.
WEIGHT_SUFFIXES = (".h5", ".safetensors", ".tflite", ".onnx", ".pb", ".index")
SAVEDMODEL_DATA_PREFIX = "variables.data-"
MANIFEST = "gpt2reg.json"
MODEL_ARTIFACT = "model"  # the MLflow pyfunc model inside a variant's run
# Where the KerasHub preset sits inside a run's artifacts (the pyfunc model's own artifact).
PRESET_ARTIFACT = "preset"  # the pyfunc model's artifact name for the KerasHub preset
PRESET_PATH = f"{MODEL_ARTIFACT}/artifacts/{PRESET_ARTIFACT}"
ADAPTER_PATH = "adapter"  # an adapter variant's files (no pyfunc model: serve its merged variant)
EXPORT_PATH = "export"  # an exported variant's files, exactly as `gpt2reg export --out` wrote them


def weights_path(kind: str) -> str:
    """Where a variant's loadable files sit inside its run's artifacts."""
    return {"adapter": ADAPTER_PATH, "export": EXPORT_PATH}.get(kind, PRESET_PATH)


def weight_files(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder)
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and (p.name.endswith(WEIGHT_SUFFIXES) or p.name.startswith(SAVEDMODEL_DATA_PREFIX))
    )


def content_hash(folder: str | os.PathLike) -> str:
    root = Path(folder)
    digest = hashlib.sha256()
    for file in weight_files(root):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def folder_size(folder: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and directory under `folder` to disk before it is published."""
    root = Path(folder)
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [root]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


DELIVERY_NOTE = "delivery-partial"  # in a run's staging folder: where its copy for --out is being made


def stage_delivery(source: str | os.PathLike, destination: str | os.PathLike, *,
                   staging: str | os.PathLike | None = None) -> Path:
    """Copy `source` beside `destination` under a hidden partial name, flushed to disk.

    `publish_delivery` then gives it the final name in one rename, so the
    destination is either absent or complete, never half-copied. The destination
    is checked again here, before anything is recorded: the work before may have
    taken minutes, and a link or files put there since must stop the delivery
    while the store can still be left as it was.
    """
    from registry.errors import UsageError

    destination = Path(destination)
    problem = delivery_problem(destination)
    if problem:
        raise UsageError(problem)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot make the folder {destination.parent}: {error.strerror or error}; "
                         "choose a folder you can write to") from None
    partial = destination.parent / f".{_short(destination.name)}.partial-{uuid.uuid4().hex[:8]}"
    if staging is not None:
        # Noted before the copy starts: a process killed from here on leaves the copy outside the
        # home, and `gpt2reg doctor --repair` finds it through the staging folder it leaves too.
        (Path(staging) / DELIVERY_NOTE).write_text(str(partial.resolve()), encoding="utf-8")
    try:
        shutil.copytree(source, partial)
        fsync_tree(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return partial


def publish_delivery(partial: Path, destination: str | os.PathLike) -> Path:
    from registry.errors import UsageError

    destination = Path(destination)
    problem = delivery_problem(destination)
    if problem:
        raise UsageError(problem)
    if destination.is_dir():
        destination.rmdir()  # an empty folder the user made for the export
    os.replace(partial, destination)
    return destination


def delivery_problem(destination: Path) -> str | None:
    """Why files cannot be delivered to exactly `destination`, or None: it must be absent or an empty
    real folder (a symbolic link would send them wherever it points)."""
    try:
        mode = os.lstat(destination).st_mode
    except (FileNotFoundError, NotADirectoryError):  # absent (under a file: making its folder will say so)
        return None
    except OSError as error:
        return f"cannot reach {destination}: {error.strerror or error}; choose another folder"
    if stat.S_ISLNK(mode):
        return f"{destination} is a symbolic link; give the real folder it should write to, not a link"
    try:
        occupied = not stat.S_ISDIR(mode) or any(destination.iterdir())
    except OSError as error:
        return f"cannot list {destination}: {error.strerror or error}; choose a folder you can read"
    if occupied:
        return f"{destination} already exists and is not an empty folder; choose a new folder"
    return None


def _short(name: str, limit: int = 200) -> str:
    # The partial name adds 18 characters to the destination's; it must still fit the file system's
    # 255-byte limit on one name.
    encoded = os.fsencode(name)
    return name if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore")
