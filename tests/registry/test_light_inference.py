"""Light inference: float32 and int8 variants, and adapters over them, generate without TensorFlow.

Each CLI case runs `gpt2reg` in a fresh interpreter, as a user's shell does, and
reads which of TensorFlow, Keras and KerasHub it imported. The tokens are checked
against the path that loads the KerasHub model (the same onnxruntime graph, written
from the loaded model's weights, and Keras's own arithmetic where it must agree).
"""

from __future__ import annotations

import json

import pytest

from registry import Registry
from tests.registry.conftest import HEAVY

PROMPT = "The registry"
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def family(tmp_path_factory, fixture_dir, text_file):
    """base (float32), base-int8, an adapter over base and one over base quantized to int8 as it loads
    (QLoRA-style), each trained until it moves the greedy tokens, and an int4."""
    reg = Registry(tmp_path_factory.mktemp("light-home"))
    base = reg.import_("base", str(fixture_dir))
    int8 = reg.run("quantize", base, name="base-int8", mode="int8")
    training = dict(data=[str(text_file)], rank=4, steps=8, batch_size=4, seq_len=32, lr=0.05)
    return {
        "reg": reg, "base": base, "int8": int8,
        "adapter": reg.run("lora", base, name="ad", **training),
        "int8-adapter": reg.run("lora", base, name="ad-int8", quantize_base="int8", **training),
        "int4": reg.run("quantize", base, name="base-int4", mode="int4"),
    }


def keras_loaded_tokens(reg, variant, runtime: str) -> list[int]:
    """The greedy tokens through the loaded KerasHub model: its own arithmetic, or the runtime graph
    written from its weights."""
    from backends import generation
    from backends.tokenizer import encode

    lm = reg.load(variant)
    return generation.generate(lm, [encode(PROMPT)], max_new_tokens=NEW_TOKENS, runtime=runtime)[0].token_ids


@pytest.mark.parametrize("which", ["base", "int8", "adapter", "int8-adapter"])
def test_generate_decodes_without_tensorflow_what_the_loaded_model_decodes(run_cli, family, which):
    reg, variant = family["reg"], family[which]
    result = run_cli("generate", variant.ref, PROMPT, "--max-new-tokens", NEW_TOKENS, "--json", "--home", reg.home.path)
    assert result.code == 0, result
    assert result.imported == [], result
    output = json.loads(result.stdout)
    assert output["runtime"] == "onnx"
    tokens = output["outputs"][0]["token_ids"]
    assert len(tokens) == NEW_TOKENS
    assert tokens == keras_loaded_tokens(reg, variant, "onnx")
    if which in ("base", "adapter"):  # float32: Keras's own arithmetic picks the same greedy tokens
        assert tokens == keras_loaded_tokens(reg, variant, "keras")


def test_the_adapters_decode_as_adapters_not_as_their_bases(run_cli, family):
    reg = family["reg"]

    def tokens(variant):
        result = run_cli("generate", variant.ref, PROMPT, "--max-new-tokens", NEW_TOKENS, "--json",
                         "--home", reg.home.path)
        assert result.code == 0 and result.imported == [], result
        return json.loads(result.stdout)["outputs"][0]["token_ids"]

    assert tokens(family["adapter"]) != tokens(family["base"])
    assert tokens(family["int8-adapter"]) != tokens(family["int8"])  # its base, quantized as Keras quantizes


def test_a_sampled_stream_of_several_prompts_runs_without_tensorflow(run_cli, gpt2reg, family):
    reg, adapter = family["reg"], family["adapter"]
    settings = ["--max-new-tokens", NEW_TOKENS, "--sampler", "top_p", "--top-p", "0.8", "--seed", "5",
                "--ignore-end-of-text",
                "--repetition-penalty", "1.3", "--home", reg.home.path]
    streamed = run_cli("generate", adapter.ref, PROMPT, "A model", "--stream", *settings)
    assert streamed.code == 0 and streamed.imported == [], streamed
    whole = gpt2reg("generate", adapter.ref, PROMPT, "A model", "--json", *settings)
    assert whole.exit_code == 0, whole
    outputs = whole.json()["outputs"]
    assert all(item["text"] and item["text"] in streamed.stdout for item in outputs), (streamed, outputs)


