"""A float32 preset's weights read from its files without Keras, and decoded by onnxruntime alone."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def preset(imported_home):
    from registry import Registry

    return Registry(imported_home).preset_path("fx")


def test_the_weights_read_from_the_files_are_the_loaded_models(preset):
    from backends import keras_gpt2
    from backends.fast_decoding import model_tensors
    from backends.weight_files import read_model_tensors

    from_files = read_model_tensors(preset)
    from_keras = model_tensors(keras_gpt2.load(preset).backbone)
    assert sorted(from_files.tensors) == sorted(from_keras.tensors)
    for name, tensor in from_keras.tensors.items():
        assert from_files.tensors[name].shape == tensor.shape, name
        assert np.array_equal(from_files.tensors[name], tensor), name
    # The same digest: a graph written from the files is the one written through Keras (one cached file).
    assert from_files.digest("onnx") == from_keras.digest("onnx")


def test_a_preset_decodes_transformers_greedy_tokens_in_a_process_without_tensorflow(preset, reference, tmp_path):
    cases = [case for case in reference["cases"] if "greedy_16" in case]
    program = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        from backends.weight_files import decoder_from_preset

        preset, cache, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        decoder = decoder_from_preset(preset, "onnx", cache_dir=cache)
        outputs = []
        for case in cases:
            state = decoder.start([case["token_ids"]], max_new_tokens=len(case["greedy_16"]))
            tokens = []
            for _ in case["greedy_16"]:
                tokens.append(int(np.argmax(state.logits[0])))
                decoder.step(state, [tokens[-1]])
            outputs.append(tokens)
        heavy = [name for name in ("tensorflow", "keras", "keras_hub") if name in sys.modules]
        print(json.dumps({"outputs": outputs, "heavy": heavy}))
        """
    )
    done = subprocess.run([sys.executable, "-c", program, str(preset), str(tmp_path / "runtimes"), json.dumps(cases)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["heavy"] == []
    assert answer["outputs"] == [case["greedy_16"] for case in cases]


def test_weights_other_than_float32_are_refused_in_one_line(preset, tmp_path):
    import h5py

    from backends.weight_files import read_model_tensors
    from registry.errors import UsageError

    copy = tmp_path / "preset"
    shutil.copytree(preset, copy)
    with h5py.File(copy / "model.weights.h5", "r+") as store:
        path = "layers/transformer_decoder/_feedforward_output_dense/vars/0"
        values = np.asarray(store[path])
        del store[path]
        store[path] = values.astype(np.int8)
    with pytest.raises(UsageError, match=r"holds int8 weights .* load it with --runtime keras"):
        read_model_tensors(copy)
