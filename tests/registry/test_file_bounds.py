"""A checkpoint that claims more than its files hold is refused from the files' headers, before anything is built.

The config of a checkpoint decides how much Keras allocates; the weight files
decide what there is. Each craft below keeps the fixture's real weights and
lies about them (the config, a truncated file, a header's declared length);
`gpt2reg import` must answer with one line and exit 2, at once, with its
memory bounded by the files' real size, and register nothing.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest

from tests.conftest import store_snapshot

# A Python process that has imported the registry's CLI and read the fixture's headers stays near
# 150 MB; building the model the crafted config claims would take over 15 GB.
PEAK_MEMORY_BOUND_KB = 1_500_000

# Reports the process's peak memory when it exits: on PYTHONPATH, Python imports it at start-up.
# The process's own peak (VmHWM), not getrusage's ru_maxrss: Linux carries a parent's peak across
# exec into ru_maxrss, so a child started from a large test worker would report the worker's.
PEAK_REPORTER = """
import atexit, os

def _report(path=os.environ.get("GPT2REG_TEST_PEAK_FILE")):
    if path:
        with open("/proc/self/status") as status:
            peak_kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
        with open(path, "w") as out:
            out.write(peak_kb)

atexit.register(_report)
"""


@pytest.fixture
def keras_preset(imported_home, tmp_path) -> Path:
    """A writable copy of a registered KerasHub preset (the fixture imported)."""
    from registry import Registry

    registry = Registry(imported_home)
    try:
        registered = registry.preset_path(registry.get("fx"))
    finally:
        registry.close()
    folder = tmp_path / "preset"
    shutil.copytree(registered, folder, ignore=shutil.ignore_patterns("gpt2reg.json", "MLmodel"))
    for file in folder.rglob("*"):
        file.chmod(0o755 if file.is_dir() else 0o644)
    return folder


def edit_json(file: Path, change) -> None:
    config = json.loads(file.read_text())
    change(config)
    file.write_text(json.dumps(config))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_a_config_claiming_48_layers_4096_wide_is_refused_before_tensorflow_loads(run_cli, hf_folder, tmp_path):
    edit_json(hf_folder / "config.json", lambda config: config.update(n_layer=48, n_embd=4096, n_head=32,
                                                                      n_positions=100000))
    reporter = tmp_path / "reporter"
    reporter.mkdir()
    (reporter / "sitecustomize.py").write_text(PEAK_REPORTER)
    peak_file = tmp_path / "peak-kb"

    started = time.monotonic()
    run = run_cli("import", "claims", hf_folder, "--home", tmp_path / "home", pythonpath=[reporter],
                  env={"GPT2REG_TEST_PEAK_FILE": str(peak_file)})
    elapsed = time.monotonic() - started

    assert run.code == 2, run
    [line] = error_lines(run.stderr)
    assert "config.json says 48 layers but model.safetensors holds tensors for 2 (h.0-h.1)" in line, line
    assert "correct config.json" in line  # the fix
    assert run.imported == [], run  # refused from the headers: TensorFlow, Keras and KerasHub never loaded
    assert int(peak_file.read_text()) < PEAK_MEMORY_BOUND_KB
    assert elapsed < 60, elapsed  # a fresh interpreter's start-up; the build it prevents ran for minutes
    assert not (tmp_path / "home").exists() or store_snapshot(tmp_path / "home").get("variants", []) == []


@pytest.mark.parametrize("change, message", [
    (lambda config: config.update(n_embd=4096, n_head=32),
     "config.json implies wte.weight of shape [50257, 4096] (vocab_size x n_embd) but model.safetensors holds [50257, 64]"),
    (lambda config: config.update(n_positions=100000),
     "config.json implies wpe.weight of shape [100000, 64] (n_positions x n_embd) but model.safetensors holds [128, 64]"),
    (lambda config: config.update(n_inner=1024),
     "config.json implies h.0.mlp.c_fc.weight of shape [64, 1024] (n_embd x n_inner)"),
    (lambda config: config.update(n_head=5), "sets n_embd=64, which n_head=5 does not divide"),
    (lambda config: config.update(n_layer=-1), "sets n_layer to int -1; it must be a positive whole number"),
], ids=["width", "positions", "inner-width", "heads", "negative-layers"])
def test_each_claim_a_config_makes_is_checked_against_the_tensors(gpt2reg, hf_folder, tmp_path, change, message):
    edit_json(hf_folder / "config.json", change)
    result = gpt2reg("import", "claims", hf_folder, "--home", tmp_path / "home")
    assert result.exit_code == 2, result
    [line] = error_lines(result.stderr)
    assert message in line, line


def test_a_keras_preset_whose_config_disagrees_with_its_weights_is_refused(gpt2reg, keras_preset, tmp_path):
    home = tmp_path / "home"
    edit_json(keras_preset / "config.json", lambda config: config["config"].update(num_layers=48))
    result = gpt2reg("import", "claims", keras_preset, "--home", home)
    assert result.exit_code == 2, result
    [line] = error_lines(result.stderr)
    assert "config.json says 48 layers but model.weights.h5 holds 2 transformer blocks" in line, line

    edit_json(keras_preset / "config.json", lambda config: config["config"].update(num_layers=2, hidden_dim=128))
    result = gpt2reg("import", "claims", keras_preset, "--home", home)
    assert result.exit_code == 2, result
    [line] = error_lines(result.stderr)
    assert "config.json implies layers/position_embedding/vars/0 of shape [128, 128]" in line, line
    assert not home.exists() or store_snapshot(home).get("variants", []) == []


def test_a_truncated_safetensors_file_is_refused(gpt2reg, hf_folder, tmp_path):
    weights = hf_folder / "model.safetensors"
    with weights.open("r+b") as file:
        file.truncate(weights.stat().st_size // 2)
    result = gpt2reg("import", "cut", hf_folder, "--home", tmp_path / "home")
    assert result.exit_code == 2, result
    [line] = error_lines(result.stderr)
    assert "model.safetensors places the tensor" in line and "the file is truncated or damaged" in line, line


def test_a_safetensors_header_claiming_a_huge_length_is_refused_unread(gpt2reg, hf_folder, tmp_path):
    weights = hf_folder / "model.safetensors"
    with weights.open("r+b") as file:
        file.write(struct.pack("<Q", 2**62))
    started = time.monotonic()
    result = gpt2reg("import", "huge", hf_folder, "--home", tmp_path / "home")
    assert result.exit_code == 2, result
    [line] = error_lines(result.stderr)
    assert f"declares a {2**62:,}-byte header but the file is {weights.stat().st_size:,} bytes" in line, line
    assert time.monotonic() - started < 10


def test_few_shot_draws_by_position_pick_the_shots_a_draw_from_the_other_examples_picks(tmp_path):
    """Each question's shots are drawn by position, without copying the other examples per question (a
    task of n lines cost n² that way); a --seed must keep giving the shots it gave before."""
    import random

    from registry.tasks import choose_shots, read_task

    task_file = tmp_path / "task.jsonl"
    task_file.write_text("".join(json.dumps({"prompt": f"q{n}", "answer": f"a{n}"}) + "\n" for n in range(5000)))
    task = read_task(str(task_file))
    for index in (0, 1, 2500, 4999):
        others = task.examples[:index] + task.examples[index + 1:]
        assert choose_shots(task, index, None, 5, seed=7) == random.Random(7 * 1_000_003 + index).sample(others, 5)
    pool = read_task(str(task_file))
    assert choose_shots(task, 3, pool, 4, seed=1) == random.Random(1 * 1_000_003 + 3).sample(pool.examples, 4)