def test_other_precisions_keep_the_keras_path(gpt2reg, family):
    reg, int4 = family["reg"], family["int4"]
    auto = gpt2reg("generate", int4.ref, PROMPT, "--max-new-tokens", 2, "--json", "--home", reg.home.path)
    assert auto.exit_code == 0, auto
    assert auto.json()["runtime"] == "keras"
    refused = gpt2reg("generate", int4.ref, PROMPT, "--runtime", "onnx", "--home", reg.home.path)
    assert refused.exit_code == 2, refused
    assert refused.stderr.count("\n") == 1 and "use --runtime keras" in refused.stderr, refused


def test_a_variant_stays_loaded_until_released(family, monkeypatch):
    from registry.inference import KEPT

    reg, base, adapter = family["reg"], family["base"], family["adapter"]
    reg.release()
    first = reg.light_decoder(base)
    reg.run("generate", base, prompts=[PROMPT], max_new_tokens=2)
    assert reg.light_decoder(base) is first  # the run used the kept decoder, and kept it
    assert reg.light_decoder(adapter) is not first
    assert reg.release(base) == 2  # the base and the adapter over it
    assert len(KEPT) == 0
    assert reg.light_decoder(base) is not first

    monkeypatch.setenv("GPT2REG_KEEP_LOADED_MB", "0")
    reg.release()
    reg.light_decoder(base)
    assert len(KEPT) == 0


def test_files_damaged_after_loading_are_refused_not_served_from_memory(gpt2reg, tmp_path, fixture_dir):
    reg = Registry(tmp_path / "home")
    variant = reg.import_("fx", str(fixture_dir))
    assert gpt2reg("generate", "fx", PROMPT, "--max-new-tokens", 2, "--home", reg.home.path).exit_code == 0
    weights = reg.preset_path(variant) / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # the end of the last dataset
    weights.write_bytes(bytes(data))
    damaged = gpt2reg("generate", "fx", PROMPT, "--max-new-tokens", 2, "--home", reg.home.path)
    assert damaged.exit_code != 0, damaged
    assert "do not match their recorded hash" in damaged.stderr, damaged


@pytest.mark.parametrize("which", ["adapter", "int8-adapter"])
def test_an_adapter_read_from_its_files_holds_the_loaded_adapters_weights(family, which):
    """Over a float32 base the factors are folded in (so the adapter shares its merged variant's
    graph); over an int8 base they stay apart: either way the digest of the loaded adapter's."""
    import numpy as np

    from backends.adapter_files import apply_adapter
    from backends.fast_decoding import model_tensors
    from backends.weight_files import quantized_int8, read_model_tensors

    reg, adapter = family["reg"], family[which]
    base_files = reg.preset_path(adapter.parent)
    base_tensors = read_model_tensors(base_files)
    if which == "int8-adapter":
        base_tensors = quantized_int8(base_tensors)
        # quantized here as Keras quantized the base-int8 variant's weights when it wrote them
        assert base_tensors.digest("onnx") == read_model_tensors(reg.preset_path(family["int8"])).digest("onnx")
    from_files = apply_adapter(base_tensors, reg.preset_path(adapter), num_layers=2)
    from_keras = model_tensors(reg.load(adapter).backbone)
    assert from_files.digest("onnx") == from_keras.digest("onnx")
    assert sorted(from_files.low_rank) == sorted(from_keras.low_rank)
    assert bool(from_files.low_rank) == (which == "int8-adapter")
    for name, (a, b) in from_keras.low_rank.items():
        assert np.array_equal(from_files.low_rank[name][0], a) and np.array_equal(from_files.low_rank[name][1], b)


