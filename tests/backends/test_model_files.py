"""Loading a model never runs code from its files, nor reads files outside the model folder.

Each attack is a crafted file that would touch a marker file if its code ran (or
would read a file outside the folder). A control shows the craft is live, so a
test cannot pass because the craft is broken; then both ways in, `gpt2reg
import` and `keras_gpt2.load`, must refuse it with exit 2 / UsageError naming
the problem, with the marker absent and the registry home unchanged.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from registry.errors import UsageError
from tests.conftest import REPO, store_snapshot

PROJECT_PACKAGES = ("backends", "registry", "plugins")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


# ---------------------------------------------------------------- crafts


class TouchOnUnpickle:
    """Unpickling this creates `marker`: what a hostile pickle-based checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def pickle_craft(marker: Path) -> bytes:
    return pickle.dumps(TouchOnUnpickle(marker))


def lambda_layer_config(marker: Path) -> dict:
    """A serialized Keras `Lambda` layer whose marshalled function touches `marker` when called."""
    import keras

    touch = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")
    return json.loads(json.dumps(keras.saving.serialize_keras_object(keras.layers.Lambda(touch))))


def subprocess_config(marker: Path) -> dict:
    """A config naming `subprocess.call`, which a resolver that trusts `module` would import and call."""
    return {"module": "subprocess", "class_name": "call", "config": {"args": ["touch", str(marker)]}, "registered_name": None}


def run_as_module_reference(config: dict) -> None:
    """What a deserializer that trusts `module` does (Keras before 3.9): import it and call the name."""
    import importlib

    getattr(importlib.import_module(config["module"]), config["class_name"])(**config["config"])


@pytest.fixture(scope="module")
def registered_preset(imported_home) -> Path:
    from registry import Registry

    registry = Registry(imported_home)
    try:
        return registry.preset_path(registry.get("fx"))
    finally:
        registry.close()


@pytest.fixture
def preset(registered_preset, tmp_path) -> Path:
    """A writable copy of a registered GPT-2 KerasHub preset, to tamper with."""
    folder = tmp_path / "preset"
    shutil.copytree(registered_preset, folder, ignore=shutil.ignore_patterns("gpt2reg.json", "MLmodel"))
    for file in folder.rglob("*"):
        file.chmod(0o755 if file.is_dir() else 0o644)
    return folder


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-ran"


