"""Fine-tuning through the registry: interrupted runs resume exactly, diverged runs fail cleanly."""

import os
import subprocess
import sys

import numpy as np
import pytest

from registry import Registry
from tests.conftest import store_snapshot

TRAINING = ["--steps", "6", "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3", "--checkpoint-every", "2",
            "--eval-every", "3", "--seed", "5"]

# Runs `gpt2reg ARGS` and kills the process with SIGKILL right after the step-4 checkpoint is on disk.
KILLED_AFTER_STEP_4 = """
import os, signal, sys
from backends import training
write = training._save_checkpoint
def write_then_die(folder, lm, optimizer, state):
    write(folder, lm, optimizer, state)
    if state["step"] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
training._save_checkpoint = write_then_die
from registry.cli import main
main(sys.argv[1:])
"""


@pytest.fixture
def base_home(tmp_path):
    home = tmp_path / "home"
    Registry(home).create("base", config="tiny", seed=0)
    return home


def backbone_weights(reg, ref):
    return [np.asarray(w) for w in reg.load(ref).backbone.weights]


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(base_home, text_file, gpt2reg):
    args = ["finetune", "base/1", "--data", str(text_file), *TRAINING, "--home", str(base_home)]
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_STEP_4, *args, "--name", "resumed"],
                            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoints = list((base_home / "checkpoints").glob("*/step-*"))
    assert [c.name for c in checkpoints] == ["step-00000004"]
    doctor = gpt2reg("doctor", "--home", base_home, "--json").json()
    assert "interrupted-training" in [p["kind"] for p in doctor["problems"]]

    resumed = gpt2reg(*args, "--name", "resumed", "--resume", "--json")
    assert resumed.exit_code == 0, resumed
    assert not list((base_home / "checkpoints").iterdir())  # a finished run leaves no checkpoint behind
    straight = gpt2reg(*args, "--name", "straight", "--json")
    assert straight.exit_code == 0, straight

    reg = Registry(base_home)
    resumed_variant, straight_variant = reg.get("resumed/1"), reg.get("straight/1")
    edge = reg.lineage(resumed_variant)["edges"][0]
    assert edge["settings"]["resumed_from_step"] == 4
    difference = max(float(np.abs(a - b).max()) for a, b in
                     zip(backbone_weights(reg, "resumed/1"), backbone_weights(reg, "straight/1")))
    assert difference < 1e-5
    assert resumed_variant.metrics["perplexity"] == pytest.approx(straight_variant.metrics["perplexity"], rel=1e-5)
    # The curves of the resumed run cover every step, the killed part included, as MLflow shows them.
    history = reg.tracker.client.get_metric_history(resumed_variant.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
    for curve in ("learning_rate", "tokens_per_second"):
        assert len(reg.tracker.client.get_metric_history(resumed_variant.run_id, curve)) == 6
    assert [m.step for m in reg.tracker.client.get_metric_history(resumed_variant.run_id, "val_loss")] == [3, 6]


def test_a_diverged_run_is_a_failed_mlflow_run_and_registers_nothing(base_home, text_file, gpt2reg, monkeypatch):
    reg = Registry(base_home)
    load = Registry.load

    def load_with_an_infinite_weight(self, variant, **options):
        # A parent with one overflowed weight, as a run in low precision can leave behind.
        lm = load(self, variant, **options)
        gamma = lm.backbone.get_layer("layer_norm").gamma
        gamma.assign(np.full(gamma.shape, np.inf, "float32"))
        return lm

    monkeypatch.setattr(Registry, "load", load_with_an_infinite_weight)
    before = store_snapshot(base_home)
    result = gpt2reg("finetune", "base/1", "--data", text_file, "--steps", "5", "--batch-size", "4",
                     "--seq-len", "32", "--home", base_home)
    assert result.exit_code == 1
    assert "training diverged" in result.stderr and "at step 1" in result.stderr
    after = store_snapshot(base_home)
    assert after["variants"] == before["variants"] and after["versions"] == before["versions"]
    new_runs = set(after["runs"]) - set(before["runs"])
    assert len(new_runs) == 1
    run = reg.tracker.get_run(new_runs.pop())
    assert run.info.status == "FAILED"
    assert run.data.params["steps"] == "5"
    assert "training diverged" in run.data.tags["gpt2reg.error"]
    assert not list((base_home / "checkpoints").glob("*/step-*"))
    # The failed run is a record, not debris.
    assert gpt2reg("doctor", "--home", base_home, "--json").json()["problems"] == []


def test_a_learning_rate_of_a_million_diverges_into_a_failed_run(base_home, text_file, gpt2reg):
    before = store_snapshot(base_home)
    result = gpt2reg("finetune", "base/1", "--data", text_file, "--steps", "8", "--batch-size", "4",
                     "--seq-len", "32", "--lr", "1e6", "--home", base_home)
    assert result.exit_code == 1, result
    assert "training diverged" in result.stderr and result.stderr.count("\n") == 1
    after = store_snapshot(base_home)
    assert after["variants"] == before["variants"] and after["versions"] == before["versions"]
    (new_run,) = set(after["runs"]) - set(before["runs"])
    run = Registry(base_home).tracker.get_run(new_run)
    assert run.info.status == "FAILED" and run.data.params["lr"] == "1000000.0"
