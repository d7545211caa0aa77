"""Checks that loading a model folder reads numbers and settings, never code.

A checkpoint is untrusted input: a folder someone downloaded, or a variant
whose artifacts someone could have edited. Three kinds of file content would
make a loader run code, or read files that are not the model's, and each is
refused here, before KerasHub, Keras or h5py reads the files:

- pickle-based weights (`pytorch_model.bin`, `*.pt`, `*.ckpt`, ...):
  unpickling calls whatever the file names;
- Keras configs (`config.json`, `task.json`, `tokenizer.json`, ...) that name
  something Keras would import and call. Keras's safe mode already refuses
  lambdas and modules outside keras, but it builds any class registered with
  Keras (every KerasHub model, any plugin's class) and follows file paths in
  tokenizer settings; a GPT-2 preset holds exactly the GPT-2 classes and dtype
  policies, so anything else is refused;
- references that leave the folder: symlinks, HDF5 links other than plain
  ones (an external link, or a soft link that can lead through one), virtual
  datasets and external storage, and weight maps or asset names that point
  elsewhere. Keras 3.15 refuses HDF5 links too, but only when it reaches them,
  halfway through building the model; here the user gets one line up front,
  and every HDF5 file in the folder is covered, not only the ones Keras reads.

Only `json` and `h5py` are used, so the checks cost milliseconds on every load.

Example:
    >>> from backends import model_files
    >>> model_files.check_model_folder("my-preset")     # raises UsageError on anything above
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from backends import checkpoint_shapes
from registry.errors import UsageError, shown

# Formats that load by unpickling: reading one runs the code it names.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
# Weight files KerasHub reads in place of any pickle lying beside them.
SAFE_WEIGHT_FILES = ("model.weights.h5", "model.weights.json", "model.safetensors", "model.safetensors.index.json")

# The JSON files KerasHub deserializes with Keras when a folder is a Keras preset
# (its `config.json` has `registered_name`, the test KerasHub itself applies).
KERAS_CONFIG_FILES = (
    "config.json", "task.json", "preprocessor.json", "tokenizer.json",
    "audio_converter.json", "image_converter.json", "video_converter.json",
)
HDF5_SUFFIXES = (".h5", ".hdf5")
# Weight maps: which files hold the shards, and what each shard must be.
WEIGHT_MAPS = {"model.weights.json": ".h5", "model.safetensors.index.json": ".safetensors"}

GPT2_CLASSES = ("GPT2Backbone", "GPT2CausalLM", "GPT2CausalLMPreprocessor", "GPT2Preprocessor", "GPT2Tokenizer")
GPT2_MODULE_PREFIX = "keras_hub.src.models.gpt2."
GPT2_PUBLIC_MODULES = ("keras_hub.models", "keras_hub.tokenizers")
DTYPE_POLICY_CLASS = re.compile(r"\w*DTypePolicy(Map)?")
DTYPE_POLICY_MODULES = ("keras", "keras.dtype_policies")
DTYPE_POLICY_SRC_PREFIX = "keras.src.dtype_policies"
# Tokenizer settings that KerasHub opens as files when they are strings.
FILE_PATH_SETTINGS = ("vocabulary", "merges")

TRUSTED_SOURCE_FIX = "re-save the model with KerasHub's save_to_preset from a source you trust"


def check_import_source(path: str | os.PathLike) -> None:
    """Refuse a local import source whose loading could run code: a pickle file, or a folder as in `check_model_folder`."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise UsageError(
                f"{path} is a pickle-based file ({path.suffix}), which can run code when loaded and is refused; "
                "convert the weights to safetensors and import the Hugging Face folder"
            )
        return
    check_model_folder(path)