@pytest.fixture
def outside(tmp_path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def edit_json(file: Path, change) -> None:
    config = json.loads(file.read_text())
    change(config)
    file.write_text(json.dumps(config))


def assert_refused(gpt2reg, home: Path, folder: Path, message: str, marker: Path | None = None) -> None:
    """`gpt2reg import` and `keras_gpt2.load` both refuse `folder`, name the problem and change nothing."""
    from backends import keras_gpt2

    before = store_snapshot(home)
    result = gpt2reg("import", "hostile", folder, "--home", home)
    assert result.exit_code == 2, result
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert store_snapshot(home) == before
    if folder.is_dir():
        with pytest.raises(UsageError, match=re.escape(message)):
            keras_gpt2.load(folder)
    assert marker is None or not marker.exists(), "the crafted code ran"


# ---------------------------------------------------------------- the source tree


def project_sources():
    for package in PROJECT_PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


def test_the_project_never_turns_keras_safe_mode_off():
    unsafe = re.compile(r"safe_mode\s*=\s*False|enable_unsafe_deserialization|SafeModeScope")
    found = [f"{path.relative_to(REPO)}:{n}" for path in project_sources()
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if unsafe.search(line)]
    assert not found


def test_the_project_never_unpickles():
    def call_name(node: ast.Call) -> str:
        return ast.unparse(node.func) if isinstance(node.func, (ast.Attribute, ast.Name)) else ""

    found = []
    for path in project_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = call_name(node)
            pickling = name.endswith(("pickle.load", "pickle.loads", "torch.load", "joblib.load", "dill.load"))
            # np.load refuses pickled arrays unless allow_pickle=True (its default is False).
            numpy_pickle = name in ("np.load", "numpy.load") and any(
                k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                for k in node.keywords
            )
            if pickling or numpy_pickle:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert not found


# ---------------------------------------------------------------- pickle


def test_the_pickle_craft_runs_code_when_unpickled(marker):
    pickle.loads(pickle_craft(marker))
    assert marker.exists()


def test_a_pickle_file_as_import_source_is_refused_unread(gpt2reg, imported_home, tmp_path, marker):
    before = store_snapshot(imported_home)
    for suffix in PICKLE_SUFFIXES:
        source = tmp_path / f"model{suffix}"
        source.write_bytes(pickle_craft(marker))
        result = gpt2reg("import", "hostile", source, "--home", imported_home)
        assert result.exit_code == 2, result
        assert "pickle-based" in result.stderr and "safetensors" in result.stderr
    assert not marker.exists()
    assert store_snapshot(imported_home) == before


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.ckpt", "weights.pkl"])
def test_a_folder_with_only_pickled_weights_is_refused(gpt2reg, imported_home, hf_folder, marker, weights):
    (hf_folder / "model.safetensors").unlink()
    (hf_folder / weights).write_bytes(pickle_craft(marker))
    assert_refused(gpt2reg, imported_home, hf_folder, f"only in pickle-based {weights}", marker)


def test_a_pickle_beside_safetensors_is_never_read_and_is_accepted(hf_folder, marker):
    from backends import model_files

    # Hugging Face repositories often ship both; KerasHub reads only the safetensors.
    (hf_folder / "pytorch_model.bin").write_bytes(pickle_craft(marker))
    model_files.check_model_folder(hf_folder)
    assert not marker.exists()


def test_a_weight_map_naming_a_pickle_or_a_path_is_refused(hf_folder):
    from backends import model_files

    for shard in ("pytorch_model-00001.bin", "../outside.safetensors"):
        (hf_folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": shard}}))
        with pytest.raises(UsageError, match="names the shard"):
            model_files.check_model_folder(hf_folder)


# ---------------------------------------------------------------- Keras configs


def test_the_lambda_craft_runs_code_when_keras_safe_mode_is_off(marker):
    import keras

    layer = keras.saving.deserialize_keras_object(lambda_layer_config(marker), safe_mode=False)
    layer(keras.ops.ones((1,)))
    assert marker.exists()


def test_the_module_craft_runs_code_when_its_module_is_trusted(marker):
    run_as_module_reference(subprocess_config(marker))
    assert marker.exists()


def sequential_with(layer: dict) -> dict:
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": "sequential", "layers": [layer]}}


def functional_with(layer: dict) -> dict:
    layer = {**layer, "name": "lambda", "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {
        "shape": [None, 1], "dtype": "float32", "keras_history": ["input", 0, 0]}}], "kwargs": {}}]}
    inputs = {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None, "name": "input",
              "config": {"batch_shape": [None, 1], "dtype": "float32", "name": "input"}, "inbound_nodes": []}
    return {"module": "keras", "class_name": "Functional", "registered_name": None, "config": {
        "name": "functional", "layers": [inputs, layer], "input_layers": [["input", 0, 0]],
        "output_layers": [["lambda", 0, 0]]}}


def set_tokenizer(config: dict, value) -> None:
    config["config"]["preprocessor"]["config"]["tokenizer"] = value


@pytest.mark.parametrize(
    "file, plant",
    [
        # The whole preset replaced by a Keras model holding the lambda.
        ("config.json", lambda config, craft: config.clear() or config.update(sequential_with(craft))),
        ("config.json", lambda config, craft: config.clear() or config.update(functional_with(craft))),
        # Nested deep inside a genuine GPT-2 preset, where KerasHub deserializes it.
        ("task.json", lambda config, craft: set_tokenizer(config, craft)),
        ("preprocessor.json", lambda config, craft: config["config"].update(tokenizer=sequential_with(craft))),
        ("tokenizer.json", lambda config, craft: config["config"].update(dtype=craft)),
    ],
    ids=["sequential", "functional", "task", "preprocessor", "tokenizer"],
)
def test_a_lambda_layer_in_a_preset_is_refused(gpt2reg, imported_home, preset, marker, file, plant):
    craft = lambda_layer_config(marker)
    edit_json(preset / file, lambda config: plant(config, craft))
    assert_refused(gpt2reg, imported_home, preset, "holds a Python lambda", marker)


