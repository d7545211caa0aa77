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


@pytest.fixture(scope="module")
def int8_preset(preset, tmp_path_factory):
    """The fixture quantized to Keras int8 and saved, as `gpt2reg quantize --mode int8` writes it."""
    from backends import keras_gpt2, quantization

    folder = tmp_path_factory.mktemp("int8") / "preset"
    keras_gpt2.save(quantization.quantize(preset, "int8", None), folder)
    return folder


@pytest.mark.parametrize("which", ["float32", "int8"])
def test_the_weights_read_from_the_files_are_the_loaded_models(which, preset, int8_preset):
    from backends import keras_gpt2
    from backends.fast_decoding import model_tensors
    from backends.weight_files import read_model_tensors

    folder = preset if which == "float32" else int8_preset
    from_files = read_model_tensors(folder)
    from_keras = model_tensors(keras_gpt2.load(folder).backbone)
    assert from_files.precision == from_keras.precision == which
    assert sorted(from_files.tensors) == sorted(from_keras.tensors)
    for name, tensor in from_keras.tensors.items():
        assert from_files.tensors[name].shape == tensor.shape, name
        assert np.array_equal(from_files.tensors[name], tensor), name
    assert sorted(from_files.int8) == sorted(from_keras.int8) and (which == "int8") == bool(from_keras.int8)
    for name, (values, scale) in from_keras.int8.items():
        assert np.array_equal(from_files.int8[name][0], values) and np.array_equal(from_files.int8[name][1], scale)
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


def test_an_int8_preset_decodes_from_its_files_as_generate_decodes_it(int8_preset, reference, tmp_path):
    from backends import generation, keras_gpt2
    from backends.weight_files import decoder_from_preset

    prompt = reference["cases"][0]["token_ids"]
    expected = generation.generate(keras_gpt2.load(int8_preset), [prompt], max_new_tokens=8, runtime="onnx")
    decoder = decoder_from_preset(int8_preset, "onnx", cache_dir=tmp_path / "runtimes")
    assert decoder.precision == "int8"
    state = decoder.start([prompt], max_new_tokens=8)
    tokens = []
    for _ in range(8):
        tokens.append(int(np.argmax(state.logits[0])))
        decoder.step(state, [tokens[-1]])
    assert tokens[:len(expected[0].token_ids)] == expected[0].token_ids


def test_other_precisions_and_damaged_files_are_refused_in_one_line(preset, tmp_path):
    import h5py

    from backends.weight_files import read_model_tensors
    from registry.errors import UsageError

    bfloat16 = tmp_path / "bfloat16"
    shutil.copytree(preset, bfloat16)
    config = json.loads((bfloat16 / "config.json").read_text())
    config["config"]["dtype"] = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "bfloat16"}}
    (bfloat16 / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"holds bfloat16 weights; only float32 and int8 .* --runtime keras"):
        read_model_tensors(bfloat16)

    damaged = tmp_path / "damaged"
    shutil.copytree(preset, damaged)
    with h5py.File(damaged / "model.weights.h5", "r+") as store:
        path = "layers/transformer_decoder/_feedforward_output_dense/vars/0"
        values = np.asarray(store[path])
        del store[path]
        store[path] = values.astype(np.float16)
    with pytest.raises(UsageError, match=r"holds float16 weights .* load it with --runtime keras"):
        read_model_tensors(damaged)


def test_an_adapters_layer_indices_name_the_layers_keras_numbers():
    import keras_hub

    from backends import lora
    from backends.adapter_files import weighted_layer_name
    from backends.configs import CONFIGS

    backbone = keras_hub.models.GPT2Backbone(**{**CONFIGS["tiny"], "num_layers": 3})
    layers = lora._weighted_layers(backbone)
    assert [weighted_layer_name(index, 3) for index in range(len(layers))] == [layer.path for layer in layers]
    with pytest.raises(Exception, match="has no layer 33"):
        weighted_layer_name(len(layers), 3)


def test_a_graph_kept_for_the_same_files_opens_without_reading_the_weights(preset, tmp_path, monkeypatch):
    from backends import weight_files

    first = weight_files.decoder_from_preset(preset, "onnx", tmp_path, files_key="k1")

    def must_not_read(*args, **kwargs):
        raise AssertionError("the weights were read again")

    with monkeypatch.context() as patch:
        patch.setattr(weight_files, "read_model_tensors", must_not_read)
        again = weight_files.decoder_from_preset(preset, "onnx", tmp_path, files_key="k1")
        assert again.digest == first.digest
        with pytest.raises(AssertionError, match="read again"):  # other files: another key
            weight_files.decoder_from_preset(preset, "onnx", tmp_path, files_key="k2")
    # A damaged graph is written again from the weights, under the same name.
    graph = tmp_path / f"decoder-{first.digest}.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    rebuilt = weight_files.decoder_from_preset(preset, "onnx", tmp_path, files_key="k1")
    assert rebuilt.digest == first.digest and graph.stat().st_size > 1000
    with rebuilt.lock:
        state = rebuilt.start([[464, 2068]], max_new_tokens=1)
    assert state.logits.shape[-1] == 50257


def test_a_float32_graph_reads_the_variants_own_weight_file_not_a_copy(preset, tmp_path):
    """The graph holds no weights: it reads them, as ONNX external data, from a hard link to the
    preset's model.weights.h5 (the same file on disk), and computes exactly what a graph holding
    them computes."""
    import os

    from backends.fast_decoding import RuntimeDecoder
    from backends.weight_files import decoder_from_preset, read_model_tensors

    light = decoder_from_preset(preset, "onnx", tmp_path / "linked")
    weights = preset / "model.weights.h5"
    [graph] = (tmp_path / "linked").glob("decoder-*.onnx")
    [link] = (tmp_path / "linked").glob("weights-*.h5")
    assert os.stat(link).st_ino == os.stat(weights).st_ino  # one file, two names
    assert graph.stat().st_size < 100_000 < weights.stat().st_size

    holding = read_model_tensors(preset)
    holding.spans = {}
    shape = {"num_layers": 2, "num_heads": 4, "hidden_dim": 64, "max_sequence_length": 128}
    embedded = RuntimeDecoder.from_tensors(holding, shape, "onnx", tmp_path / "embedded")
    [whole] = (tmp_path / "embedded").glob("decoder-*.onnx")
    assert whole.stat().st_size > weights.stat().st_size * 0.9  # what each variant cost before
    prompts = [[464, 11361, 11808, 318], [40, 1842]]
    first, second = light.start(prompts, 4), embedded.start(prompts, 4)
    assert np.array_equal(first.logits, second.logits) and np.array_equal(first.prompt_hidden, second.prompt_hidden)
    assert np.array_equal(light.step(first, [1, 2])[0], embedded.step(second, [1, 2])[0])


def test_an_int8_graph_holds_its_weights_in_its_kernels_layout(int8_preset, tmp_path):
    from backends.weight_files import decoder_from_preset

    decoder_from_preset(int8_preset, "onnx", tmp_path)
    assert list(tmp_path.glob("weights-*.h5")) == []  # MatMulNBits packs its own [outputs, blocks, block] layout