def check_model_folder(folder: str | os.PathLike) -> None:
    """Refuse a model folder whose files could run code or reach outside it when loaded.

    A folder without a readable `config.json` is left to the caller, which
    reports that it is not a checkpoint.
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        return
    root = folder.resolve()
    _check_links_stay_inside(root)
    _check_no_pickle_weights(root)
    config = None  # a damaged config is reported by the caller
    if config_file.stat().st_size <= checkpoint_shapes.MAX_JSON_FILE:
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    if isinstance(config, dict) and "registered_name" in config:
        for name in KERAS_CONFIG_FILES:
            if (root / name).is_file():
                _check_keras_config(root / name)
    for name, shard_suffix in WEIGHT_MAPS.items():
        if (root / name).is_file():
            _check_weight_map(root / name, shard_suffix)
    for file in _files(root):
        if file.suffix.lower() in HDF5_SUFFIXES:
            check_hdf5_file(file)
    # Only now that nothing in it can reach outside the folder: its config against its tensors' shapes.
    checkpoint_shapes.check_checkpoint_shapes(root)


# ---------------------------------------------------------------- files and links


def _files(root: Path):
    for directory, _, names in os.walk(root):
        for name in names:
            yield Path(directory, name)


def _link_boundaries(root: Path) -> tuple[Path, ...]:
    # A Hugging Face cache snapshot (`models--org--name/snapshots/REV/`) is made of
    # symlinks into that repository's own `blobs/` folder; those stay inside the model.
    blobs = root.parent.parent / "blobs"
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--") and blobs.is_dir():
        return root, blobs.resolve()
    return (root,)


def _check_links_stay_inside(root: Path) -> None:
    boundaries = _link_boundaries(root)
    for directory, subdirectories, names in os.walk(root):
        for name in subdirectories + names:
            entry = Path(directory, name)
            if not entry.is_symlink():
                continue
            target = Path(os.path.realpath(entry))
            if not any(target == boundary or boundary in target.parents for boundary in boundaries):
                raise UsageError(
                    f"{entry} is a symlink to {target}, outside the model folder, and is refused; "
                    "copy the real files into the folder (cp -rL) and import the copy"
                )


def _check_no_pickle_weights(root: Path) -> None:
    pickled = sorted(p.name for p in root.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickled and not any((root / name).is_file() for name in SAFE_WEIGHT_FILES):
        raise UsageError(
            f"{root} holds its weights only in pickle-based {', '.join(pickled)}, which can run code when loaded "
            "and is refused; convert them to model.safetensors (safetensors' convert script or "
            "save_pretrained(safe_serialization=True) where you trust the file)"
        )


def _check_weight_map(index_file: Path, shard_suffix: str) -> None:
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8")).get("weight_map", {})
    except (OSError, ValueError, AttributeError):
        raise UsageError(f"{index_file} is not a valid weight map (JSON with a weight_map); the checkpoint is damaged") from None
    shards = weight_map.values() if isinstance(weight_map, dict) else []
    for shard in shards:
        for name in shard if isinstance(shard, list) else [shard]:
            if not _is_plain_file_name(name) or not str(name).endswith(shard_suffix):
                raise UsageError(
                    f"{index_file} names the shard {shown(name)}; shards must be {shard_suffix} files beside it "
                    f"(no paths, no pickle formats): {TRUSTED_SOURCE_FIX}"
                )


def _is_plain_file_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and not name.startswith(".") and "/" not in name and "\\" not in name


# ---------------------------------------------------------------- Keras configs


def _check_keras_config(config_file: Path) -> None:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"{config_file} is not valid JSON ({error}); the checkpoint is damaged") from None
    _check_config_node(config, config_file)


def _check_config_node(config, config_file: Path) -> None:
    objects = []
    # Iterative: a crafted config nested deeper than Python's recursion limit is still walked.
    pending = [config]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if _names_something(node):
                objects.append(node)
            for key, value in node.items():
                if key == "config_file":
                    _check_asset_name(value, config_file)
                elif key in FILE_PATH_SETTINGS and isinstance(value, str):
                    raise UsageError(
                        f"{config_file} sets the tokenizer's {key} to the file {shown(value)}, which Keras would read from "
                        f"outside the preset's assets; {TRUSTED_SOURCE_FIX}"
                    )
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    # Code first, then foreign modules, then unexpected classes: the message names the worst.
    for check in (_check_not_code, _check_module, _check_expected_class):
        for node in objects:
            check(node, config_file)


def _names_something(node: dict) -> bool:
    # Keras resolves `class_name`, `module` and `registered_name` to a class or function.
    # A policy map's layer names are keys too, but their values are dicts, never names.
    return "class_name" in node or isinstance(node.get("module"), str) or isinstance(node.get("registered_name"), str)


def _check_not_code(node: dict, config_file: Path) -> None:
    class_name, module = node.get("class_name"), node.get("module")
    if class_name in ("__lambda__", "Lambda"):
        raise UsageError(
            f"{config_file} holds a Python lambda ({shown(class_name)}) whose code Keras would run, and is refused; "
            f"{TRUSTED_SOURCE_FIX}"
        )
    if class_name == "function":
        function = f"{module}.{node.get('config')}"
        raise UsageError(
            f"{config_file} names the function {shown(function)} for Keras to call; a GPT-2 preset "
            f"holds no functions, so it is refused; {TRUSTED_SOURCE_FIX}"
        )


def _check_module(node: dict, config_file: Path) -> None:
    module = node.get("module")
    if module is not None and not (isinstance(module, str) and (module == "keras" or module.startswith(("keras.", "keras_hub.")))):
        raise UsageError(
            f"{config_file} names the Python module {shown(module)} ({shown(node.get('class_name'))}); a GPT-2 preset refers only "
            f"to keras and keras_hub, so loading it could run foreign code and is refused; {TRUSTED_SOURCE_FIX}"
        )


def _check_expected_class(node: dict, config_file: Path) -> None:
    class_name, module, registered_name = node.get("class_name"), node.get("module"), node.get("registered_name")
    if not (_is_gpt2_class(class_name, module, registered_name) or _is_dtype_policy(class_name, module, registered_name)):
        named = registered_name if isinstance(registered_name, str) else f"{module}.{class_name}"
        raise UsageError(
            f"{config_file} names the class {shown(named)}; a GPT-2 preset holds only {', '.join(GPT2_CLASSES)} and "
            f"Keras dtype policies, so it is refused before Keras builds it; {TRUSTED_SOURCE_FIX}"
        )


def _is_gpt2_class(class_name, module, registered_name) -> bool:
    return (
        class_name in GPT2_CLASSES
        and (module is None or module in GPT2_PUBLIC_MODULES or str(module).startswith(GPT2_MODULE_PREFIX))
        and registered_name in (None, f"keras_hub>{class_name}")
    )


def _is_dtype_policy(class_name, module, registered_name) -> bool:
    return (
        isinstance(class_name, str)
        and DTYPE_POLICY_CLASS.fullmatch(class_name) is not None
        and (module in DTYPE_POLICY_MODULES or str(module).startswith(DTYPE_POLICY_SRC_PREFIX))
        and registered_name is None
    )


def _check_asset_name(value, config_file: Path) -> None:
    # KerasHub reads a tokenizer's files from assets/<config_file without .json>/.
    if not (_is_plain_file_name(value) and value.endswith(".json")):
        raise UsageError(
            f"{config_file} sets config_file to {shown(value)}, which would make KerasHub read files outside the "
            f"preset's assets; it must be a plain .json file name: {TRUSTED_SOURCE_FIX}"
        )


# ---------------------------------------------------------------- HDF5


def check_hdf5_file(path: str | os.PathLike) -> None:
    """Refuse an HDF5 file whose links or datasets would make h5py read another file."""
    import h5py

    path = Path(path)
    try:
        store = h5py.File(path, "r")
    except OSError as error:
        raise UsageError(f"{path} is not a readable HDF5 file ({str(error)[:120]}); the checkpoint is damaged") from None
    with store:
        # HDF5's own visitors walk hard links only and never resolve a soft or external
        # link, so listing everything costs two C calls, not one Python call per object.
        links = []
        store.id.links.visit(lambda name, info: links.append((name, info.type)), info=True)
        for raw_name, link_type in links:
            if link_type != h5py.h5l.TYPE_HARD:
                # Keras writes only plain (hard) links; a soft link can lead through an
                # external one, and Keras itself would refuse either halfway through loading.
                _refuse_hdf5(path, f"{_shown_name(raw_name)} is {_describe_link(store, raw_name, link_type)}")
        datasets = []
        h5py.h5o.visit(store.id, lambda name, info: datasets.append(name) if info.type == h5py.h5o.TYPE_DATASET else None, info=True)
        for raw_name in datasets:
            layout = h5py.h5d.open(store.id, raw_name).get_create_plist()
            where = _shown_name(raw_name)
            if layout.get_layout() == h5py.h5d.VIRTUAL:
                _refuse_hdf5(path, f"{where} is a virtual dataset mapped from other files")
            if layout.get_external_count():
                _refuse_hdf5(path, f"{where} stores its data in the external file {shown(layout.get_external(0)[0].decode('utf-8', 'replace'))}")


def _describe_link(store, raw_name: bytes, link_type: int) -> str:
    """The link read as a value: following it could open another file."""
    import h5py

    parent_name, _, name = raw_name.rpartition(b"/")
    parent = store[parent_name] if parent_name else store  # reached through hard links only
    links = parent.id.links  # holds no reference to `parent`, which must stay open while it is read
    if link_type == h5py.h5l.TYPE_SOFT:
        return f"a soft link to {shown(links.get_val(name).decode('utf-8', 'replace'))}"
    if link_type == h5py.h5l.TYPE_EXTERNAL:
        filename, target = (part.decode("utf-8", "replace") for part in links.get_val(name))
        return f"an external link to {shown(f'{filename}:{target}')}"
    return "a user-defined link"


def _shown_name(raw_name: bytes) -> str:
    return shown("/" + raw_name.decode("utf-8", "replace"))


def _refuse_hdf5(path: Path, problem: str):
    raise UsageError(f"{path}: {problem}, which could make h5py read another file, and is refused; {TRUSTED_SOURCE_FIX}")


def looks_like_path(source: str) -> bool:
    """Whether an import SOURCE is written as a local path (not a KerasHub preset name or hf://org/repo)."""
    return source.startswith((".", "/", "~")) or os.sep in source and not source.startswith("hf://")