@pytest.mark.parametrize(
    "file, craft, message",
    [
        ("tokenizer.json", "subprocess", "names the Python module 'subprocess'"),
        ("task.json", {"module": "builtins", "class_name": "function", "config": "exec", "registered_name": "exec"},
         "names the function 'builtins.exec'"),
        ("preprocessor.json", {"module": "os", "class_name": "system", "config": {}, "registered_name": None},
         "names the Python module 'os'"),
        ("config.json", {"module": "keras_hub.src.models.gemma.gemma_tokenizer", "class_name": "GemmaTokenizer",
                         "config": {}, "registered_name": "keras_hub>GemmaTokenizer"}, "names the class 'keras_hub>GemmaTokenizer'"),
        ("task.json", {"module": None, "class_name": "Evil", "config": {}, "registered_name": "a_plugin>Evil"},
         "names the class 'a_plugin>Evil'"),
        ("tokenizer.json", {"module": "keras.layers", "class_name": "TFSMLayer", "config": {"filepath": "/x"},
                            "registered_name": None}, "names the class 'keras.layers.TFSMLayer'"),
    ],
    ids=["subprocess", "builtin-function", "os", "other-keras-hub-model", "other-registered-class", "keras-layer"],
)
def test_a_config_naming_anything_but_gpt2_classes_is_refused(gpt2reg, imported_home, preset, marker, file, craft, message):
    craft = subprocess_config(marker) if craft == "subprocess" else craft

    def plant(config):
        if file == "config.json" and "registered_name" in craft and craft["registered_name"]:
            config.update(craft)  # the backbone itself replaced
        else:
            config["config"]["dtype"] = craft  # nested where Keras deserializes a dtype policy

    edit_json(preset / file, plant)
    assert_refused(gpt2reg, imported_home, preset, message, marker)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("vocabulary", "{outside}/vocabulary.json", "sets the tokenizer's vocabulary to the file"),
        ("merges", "{outside}/merges.txt", "sets the tokenizer's merges to the file"),
        ("config_file", "../../outside/tokenizer.json", "sets config_file to"),
    ],
)
def test_tokenizer_settings_that_name_files_elsewhere_are_refused(gpt2reg, imported_home, preset, outside, key, value, message):
    edit_json(preset / "tokenizer.json", lambda config: config["config"].update({key: value.format(outside=outside)}))
    assert_refused(gpt2reg, imported_home, preset, message)


def test_the_configs_of_quantized_and_plain_presets_are_accepted(preset, fixture_dir):
    from backends import model_files

    quantized = {"module": "keras.dtype_policies", "class_name": "DTypePolicyMap", "registered_name": None, "config": {
        "default_policy": None, "policy_map": {
            "token_embedding": {"module": "keras.dtype_policies", "class_name": "QuantizedDTypePolicy",
                                "config": {"mode": "int8", "source_name": None}, "registered_name": None},
            "transformer_layer_0/self_attention/query": {"module": "keras.dtype_policies", "class_name": "Int4DTypePolicy",
                                                         "config": {"mode": "int4"}, "registered_name": None}}}}
    edit_json(preset / "config.json", lambda config: config["config"].update(dtype=quantized))
    model_files.check_model_folder(preset)
    model_files.check_model_folder(fixture_dir)


# ---------------------------------------------------------------- HDF5


def first_weight(store: h5py.File) -> str:
    names = []
    store.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return names[0]


def outside_weights(outside: Path, like: np.ndarray) -> Path:
    path = outside / "other.h5"
    with h5py.File(path, "w") as store:
        store["secret"] = np.full(like.shape, 7, like.dtype)
    return path


def redirect_first_weight(weights: Path, outside: Path, how: str) -> str:
    """Replace the first weight of `weights` by a reference to another file; returns its name."""
    with h5py.File(weights, "r+") as store:
        name = first_weight(store)
        value = store[name][()]
        other = outside_weights(outside, value)
        del store[name]
        if how == "external link":
            store[name] = h5py.ExternalLink(str(other), "/secret")
        elif how == "soft link":
            store["elsewhere"] = h5py.ExternalLink(str(other), "/")
            store[name] = h5py.SoftLink("/elsewhere/secret")
        elif how == "virtual dataset":
            layout = h5py.VirtualLayout(shape=value.shape, dtype=value.dtype)
            layout[...] = h5py.VirtualSource(str(other), "secret", shape=value.shape)
            store.create_virtual_dataset(name, layout)
        elif how == "external storage":
            raw = outside / "raw.bin"
            raw.write_bytes(np.full(value.shape, 7, value.dtype).tobytes())
            store.create_dataset(name, shape=value.shape, dtype=value.dtype, external=[(str(raw), 0, raw.stat().st_size)])
    return name


