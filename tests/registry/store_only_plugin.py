"""A capability that exercises the store alone, for the concurrency and crash tests.

`stamp` makes a variant whose folder has the shape of a KerasHub preset (a
`config.json`, a small `model.weights.h5` of random bytes) without building a
model, so a test can register hundreds of variants, from many processes, in a
minute. The recording path (hashing, MLflow run, artifacts, pyfunc model,
model version, lineage row) is the one every real capability goes through.

The functions below run in worker processes started by `multiprocessing`'s
forkserver, which imports this module once (see `PRELOAD`) and forks each
worker from it.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from registry import Capability, CapabilityResult, hookimpl

PRELOAD = ["tests.registry.store_only_plugin"]
TINY = {"vocabulary_size": 50257, "num_layers": 2, "num_heads": 4, "hidden_dim": 64,
        "intermediate_dim": 256, "dropout": 0.0, "max_sequence_length": 128}

# What each worker would otherwise load on its first registration (about 3 s of
# CPU each): MLflow's SQL stores and their ORM mappings, matplotlib for the
# lineage picture, and the table of installed packages MLflow builds when it
# writes a model's requirements.
from registry import doctor, lineage_picture, recorder, sdk, serving, tracking  # noqa: E402,F401
import matplotlib.pyplot  # noqa: E402,F401
import mlflow.store.model_registry.sqlalchemy_store  # noqa: E402,F401
import mlflow.store.tracking.sqlalchemy_store  # noqa: E402,F401
from mlflow.utils import requirements_utils  # noqa: E402
from sqlalchemy.orm import configure_mappers  # noqa: E402

configure_mappers()
requirements_utils._init_packages_to_modules_map()


def write_preset(folder: Path, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"module": "keras_hub.src.models.gpt2.gpt2_backbone", "class_name": "GPT2Backbone",
              "config": TINY, "registered_name": "keras_hub>GPT2Backbone"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "model.weights.h5").write_bytes(payload)
    return folder


class Stamp(Capability):
    name = "stamp"
    operation = "finetune"

    @dataclass
    class Options:
        tag: str = ""
        size: int = 64 * 1024  # bytes of "weights": enough that a copy can be cut in the middle

    def run(self, context, options):
        preset = write_preset(context.workdir / "preset", os.urandom(options.size) + options.tag.encode())
        return CapabilityResult(preset_dir=preset, settings={"tag": options.tag}, metrics={"parameters": 1})


class StampPlugin:
    @hookimpl
    def register_capabilities(self, register):
        register(Stamp)


def install() -> None:
    from registry.plugins import load_plugins

    manager = load_plugins()
    if manager.get_plugin("stamp") is None:
        manager.register(StampPlugin(), name="stamp")


def seed_home(home: Path, **stores) -> str:
    """A home holding `base/1`, the parent every stamp is made from.

    `stores`: `tracking_uri` and `lineage_url` of shared stores, as for `Registry`.
    """
    from registry import Registry

    reg = Registry(home, **stores).init()
    with reg._staging() as staging:
        preset = write_preset(staging / "preset", b"base weights")
        reg._record(name="base", operation="create", parents=[], staging=staging,
                    result=CapabilityResult(preset_dir=preset, metrics={"parameters": 1}))
    reg.close()
    return "base/1"


def register_many(home: str, names: list[str], stores: dict, results) -> None:
    """Register one stamp per name; report each one's latency and any error text."""
    from registry import Registry

    install()
    reg = Registry(home, **stores)
    latencies, errors = [], []
    for index, name in enumerate(names):
        started = time.perf_counter()
        try:
            reg.run("stamp", "base/1", name=name, tag=f"{os.getpid()}-{index}")
        except Exception:
            errors.append(traceback.format_exc(limit=4))
        latencies.append(time.perf_counter() - started)
    results.put({"latencies": latencies, "errors": errors})


def open_new_home(home: str, stores: dict, results) -> None:
    from registry import Registry

    try:
        reg = Registry(home, **stores).init()
        results.put({"experiment": reg.tracker.experiment_id, "error": None})
    except Exception:
        results.put({"experiment": None, "error": traceback.format_exc(limit=6)})


# ---------------------------------------------------------------- dying on purpose

def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _die_before(owner, attribute: str) -> None:
    original = getattr(owner, attribute)

    def wrapper(*args, **kwargs):
        _die()
        return original(*args, **kwargs)

    setattr(owner, attribute, wrapper)


def _die_after(owner, attribute: str) -> None:
    original = getattr(owner, attribute)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        _die()
        return result

    setattr(owner, attribute, wrapper)


