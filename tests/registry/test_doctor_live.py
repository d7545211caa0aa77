"""`gpt2reg doctor --repair` never touches live work, and still removes a dead process's leftovers.

A worker process makes a variant and stops at one step of the making (its
capability's files written, the run started, artifacts half-copied, the model
version registered, a checkpoint written mid-training, ...), waiting on an
event. `gpt2reg doctor --repair --json` then runs in the test's own process:
it must list the work under "running", report no problem and remove nothing.
Let go, the worker finishes and its variant is whole. Killed instead (SIGKILL),
the same leftovers are problems, and --repair removes them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import MlflowServer
from tests.registry import store_only_plugin
from tests.registry.store_only_plugin import incomplete_variants

WAIT = 180  # seconds a side waits for the other before the test fails


# ---------------------------------------------------------------- the worker's side


def _pause(reached, resume) -> None:
    reached.set()
    if not resume.wait(WAIT):
        os._exit(3)  # the test gave up on us


def _pause_once(owner, attribute: str, reached, resume, *, after: bool) -> None:
    original = getattr(owner, attribute)
    done = []

    def wrapper(*args, **kwargs):
        if not after and not done:
            done.append(True)
            _pause(reached, resume)
        result = original(*args, **kwargs)
        if after and not done:
            done.append(True)
            _pause(reached, resume)
        return result

    setattr(owner, attribute, wrapper)


def _pause_after_copies(count: int, reached, resume) -> None:
    """Stop once MLflow has copied `count` files into the run's artifacts (the others still to come)."""
    import shutil

    original, copied = shutil.copyfile, []

    def copyfile(source, destination, *args, **kwargs):
        result = original(source, destination, *args, **kwargs)
        if "artifacts" in Path(destination).parts:
            copied.append(destination)
            if len(copied) == count:
                _pause(reached, resume)
        return result

    shutil.copyfile = copyfile


def _pause_points() -> dict:
    from mlflow import MlflowClient

    from registry.lineage.store import LineageStore
    from registry.tracking import Tracker

    return {
        "capability-wrote-its-files": lambda *events: _pause_once(store_only_plugin, "write_preset", *events,
                                                                  after=True),
        "run-started": lambda *events: _pause_once(Tracker, "start_run", *events, after=True),
        "artifacts-half-copied": lambda *events: _pause_after_copies(3, *events),
        "registered-model-without-version": lambda *events: _pause_once(MlflowClient, "create_model_version",
                                                                        *events, after=False),
        "version-registered": lambda *events: _pause_once(Tracker, "register", *events, after=True),
        "before-lineage-commit": lambda *events: _pause_once(LineageStore, "add_variant", *events, after=False),
    }


# What doctor finds of a registration paused at each point: all of it live work.
LIVE_AT = {
    "capability-wrote-its-files": {"staging-leftover", "run"},  # its run began with the work
    "run-started": {"staging-leftover", "run"},
    "artifacts-half-copied": {"staging-leftover", "run"},
    "registered-model-without-version": {"staging-leftover", "run", "empty-registered-model"},
    "version-registered": {"staging-leftover", "half-made-version"},
    "before-lineage-commit": {"staging-leftover", "half-made-version"},
}


def register_paused_at(home: str, point: str, name: str, reached, resume, stores: dict | None = None,
                       host: str | None = None, heartbeat_seconds: str | None = None) -> None:
    """One stamp registration that stops at `point` until `resume` is set.

    `host` makes this process's leases name another machine; `heartbeat_seconds`, its heartbeat's period.
    """
    from registry import Registry, leases

    store_only_plugin.install()
    if heartbeat_seconds:
        os.environ[leases.HEARTBEAT_ENV] = heartbeat_seconds
    if host:
        leases.this_host = lambda: host
    _pause_points()[point](reached, resume)
    Registry(home, **(stores or {})).run("stamp", "base/1", name=name, tag=name)