@pytest.mark.parametrize("how", ["external link", "soft link", "virtual dataset", "external storage"])
def test_weights_that_reach_into_another_file_are_refused(gpt2reg, imported_home, preset, outside, how):
    name = redirect_first_weight(preset / "model.weights.h5", outside, how)
    with h5py.File(preset / "model.weights.h5", "r") as store:
        assert (store[name][()] == 7).all()  # the craft is live: h5py reads the other file's numbers
    problem = {"external link": "is an external link to", "soft link": "is an external link to",
               "virtual dataset": "is a virtual dataset", "external storage": "stores its data in the external file"}[how]
    assert_refused(gpt2reg, imported_home, preset, problem)


def test_any_hdf5_file_in_the_folder_is_checked(preset, outside):
    from backends import model_files

    shutil.copy(preset / "model.weights.h5", preset / "task.weights.h5")
    redirect_first_weight(preset / "task.weights.h5", outside, "external link")
    with pytest.raises(UsageError, match="task.weights.h5.*is an external link"):
        model_files.check_model_folder(preset)


def test_even_a_soft_link_inside_the_file_is_refused(preset):
    from backends import model_files

    # Keras writes only plain links and refuses the others itself, but only halfway through loading.
    with h5py.File(preset / "model.weights.h5", "r+") as store:
        store["alias"] = h5py.SoftLink("/" + first_weight(store))
    with pytest.raises(UsageError, match="'/alias' is a soft link to '/layers"):
        model_files.check_model_folder(preset)


# ---------------------------------------------------------------- symlinks


@pytest.mark.parametrize("entry", ["model.weights.h5", "assets/tokenizer/vocabulary.json", "assets", "config.json"])
def test_symlinks_out_of_the_folder_are_refused(gpt2reg, imported_home, preset, outside, entry):
    moved = outside / Path(entry).name
    shutil.move(preset / entry, moved)
    (preset / entry).symlink_to(moved)
    assert (preset / entry).exists()  # the craft is live: the link resolves to the real file elsewhere
    assert_refused(gpt2reg, imported_home, preset, "outside the model folder")


