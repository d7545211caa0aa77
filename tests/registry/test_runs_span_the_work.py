"""A capability's MLflow run spans its work: RUNNING from the start with its options and data sets,
curves streamed while it trains, the work's real duration, and KILLED or FAILED when it stops early."""

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from registry import Registry
from tests.conftest import _wait_until, store_snapshot

TRAINING = {"steps": 6, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "eval_every": 3, "val_split": 0.1}


@pytest.fixture
def base_home(tmp_path) -> Path:
    home = tmp_path / "home"
    Registry(home).create("base", config="tiny", seed=0)
    return home


def _running_runs(reg) -> list:
    return list(reg.tracker.client.search_runs([reg.tracker.experiment_id],
                                               filter_string="attributes.status = 'RUNNING'"))


def test_a_finetune_run_is_running_with_its_options_and_streams_its_curves(base_home, text_file, doctor):
    reg = Registry(base_home)
    watcher = Registry(base_home)  # another reader of the store, as the MLflow UI is
    seen = {}

    def look_at_the_store(**fields):
        if fields.get("step") != 2 or seen:
            return
        (run,) = _running_runs(watcher)
        seen.update(params=dict(run.data.params), inputs=[i.dataset.name for i in run.inputs.dataset_inputs],
                    losses=[m.step for m in watcher.tracker.client.get_metric_history(run.info.run_id, "train_loss")])

    reg.progress = look_at_the_store
    variant = reg.run("finetune", "base/1", data=[str(text_file)], **TRAINING)

    # While it trained (at step 2): running, its options there, its data set, step 1's loss already in.
    assert seen["params"]["steps"] == "6" and seen["params"]["lr"] == "0.003", seen
    assert seen["inputs"] == [text_file.name]
    assert seen["losses"] == [1]
    run = reg.tracker.get_run(variant.run_id)
    assert run.info.status == "FINISHED"
    # Its duration is the work's: at least the training itself, not the milliseconds of the recording.
    assert (run.info.end_time - run.info.start_time) / 1000 >= variant.metrics["train_seconds"]
    # What the work decided joins the options, each param once.
    assert run.data.params["warmup_steps"] == "0" and run.data.params["stopped"] == "completed"
    client = reg.tracker.client
    # Every point once, though the curve was streamed: MLflow's chart shows no step twice.
    assert [m.step for m in client.get_metric_history(variant.run_id, "train_loss")] == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in client.get_metric_history(variant.run_id, "learning_rate")] == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in client.get_metric_history(variant.run_id, "val_loss")] == [3, 6]
    # The last point is the logged model's figure.
    (model,) = reg.tracker.logged_models_of(variant.run_id)
    figures = {m.key: m.value for m in model.metrics}
    assert figures["train_loss"] == client.get_metric_history(variant.run_id, "train_loss")[-1].value
    assert doctor(base_home) == []


def test_an_interrupted_sdk_run_is_killed_with_its_last_figures(base_home, text_file, doctor):
    reg = Registry(base_home)
    before = store_snapshot(base_home)

    def interrupt_at_step_4(**fields):
        if fields.get("step") == 4:
            raise KeyboardInterrupt

    reg.progress = interrupt_at_step_4
    with pytest.raises(KeyboardInterrupt):
        reg.run("finetune", "base/1", data=[str(text_file)], **TRAINING)
    after = store_snapshot(base_home)
    assert after["variants"] == before["variants"] and after["versions"] == before["versions"]
    (new_run,) = set(after["runs"]) - set(before["runs"])
    run = reg.tracker.get_run(new_run)
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["gpt2reg.error"]
    assert run.info.run_name.endswith("(finetune, killed)")
    assert [m.step for m in reg.tracker.client.get_metric_history(new_run, "train_loss")] == [1, 2, 3, 4]
    assert not list((base_home / ".staging").iterdir())
    assert reg.tracker.logged_models_of(new_run) == []
    assert doctor(base_home) == []


def test_bad_input_found_by_the_work_leaves_no_run(base_home, tmp_path):
    reg = Registry(base_home)
    before = store_snapshot(base_home)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    from registry.errors import UsageError

    with pytest.raises(UsageError):
        reg.run("finetune", "base/1", data=[str(empty)], steps=2)
    assert store_snapshot(base_home) == before


LONG_TRAINING = ["--steps", "5000", "--batch-size", "2", "--seq-len", "16", "--checkpoint-every", "0"]


def _runs(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{home / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT run_uuid, status FROM runs WHERE lifecycle_stage = 'active'").fetchall()


def _streamed_points(home: Path, run_id: str) -> int:
    with sqlite3.connect(f"file:{home / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT count(*) FROM metrics WHERE run_uuid = ? AND key = 'train_loss'",
                          (run_id,)).fetchone()[0]


def _start_training(home: Path, text_file: Path, name: str) -> tuple[subprocess.Popen, str]:
    """`gpt2reg finetune` in a process of its own, once its run shows streamed losses; the run's id."""
    known = {run_id for run_id, _ in _runs(home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "registry.cli", "finetune", "base/1", "--data", str(text_file), *LONG_TRAINING,
         "--name", name, "--home", str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    new = []

    def streaming() -> bool:
        new[:] = [run_id for run_id, status in _runs(home) if run_id not in known and status == "RUNNING"]
        return bool(new) and _streamed_points(home, new[0]) >= 2

    _wait_until(streaming, "the fine-tune's streamed losses", process)
    return process, new[0]


def test_the_cli_ends_a_terminated_run_as_killed_and_doctor_ends_a_dead_ones(base_home, text_file, doctor):
    # SIGTERM (`kill`, a scheduler ending a job): the command stops as on Ctrl-C and ends its run.
    process, run_id = _start_training(base_home, text_file, "terminated")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted"
    reg = Registry(base_home)
    run = reg.tracker.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.params["steps"] == "5000"
    assert len(reg.tracker.client.get_metric_history(run_id, "train_loss")) >= 2
    assert [v.ref for v in reg.list()] == ["base/1"]

    # SIGKILL: the run stays RUNNING with a dead lease; doctor finds it and --repair ends it as KILLED,
    # keeping its figures.
    process, run_id = _start_training(base_home, text_file, "killed")
    process.kill()
    process.communicate(timeout=60)
    streamed = len(reg.tracker.client.get_metric_history(run_id, "train_loss"))
    problems = doctor(base_home)
    assert {problem["kind"] for problem in problems} == {"orphan-run", "staging-leftover"}, problems
    assert doctor(base_home, "--repair") and doctor(base_home) == []
    run = reg.tracker.get_run(run_id)
    assert run.info.status == "KILLED" and "process ended" in run.data.tags["gpt2reg.error"]
    assert len(reg.tracker.client.get_metric_history(run_id, "train_loss")) == streamed >= 2
    assert [v.ref for v in reg.list()] == ["base/1"]


@pytest.fixture
def doctor(gpt2reg):
    """`gpt2reg doctor --json [OPTIONS]`'s problems."""
    def problems(home: Path, *options: str) -> list[dict]:
        result = gpt2reg("doctor", "--json", "--home", home, *options)
        found = result.json()["problems"]
        # Exit 1 while anything is left unrepaired.
        assert result.exit_code == int(any(not problem["repaired"] for problem in found)), result
        return found

    return problems
