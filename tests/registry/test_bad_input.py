"""Bad input: exit code 2, one line that names the problem, and the store left as it was."""

import pytest

from tests.conftest import store_snapshot

LONG_PROMPT = "word " * 120  # 120 tokens: with 16 new ones, past the 128-token context


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "nope"], "no variant nope"),
        (["show", "fx/9"], "no variant fx/9"),
        (["show", "fx@missing"], "fx@missing does not exist"),
        (["show", "../etc"], "invalid model name"),
        (["generate", "nope", "hi"], "no variant nope"),
        (["generate", "fx", "hi", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["generate", "fx", "hi", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["generate", "fx", LONG_PROMPT, "--max-new-tokens", "16"], "exceeds the model's context of 128"),
        (["generate", "fx", "hi", "--sampler", "nucleus"], "nucleus"),
        (["generate", "fx", "hi", "--sampler", "beam", "--num-beams", "0"], "--num-beams must be at least 1"),
        (["generate", "fx", "hi", "--repetition-penalty", "0"], "--repetition-penalty must be greater than 0"),
        (["generate", "fx", "hi", "--stop", ""], "--stop must not be empty"),
        (["generate", "fx", "hi", "--min-new-tokens", "40"], "--min-new-tokens must be between 0 and --max-new-tokens"),
        (["generate", "fx", "hi", "--truncate", "right"], "right"),
        (["generate", "fx", "hi", "--runtime", "tensorrt"], "tensorrt"),
        (["generate", "fx", "hi", "--runtime", "litert", "--xla"], "do not apply to --runtime litert"),
        (["generate", "fx", "hi", "--max-new-tokens", "128", "--truncate", "left"], "leaves no room for a prompt"),
        (["finetune", "fx", "--data", "missing.txt", "--steps", "1"], "missing.txt does not exist"),
        (["finetune", "fx", "--data", "{empty}", "--steps", "1"], "is empty"),
        (["finetune", "fx", "--data", "{text}", "--steps", "0"], "--steps must be at least 1"),
        (["evaluate", "fx", "--data", "missing.txt"], "does not exist"),
        (["evaluate", "fx", "--data", "{empty}"], "is empty"),
        (["import", "other", "{folder}"], "not a checkpoint folder"),
        (["import", "other", "./no/such/dir"], "does not exist"),
        (["import", "bad name!", "{folder}"], "invalid model name"),
        (["create", "x", "--config", "gpt5"], "unknown configuration"),
        (["import", "hub", "hf://openai-community/gpt2"], "import the local folder"),
        (["import", "hub", "gpt2_base_en"], "import the local folder"),
        (["alias", "fx/1", "latest"], "reserved"),
        (["finetune", "fx", "--data", "{text}", "--device", "tpu", "--steps", "1"], "tpu"),
        (["finetune", "fx", "--data", "{text}", "--patience", "2"], "--patience needs --eval-every"),
        (["finetune", "fx", "--data", "{text}", "--grad-accum", "0"], "--grad-accum must be at least 1"),
        (["finetune", "fx", "--data", "{text}", "--precision", "fp8"], "unknown --precision"),
        (["finetune", "fx", "--data", "{text}", "--precision", "fp16"], "needs a GPU"),
        (["finetune", "fx", "--data", "{text}", "--steps", "2", "--resume"], "no checkpoint for this run"),
        (["lora", "fx", "--data", "{text}", "--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["evaluate", "fx", "--data", "{text}", "--device", "tpu"], "no TPU found"),
        (["generate", "fx", "hi", "--device", "gpu"], "no GPU is visible"),
        (["distill", "fx", "--data", "{text}", "--student-layers", "3"], "more than the teacher's 2 layers"),
        (["distill", "fx", "--data", "{text}", "--student-layers", "1", "--student-config", "tiny"], "give one of"),
        (["distill", "fx", "--data", "{text}", "--student-config", "gpt5"], "unknown --student-config"),
        (["distill", "fx", "--data", "{text}", "--student-init", "nope"], "no variant nope"),
        (["distill", "fx", "--data", "{text}", "--alpha", "1.5"], "--alpha must be in [0, 1]"),
        (["distill", "fx", "--data", "{text}", "--temperature", "0"], "--temperature must be greater than 0"),
        (["evaluate", "fx"], "nothing to evaluate"),
        (["evaluate", "fx", "--task", "missing.jsonl"], "task file missing.jsonl does not exist"),
        (["evaluate", "fx", "--task", "{text}"], "is not valid JSON"),
        (["evaluate", "fx", "--data", "{text}", "--shots", "2"], "go with --task"),
        (["list", "--best", "no_such_metric"], "no variant has a metric 'no_such_metric'"),
        (["list", "--max-size-mb", "5"], "go with --best"),
        (["export", "nope", "--format", "onnx", "--out", "{tmp}/x"], "no variant nope"),
        (["export", "fx", "--format", "pb", "--out", "{tmp}/x"], "unknown --format 'pb'"),
        (["export", "fx", "--format", "savedmodel", "--quantize", "int8", "--out", "{tmp}/x"], "--quantize does not apply"),
        (["export", "fx", "--format", "tflite", "--quantize", "int4", "--out", "{tmp}/x"], "takes --quantize float16 or int8"),
        (["export", "fx", "--format", "onnx", "--out", "{folder}"], "not an empty folder"),
        (["export", "fx", "--format", "onnx", "--out", "{home}/exports"], "inside the registry home"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(gpt2reg, imported_home, text_file, tmp_path, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    folder = tmp_path / "not-a-checkpoint"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    args = [a.format(empty=empty, folder=folder, text=text_file, tmp=tmp_path, home=imported_home) for a in args]
    before = store_snapshot(imported_home)
    result = gpt2reg(*args, "--home", imported_home)
    assert result.exit_code == 2, result
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:") or line.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert store_snapshot(imported_home) == before
    assert not (tmp_path / "x").exists()


def test_reading_an_empty_home_creates_nothing(gpt2reg, tmp_path):
    home = tmp_path / "nothing-here"
    result = gpt2reg("show", "x", "--home", home)
    assert result.exit_code == 2 and "no variant x" in result.stderr
    assert not home.exists()
    assert gpt2reg("list", "--json", "--home", home).json() == {"variants": []}
    assert not home.exists()


def test_unknown_option_is_a_usage_error(gpt2reg):
    assert gpt2reg("generate", "--no-such-option").exit_code == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"activation_function": "relu"}, "activation_function='relu'"),
        ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
        ({"model_type": "llama"}, "not a GPT-2 checkpoint"),
        (None, "lacks model.safetensors"),
        ("truncate", "the file is truncated or damaged"),
    ],
)
def test_checkpoints_keras_hub_cannot_compute_exactly_are_refused(gpt2reg, fixture_dir, tmp_path, change, message):
    import json
    import shutil

    folder = tmp_path / "checkpoint"
    shutil.copytree(fixture_dir, folder)
    for file in folder.iterdir():
        file.chmod(0o644)
    config = json.loads((folder / "config.json").read_text())
    if change is None:
        (folder / "model.safetensors").unlink()
    elif change == "truncate":
        weights = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    else:
        config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    home = tmp_path / "home"
    result = gpt2reg("import", "bad", folder, "--home", home)
    assert result.exit_code == 2, result
    assert message in result.stderr
    assert not (home / "lineage.db").exists()