def test_symlinks_inside_the_folder_and_into_a_hugging_face_cache_are_accepted(fixture_dir, tmp_path):
    from backends import model_files

    repository = tmp_path / "models--openai--gpt2"
    snapshot = repository / "snapshots" / "0123abc"
    (repository / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in fixture_dir.iterdir():
        shutil.copy(file, repository / "blobs" / file.name)
        (snapshot / file.name).symlink_to(Path("../../blobs") / file.name)
    (snapshot / "weights-alias.safetensors").symlink_to("model.safetensors")
    model_files.check_model_folder(snapshot)

    (snapshot / "stray").symlink_to(tmp_path)
    with pytest.raises(UsageError, match="stray is a symlink"):
        model_files.check_model_folder(snapshot)


# ---------------------------------------------------------------- what still works


def test_a_genuine_import_passes_the_checks(gpt2reg, imported_home, registered_preset, fixture_dir):
    from backends import model_files

    shown = gpt2reg("show", "fx", "--json", "--home", imported_home)
    assert shown.exit_code == 0 and shown.json()["operation"] == "import"
    model_files.check_model_folder(registered_preset)
    model_files.check_import_source(fixture_dir)


# ---------------------------------------------------------------- what a file declares, against what it holds


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file as the format defines it: 8-byte header length, JSON header, the data."""
    import struct

    header, offset = {}, 0
    for name, values in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(values.shape), "data_offsets": [offset, offset + values.nbytes]}
        offset += values.nbytes
    raw = json.dumps(header).encode()
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(raw)) + raw)
        for values in tensors.values():
            file.write(np.ascontiguousarray(values, dtype="<f4").tobytes())


def fixture_tensors(fixture_dir: Path) -> dict[str, np.ndarray]:
    from backends.checkpoint_shapes import read_safetensors_header

    weights = fixture_dir / "model.safetensors"
    return {name: np.fromfile(weights, dtype="<f4", count=int(np.prod(shape)), offset=offset).reshape(shape)
            for name, (_, shape, offset) in read_safetensors_header(weights).items()}


def test_a_sharded_checkpoint_is_checked_across_its_shards(hf_folder, fixture_dir):
    from backends import model_files

    tensors = fixture_tensors(fixture_dir)
    first = {name: values for name, values in tensors.items() if not name.startswith(("transformer.h.1.", "transformer.ln_f"))}
    second = {name: values for name, values in tensors.items() if name not in first}
    (hf_folder / "model.safetensors").unlink()
    write_safetensors(hf_folder / "model-00001-of-00002.safetensors", first)
    write_safetensors(hf_folder / "model-00002-of-00002.safetensors", second)
    weight_map = {**dict.fromkeys(first, "model-00001-of-00002.safetensors"),
                  **dict.fromkeys(second, "model-00002-of-00002.safetensors")}
    (hf_folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model_files.check_import_source(hf_folder)  # whole: accepted

    write_safetensors(hf_folder / "model-00002-of-00002.safetensors",
                      {name: values for name, values in second.items() if name.startswith("transformer.ln_f")})
    with pytest.raises(UsageError, match=re.escape(
            "config.json says 2 layers but model.safetensors.index.json (2 shards) holds tensors for 1 (h.0-h.0)")):
        model_files.check_import_source(hf_folder)


def test_a_tensor_reaching_past_the_end_of_its_file_is_refused(tmp_path):
    from backends.checkpoint_shapes import read_safetensors_header

    weights = tmp_path / "model.safetensors"
    write_safetensors(weights, {"wte.weight": np.zeros((4, 4), "f4")})
    raw = weights.read_bytes()
    weights.write_bytes(raw.replace(b'"data_offsets": [0, 64]', b'"data_offsets": [0, 99]'))
    with pytest.raises(UsageError, match=r"places the tensor 'wte.weight' \(F32 \[4, 4\], 64 bytes\) at bytes 0-99"):
        read_safetensors_header(weights)


def test_an_hdf5_dataset_declaring_more_than_its_file_holds_is_refused(gpt2reg, imported_home, preset):
    with h5py.File(preset / "model.weights.h5", "r+") as store:
        name = "layers/position_embedding/vars/0"
        del store[name]
        store.create_dataset(name, shape=(2**31, 64), dtype="f4")  # no data written: the file stays small
    assert (preset / "model.weights.h5").stat().st_size < 50_000_000
    assert_refused(gpt2reg, imported_home, preset, f"{2**31 * 64 * 4:,} bytes but the file is")


def write_adapter(folder: Path, rank: int, a_shape: tuple, b_shape: tuple, index: int = 11) -> Path:
    """An adapter of layer `index` (layer 0's query in a GPT-2 of 2 blocks) whose files say `rank`."""
    folder.mkdir(exist_ok=True)
    settings = {"format": "gpt2reg-lora/1", "rank": rank, "alpha": 16, "targets": "query,value", "dropout": 0.0,
                "base_quantization": None, "indices": [index]}
    (folder / "adapter.json").write_text(json.dumps(settings))
    with h5py.File(folder / "adapter.lora.h5", "w") as store:
        store[f"{index}/a"] = np.zeros(a_shape, "f4")
        store[f"{index}/b"] = np.zeros(b_shape, "f4")
    return folder


def test_an_adapter_whose_declared_rank_disagrees_with_its_factors_is_refused(tmp_path, registered_preset):
    from backends.adapter_checks import read_adapter
    from backends.adapter_files import apply_adapter
    from backends.weight_files import read_model_tensors

    assert read_adapter(write_adapter(tmp_path / "fits", 4, (64, 4), (4, 64)))["rank"] == 4
    with pytest.raises(UsageError, match=re.escape(
            "adapter.json declares rank 8 but adapter.lora.h5 holds factors of shapes [64, 4] and [4, 64] for layer 11")):
        read_adapter(write_adapter(tmp_path / "rank", 8, (64, 4), (4, 64)))
    with pytest.raises(UsageError, match=re.escape("factors for layer 11 ([32, 4] and [4, 64]) do not make its 64x64 kernel")):
        apply_adapter(read_model_tensors(registered_preset), write_adapter(tmp_path / "narrow", 4, (32, 4), (4, 64)), 2)


def test_the_scan_names_each_tensor_that_is_not_finite_and_skips_integers(tmp_path):
    from backends import finite_weights

    with h5py.File(tmp_path / "model.weights.h5", "w") as store:
        store["layers/transformer_decoder_1/_feedforward_output_dense/vars/0"] = np.full((8, 4), 127, "i1")
        store["layers/transformer_decoder_1/_feedforward_output_dense/vars/2"] = np.array([1.0, np.nan, np.nan, 1.0], "f4")
        store["layers/position_embedding/vars/0"] = np.ones((4, 4), "f4")
    write_safetensors(tmp_path / "model.safetensors", {"h.0.mlp.c_fc.weight": np.array([[1.0, np.inf]], "f4")})

    found = finite_weights.scan_folder(tmp_path)
    assert [str(item) for item in found] == [
        "h.0.mlp.c_fc.weight holds 1 infinite value(s)",
        "transformer_layer_1/feedforward_output_dense/kernel_scale holds 2 NaN value(s)",
    ]