def finetune_paused(args: list[str], training, resume_training, recording, resume_recording) -> None:
    """`gpt2reg finetune ARGS`, stopping after its first checkpoint and after its model version is registered."""
    import sys

    from backends import training as trainer
    from registry.cli import main
    from registry.tracking import Tracker

    _pause_once(trainer, "_save_checkpoint", training, resume_training, after=True)
    _pause_once(Tracker, "register", recording, resume_recording, after=True)
    try:
        main(args)
    except SystemExit as done:
        sys.exit(done.code)


# ---------------------------------------------------------------- the test's side


def _start(context, target, *args):
    reached, resume = context.Event(), context.Event()
    worker = context.Process(target=target, args=(*args[:-1], reached, resume, *args[-1]))
    worker.start()
    if not reached.wait(WAIT):
        worker.kill()
        pytest.fail(f"the worker never reached its pause (exit code {worker.exitcode})")
    return worker, resume


def _finish(worker, resume) -> int:
    resume.set()
    worker.join(WAIT)
    return worker.exitcode


def _doctor(gpt2reg, *args) -> dict:
    result = gpt2reg("doctor", "--json", *args)
    report = result.json()
    assert result.exit_code == (1 if report["problems"] and "--repair" not in args else 0), result
    return report


def _files(home: Path) -> list[str]:
    """The store's files (its databases aside: the worker's finishing whole shows their rows were kept)."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and ".db" not in p.name)


def _running(report: dict) -> set[str]:
    assert all(work["kind"] == "in-progress" for work in report["running"]), report
    return {work["what"] for work in report["running"]}


def test_doctor_repair_leaves_a_registration_paused_at_each_step_and_it_completes_whole(forkserver, tmp_path,
                                                                                          gpt2reg):
    home = tmp_path / "home"
    store_only_plugin.seed_home(home)
    for index, point in enumerate(LIVE_AT):
        name = f"live-{index}"
        worker, resume = _start(forkserver, register_paused_at, str(home), point, name, ())
        try:
            before = _files(home)
            report = _doctor(gpt2reg, "--repair", "--home", home)
            assert report["problems"] == [], point
            assert _running(report) == LIVE_AT[point], point
            assert _files(home) == before, f"doctor --repair removed files at {point}"
        finally:
            code = _finish(worker, resume)
        assert code == 0, point
        assert incomplete_variants(home) == [], point
        shown = gpt2reg("show", f"{name}/1", "--json", "--home", home)
        assert shown.exit_code == 0 and shown.json()["ref"] == f"{name}/1", shown
        report = _doctor(gpt2reg, "--home", home)
        assert report["problems"] == [] and report["running"] == [], point


def test_the_leftovers_of_a_killed_registration_are_problems_and_repaired(forkserver, tmp_path, gpt2reg):
    home = tmp_path / "home"
    store_only_plugin.seed_home(home)
    for point in ("registered-model-without-version", "before-lineage-commit"):
        worker, resume = _start(forkserver, register_paused_at, str(home), point, "killed", ())
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(WAIT)
        assert worker.exitcode == -signal.SIGKILL

        report = _doctor(gpt2reg, "--home", home)
        assert report["running"] == [], point
        found = {problem["kind"] for problem in report["problems"]}
        assert "staging-leftover" in found and found & {"orphan-run", "half-made-version"}, point
        assert list((home / ".leases").iterdir()), "the killed process's lease file"
        repaired = _doctor(gpt2reg, "--repair", "--home", home)
        assert all(problem["repaired"] for problem in repaired["problems"]), repaired
        assert _doctor(gpt2reg, "--home", home) == {**report, "problems": [], "running": []}
        assert incomplete_variants(home) == [], point
        assert not list((home / ".leases").iterdir()), "a dead lease file outlived --repair"


def test_doctor_leaves_a_finetune_alone_while_it_trains_and_while_it_records(forkserver, tmp_path, gpt2reg,
                                                                             fixture_dir, text_file):
    from registry import Registry, artifacts

    home = tmp_path / "home"
    assert gpt2reg("import", "fx", fixture_dir, "--home", home).exit_code == 0
    args = ["finetune", "fx/1", "--data", str(text_file), "--steps", "2", "--batch-size", "2", "--seq-len", "32",
            "--checkpoint-every", "1", "--name", "tuned", "--home", str(home)]
    training, resume_training = forkserver.Event(), forkserver.Event()
    recording, resume_recording = forkserver.Event(), forkserver.Event()
    worker = forkserver.Process(target=finetune_paused,
                                args=(args, training, resume_training, recording, resume_recording))
    worker.start()
    try:
        assert training.wait(WAIT), f"the finetune never wrote a checkpoint (exit code {worker.exitcode})"
        [checkpoint] = (home / "checkpoints").glob("*/step-*")
        report = _doctor(gpt2reg, "--repair", "--home", home)
        assert report["problems"] == []
        assert _running(report) == {"staging-leftover", "run", "interrupted-training"}
        assert checkpoint.is_dir()
        resume_training.set()

        assert recording.wait(WAIT), f"the finetune never registered its version (exit code {worker.exitcode})"
        report = _doctor(gpt2reg, "--repair", "--home", home)
        assert report["problems"] == []
        # The checkpoints stay until the variant is committed (a failed record could still resume).
        assert _running(report) == {"staging-leftover", "half-made-version", "interrupted-training"}
    finally:
        resume_training.set()
        resume_recording.set()
        worker.join(WAIT)
    assert worker.exitcode == 0

    reg = Registry(home)
    tuned = reg.get("tuned/1")
    assert artifacts.content_hash(reg.preset_path(tuned)) == tuned.content_hash
    assert [v.status for v in reg.tracker.versions() if v.name == "tuned"] == ["READY"]
    assert reg.lineage_store.get("tuned", 1) is not None
    reg.close()
    assert incomplete_variants(home) == []
    assert not list((home / "checkpoints").iterdir())
    generated = gpt2reg("generate", "tuned/1", "Hello", "--max-new-tokens", "3", "--sampler", "greedy", "--json",
                        "--home", home)
    assert generated.exit_code == 0, generated
    assert len(generated.json()["outputs"][0]["token_ids"]) == 3
    assert _doctor(gpt2reg, "--home", home)["problems"] == []


def _heartbeat_goes_stale(stores: dict, run_id: str) -> None:
    from registry import leases
    from registry.tracking import Tracker
    from registry.home import Home

    tracker = Tracker(Home.resolve(None, **stores))
    deadline = time.monotonic() + WAIT
    while leases.heartbeat_is_fresh(tracker.get_run(run_id).data.tags.get(leases.HEARTBEAT_TAG)):
        assert time.monotonic() < deadline, "the heartbeat of a killed process stayed fresh"
        time.sleep(0.2)


def test_on_a_tracking_server_doctor_leaves_live_work_of_any_machine_and_repairs_stale_work(
        forkserver, tmp_path, gpt2reg, postgres_server, monkeypatch):
    from registry import Registry, artifacts, leases

    server = MlflowServer(postgres_server, tmp_path)  # a server of this test's own: doctor --repair runs on it
    try:
        stores = {"tracking_uri": server.url, "lineage_url": postgres_server.create_database()}
        options = ["--tracking-uri", stores["tracking_uri"], "--lineage-url", stores["lineage_url"]]
        alice, bob = tmp_path / "alice", tmp_path / "bob"
        store_only_plugin.seed_home(alice, **stores)
        monkeypatch.setenv(leases.HEARTBEAT_ENV, "2")

        # Alice's registration, paused with its model version registered: live for her doctor (the
        # lease file in her home) and for Bob's (from another home: the heartbeat).
        worker, resume = _start(forkserver, register_paused_at, str(alice), "version-registered", "mine",
                                (stores, None, "2"))
        try:
            report = _doctor(gpt2reg, "--repair", "--home", alice, *options)
            assert report["problems"] == [] and _running(report) == {"staging-leftover", "half-made-version"}
            report = _doctor(gpt2reg, "--repair", "--home", bob, *options)
            assert report["problems"] == [] and _running(report) == {"half-made-version"}
        finally:
            assert _finish(worker, resume) == 0

        # A teammate's registration from another machine: live while its heartbeat is fresh,
        # stale once its process is gone, and then repaired.
        worker, resume = _start(forkserver, register_paused_at, str(alice), "before-lineage-commit", "theirs",
                                (stores, "teammate-machine", "2"))
        report = _doctor(gpt2reg, "--repair", "--home", bob, *options)
        assert report["problems"] == [] and _running(report) == {"half-made-version"}
        [work] = report["running"]
        assert "teammate-machine" in work["detail"]
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(WAIT)
        reg = Registry(bob, **stores)
        [version] = [v for v in reg.tracker.versions() if v.name == "theirs"]
        reg.close()
        _heartbeat_goes_stale(stores, version.run_id)
        report = _doctor(gpt2reg, "--home", bob, *options)
        assert [p["kind"] for p in report["problems"]] == ["half-made-version"] and report["running"] == []
        report = _doctor(gpt2reg, "--repair", "--home", bob, *options)
        assert [p["repaired"] for p in report["problems"]] == [True]
        # In Alice's home the killed worker left its work folder and lease file: debris now.
        report = _doctor(gpt2reg, "--repair", "--home", alice, *options)
        assert [p["kind"] for p in report["problems"]] == ["staging-leftover"]
        assert not list((alice / ".leases").iterdir())
        assert _doctor(gpt2reg, "--home", alice, *options)["problems"] == []

        reg = Registry(bob, **stores)
        assert [v.ref for v in reg.list()] == ["base/1", "mine/1"]
        assert sorted(v.name for v in reg.tracker.versions()) == ["base", "mine"]
        assert artifacts.content_hash(reg.preset_path("mine/1")) == reg.get("mine/1").content_hash
        reg.close()
    finally:
        server.stop()


def test_a_heartbeat_period_that_is_not_a_number_is_one_clear_error(tmp_path, gpt2reg, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("GPT2REG_HEARTBEAT_SECONDS", "soon")
    result = gpt2reg("doctor", "--repair", "--home", home)
    assert result.exit_code == 2, result
    assert not (home / "lineage.db").exists()
    assert result.stderr.count("\n") == 1
    assert "GPT2REG_HEARTBEAT_SECONDS='soon' is not a number of seconds" in result.stderr
    assert "unset it" in result.stderr


def test_a_dead_run_s_partial_copy_for_out_is_removed_with_its_work_folder(tmp_path, gpt2reg):
    """An export killed while it copied its files for --out (beside --out, outside the home)."""
    import uuid

    from registry import artifacts

    home = tmp_path / "home"
    store_only_plugin.seed_home(home)
    source = tmp_path / "preset"
    source.mkdir()
    (source / "model.weights.h5").write_bytes(b"weights" * 1000)
    # What the killed process left: its work folder (named after a lease no process holds any more)
    # and the partial copy that folder notes, as `record_and_deliver` makes it before recording.
    work = home / ".staging" / f"{uuid.uuid4().hex}-killed"
    work.mkdir(parents=True)
    out = tmp_path / "exports" / "gpt2-onnx"
    partial = artifacts.stage_delivery(source, out, staging=work)
    # A note naming anything but such a copy deletes nothing.
    keep = tmp_path / "keep"
    keep.mkdir()
    other = home / ".staging" / f"{uuid.uuid4().hex}-tampered"
    other.mkdir()
    (other / artifacts.DELIVERY_NOTE).write_text(str(keep))

    report = _doctor(gpt2reg, "--home", home)
    [found] = [p for p in report["problems"] if str(work) in p["detail"]]
    assert str(partial) in found["detail"]
    _doctor(gpt2reg, "--repair", "--home", home)
    assert not partial.exists() and not work.exists() and not other.exists()
    assert keep.is_dir() and not out.exists()
    assert _doctor(gpt2reg, "--home", home)["problems"] == []