@pytest.mark.parametrize("which", ["base", "int8", "adapter", "int8-adapter"])
def test_evaluate_scores_without_tensorflow_what_keras_scores(run_cli, gpt2reg, family, text_file, which):
    reg, variant = family["reg"], family[which]
    args = ["evaluate", variant.ref, "--data", text_file, "--stride", "64", "--json", "--no-log",
            "--home", reg.home.path]
    light = run_cli(*args)
    assert light.code == 0 and light.imported == [], light
    light_score = json.loads(light.stdout)
    keras = gpt2reg(*args, "--runtime", "keras")
    assert keras.exit_code == 0, keras
    keras_score = keras.json()
    assert (light_score["runtime"], keras_score["runtime"]) == ("onnx", "keras")
    assert light_score["tokens"] == keras_score["tokens"] > 128  # long enough for several windows
    # float32: the same sums in another order; int8: onnxruntime's int8 products against Keras's.
    tolerance = 1e-4 if which in ("base", "adapter") else 1e-3
    assert light_score["perplexity"] == pytest.approx(keras_score["perplexity"], rel=tolerance)
    assert light_score["bits_per_byte"] == pytest.approx(keras_score["bits_per_byte"], rel=tolerance)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    choice = [{"prompt": f"Question {n}: which word comes next?", "choices": [" yes", " no", " the registry"],
               "answer": n % 3} for n in range(6)]
    generation = [{"prompt": f"Say something about number {n}:", "answer": "it is a number"} for n in range(4)]
    last_word = [{"text": "The Python tutorial is a good place to start"}, {"text": "Models are kept in the registry"}]
    for name, lines in (("choice", choice), ("generation", generation), ("last", last_word)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return folder


@pytest.mark.parametrize("task", ["choice", "generation", "last"])
@pytest.mark.parametrize("which", ["adapter", "int8"])
def test_evaluate_scores_tasks_without_tensorflow_as_keras_does(run_cli, gpt2reg, family, tasks, task, which):
    reg, variant = family["reg"], family[which]
    args = ["evaluate", variant.ref, "--task", tasks / f"{task}.jsonl", "--shots", "1", "--max-new-tokens", "4",
            "--json", "--no-log", "--home", reg.home.path]
    light = run_cli(*args)
    assert light.code == 0 and light.imported == [], light
    keras = gpt2reg(*args, "--runtime", "keras")
    assert keras.exit_code == 0, keras
    light_result, keras_result = json.loads(light.stdout), keras.json()
    assert (light_result["runtime"], keras_result["runtime"]) == ("onnx", "keras")
    figures = {key for key in keras_result["metrics"]} - {"task"}
    assert figures and figures == set(light_result["metrics"])
    for key in figures:  # choices and greedy answers agree; likelihoods within the runtimes' rounding
        tolerance = 1e-4 if which == "adapter" else 1e-2
        assert light_result["metrics"][key] == pytest.approx(keras_result["metrics"][key], rel=tolerance), key


def test_evaluate_refuses_onnx_where_it_cannot_score(gpt2reg, family, text_file):
    reg = family["reg"]
    refused = gpt2reg("evaluate", family["int4"].ref, "--data", text_file, "--runtime", "onnx", "--no-log",
                      "--home", reg.home.path)
    assert refused.exit_code == 2, refused
    assert refused.stderr.count("\n") == 1 and "use --runtime keras" in refused.stderr, refused


# Every command here runs without TensorFlow, Keras or KerasHub: the read-only ones, and generate
# on a float32 or int8 variant or an adapter over one (docs/serving.md, "Where it decodes").
WITHOUT_TENSORFLOW = [
    ["tokenize", "Hello <|endoftext|> world", "--json"],
    ["list", "--json"],
    ["show", "ad", "--json"],
    ["lineage", "base", "--json"],
    ["compare", "base", "base-int8", "--json"],
    ["alias", "base-int8/1", "small"],
    ["doctor"],
    ["plugins"],
    ["generate", "ad", PROMPT, "--sampler", "beam", "--num-beams", "3", "--max-new-tokens", "3"],
    ["generate", "base-int8", PROMPT, "--sampler", "contrastive", "--max-new-tokens", "3"],
    ["evaluate", "ad", "--data", "{text_file}", "--no-log"],
]


@pytest.mark.parametrize("args", WITHOUT_TENSORFLOW, ids=lambda args: " ".join(args[:2]))
def test_these_commands_never_import_tensorflow(run_cli, family, text_file, args):
    args = [arg.format(text_file=text_file) for arg in args]
    result = run_cli(*args, "--home", family["reg"].home.path)
    assert result.code == 0, result
    assert not set(HEAVY) & set(result.imported), result


SDK_CALLS = """
import json, sys
from registry import Registry
reg = Registry(sys.argv[1])
texts = [reg.run("generate", "ad", prompts=["The registry"], max_new_tokens=3).output["outputs"][0]["text"],
         "".join(event.text for event in reg.stream("base-int8", "The registry", max_new_tokens=3))]
perplexity = reg.run("evaluate", "base", data=[sys.argv[2]]).metrics["perplexity"]
found = [v.ref for v in reg.list()], reg.lineage("base")["edges"], reg.light_decoder("ad").runtime
heavy = sorted(m for m in ("tensorflow", "keras", "keras_hub") if m in sys.modules)
print(json.dumps({"heavy": heavy, "texts": texts, "perplexity": perplexity}))
"""


def test_the_sdks_generate_stream_evaluate_and_reads_never_import_tensorflow(family, text_file):
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-c", SDK_CALLS, str(family["reg"].home.path), str(text_file)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["heavy"] == [], found
    assert all(found["texts"]) and found["perplexity"] > 1