def _die_mid_copy(nth: int) -> None:
    """Die halfway through the `nth` file MLflow copies into the artifact store."""
    import shutil

    calls = {"count": 0}
    original = shutil.copyfile

    def copyfile(source, destination, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == nth:
            data = Path(source).read_bytes()
            with open(destination, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            _die()
        return original(source, destination, *args, **kwargs)

    shutil.copyfile = copyfile


def _die_inside_lineage_transaction() -> None:
    """Die after the lineage row is inserted and before its transaction commits."""
    from registry.lineage import store

    original = store._insert

    def insert(*args, **kwargs):
        original(*args, **kwargs)
        args[0].flush()
        _die()

    store._insert = insert


def kill_points() -> dict:
    from mlflow import MlflowClient

    from registry import artifacts
    from registry.lineage.store import LineageStore
    from registry.tracking import Tracker

    return {
        "before-hashing": lambda: _die_before(artifacts, "content_hash"),
        "after-pyfunc-model": lambda: _die_after(serving, "save_pyfunc"),
        "before-fsync": lambda: _die_before(artifacts, "fsync_tree"),
        "after-run-created": lambda: _die_after(Tracker, "start_run"),
        "after-params": lambda: _die_after(Tracker, "log_params"),
        "after-metrics": lambda: _die_after(Tracker, "log_metrics"),
        "mid-copy-1": lambda: _die_mid_copy(1),
        "mid-copy-3": lambda: _die_mid_copy(3),
        "mid-copy-6": lambda: _die_mid_copy(6),
        "after-artifacts": lambda: _die_after(Tracker, "log_artifact"),
        "before-register": lambda: _die_before(Tracker, "register"),
        "between-model-and-version": lambda: _die_before(MlflowClient, "create_model_version"),
        "after-register": lambda: _die_after(Tracker, "register"),
        "before-finish": lambda: _die_before(Tracker, "finish_run"),
        "after-finish": lambda: _die_after(Tracker, "finish_run"),
        "inside-lineage-commit": _die_inside_lineage_transaction,
        "after-lineage-commit": lambda: _die_after(LineageStore, "add_variant"),
    }


def register_and_maybe_die(home: str, point: str | None, tag: str) -> None:
    """One registration; with `point`, the process kills itself (SIGKILL) there."""
    from registry import Registry

    install()
    if point is not None:
        kill_points()[point]()
    Registry(home).run("stamp", "base/1", name="crash", tag=tag)


def _count_calls(limit: int | None, counter: dict) -> None:
    """Count Python function calls from here on; with `limit`, die at that call."""
    import sys

    def profile(frame, event, arg):
        if event == "call":
            counter["calls"] += 1
            if counter["calls"] == limit:
                _die()

    sys.setprofile(profile)


def calls_in_one_registration(home: str, tag: str, results) -> None:
    """How many Python calls one whole registration makes (the range of kill points)."""
    import sys

    from registry import Registry

    install()
    reg = Registry(home)
    counter = {"calls": 0}
    _count_calls(None, counter)
    try:
        reg.run("stamp", "base/1", name="crash", tag=tag)
    finally:
        sys.setprofile(None)
    results.put(counter["calls"])


def register_and_die_at_call(home: str, call: int, tag: str) -> None:
    """One registration that kills itself (SIGKILL) at its `call`-th Python function call."""
    from registry import Registry

    install()
    reg = Registry(home)
    _count_calls(call, {"calls": 0})
    reg.run("stamp", "base/1", name="crash", tag=tag)


def incomplete_variants(home: str | Path, **stores) -> list[str]:
    """Everything that breaks "a variant is whole or absent", checked without `gpt2reg doctor`.

    Whole: a lineage row, an MLflow model version READY for it, its run
    FINISHED, its files hashing to the recorded content hash, and a pyfunc
    model beside them. Absent: none of those, no run folder with files, and no
    work folder left in the staging area. `stores` as for `seed_home`.
    """
    from registry import Registry, artifacts
    from registry.artifacts import MODEL_ARTIFACT

    home = Path(home)
    reg = Registry(home, **stores)
    problems = []
    rows = {(row.name, row.version): row for row in reg.lineage_store.list()}
    versions = {(v.name, int(v.version)): v for v in reg.tracker.versions()}
    problems += [f"model version {n}/{v} has no lineage row" for n, v in sorted(set(versions) - set(rows))]
    problems += [f"lineage row {n}/{v} has no model version" for n, v in sorted(set(rows) - set(versions))]
    runs = {run.info.run_id: run for run in reg.tracker.search_runs()}
    for key, row in sorted(rows.items()):
        version = versions.get(key)
        if version is not None and version.status != "READY":
            problems.append(f"{row.ref} is {version.status} in MLflow")
        run = runs.get(row.run_id)
        if run is None or run.info.status != "FINISHED":
            problems.append(f"{row.ref}: run {row.run_id} is {run.info.status if run else 'missing'}")
        folder = reg.preset_path(row.ref)
        if artifacts.content_hash(folder) != row.content_hash:
            problems.append(f"{row.ref}: files do not match their hash")
        if row.kind == "full" and not (folder.parents[1] / "MLmodel").is_file():
            problems.append(f"{row.ref}: no MLflow model beside the preset ({MODEL_ARTIFACT}/MLmodel)")
    variant_runs = {row.run_id for row in rows.values()}
    recorded_failures = {run_id for run_id, run in runs.items() if run.data.tags.get("gpt2reg.error")}
    experiment = home / "artifacts" / reg.tracker.experiment_id
    for folder in sorted(experiment.iterdir()) if experiment.is_dir() else []:
        if folder.name not in variant_runs | recorded_failures and any(p.is_file() for p in folder.rglob("*")):
            problems.append(f"artifact files of run {folder.name}, which made no variant")
    for run_id, run in runs.items():
        if run_id not in variant_runs | recorded_failures and run.data.tags.get("gpt2reg.operation"):
            problems.append(f"run {run_id} ({run.info.status}) made no variant")
    staging = home / ".staging"
    problems += [f"work folder {p.name} left in staging" for p in staging.iterdir()] if staging.is_dir() else []
    reg.close()
    return problems
