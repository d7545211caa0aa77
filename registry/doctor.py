"""`gpt2reg doctor`: find (and with --repair remove) anything half-made.

A variant is complete when its lineage row exists, its MLflow model version
exists and is READY, and its weight files hash to the recorded content hash.
The lineage row is written last, so a model version or run without one is
debris from an interrupted registration.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from registry import artifacts
from registry.tracking import REGISTERED_MODEL_DESCRIPTION, TrackingServerUnreachable

RUN_ID = re.compile(r"[0-9a-f]{32}")


def run_doctor(reg, *, repair: bool = False) -> dict:
    problems: list[dict] = []
    if not reg.home.exists():
        return {"home": str(reg.home.path), "variants_checked": 0, "problems": [], "repaired": repair}
    tracker, lineage = reg.tracker, reg.lineage_store
    rows = {(row.name, row.version): row for row in lineage.list()}
    versions = {(v.name, int(v.version)): v for v in tracker.versions()}

    def report(kind, detail, fix=None):
        entry = {"kind": kind, "detail": detail, "repaired": False}
        if repair and fix is not None:
            fix()
            entry["repaired"] = True
        problems.append(entry)

    for key, row in rows.items():
        version = versions.get(key)
        if version is None:
            report("missing-model-version", f"{row.ref} is in the lineage store but not in the MLflow registry",
                   lambda row=row: lineage.delete_variant(row.name, row.version))
            continue
        if version.status != "READY":
            report("model-version-not-ready", f"{row.ref} has MLflow status {version.status}")
        try:
            path = reg.preset_path(row.ref)
            actual = artifacts.content_hash(path)
        except TrackingServerUnreachable:
            raise  # says nothing about the files: --repair must not remove a variant for it
        except Exception as error:  # missing or unreadable files
            actual, path = None, error
        if actual != row.content_hash:
            def remove(row=row):
                tracker.delete_version(row.name, row.version)
                lineage.delete_variant(row.name, row.version)
            report("damaged-artifacts", f"{row.ref}: weight files missing or not matching their hash ({path})", remove)

    used_runs = {row.run_id for row in rows.values()}

    for key, version in versions.items():
        if key not in rows and (version.tags or {}).get("gpt2reg.operation"):
            report("half-made-version", f"{key[0]}/{key[1]} is registered in MLflow but has no lineage row",
                   lambda key=key, version=version: (tracker.delete_version(*key), tracker.delete_run(version.run_id)))
            used_runs.add(version.run_id)
    for run in tracker.search_runs():
        if run.data.tags.get("gpt2reg.error"):
            continue  # a recorded failure (a diverged run): kept on purpose, with its curves
        if run.info.run_id not in used_runs and run.data.tags.get("gpt2reg.operation"):
            report("orphan-run", f"MLflow run {run.info.run_id} ({run.info.run_name}, {run.info.status}) made no variant",
                   lambda run=run: tracker.delete_run(run.info.run_id))
    active_runs = {run.info.run_id for run in tracker.search_runs()}
    for folder in _run_artifact_folders(reg.home.artifact_root, tracker.experiment_id):
        if folder.name not in active_runs:
            report("orphan-artifacts", f"artifact files {folder} belong to no MLflow run (a deleted or interrupted one)",
                   lambda folder=folder: shutil.rmtree(folder, ignore_errors=True))
    for model in tracker.registered_models():
        if not any(key[0] == model.name for key in versions) and model.description == REGISTERED_MODEL_DESCRIPTION:
            report("empty-registered-model", f"registered model {model.name} has no versions (an interrupted first "
                   "registration)", lambda model=model: tracker.delete_registered_model(model.name))
    if reg.home.staging.exists():
        for leftover in sorted(reg.home.staging.iterdir()):
            report("staging-leftover", f"unfinished work folder {leftover}",
                   lambda leftover=leftover: shutil.rmtree(leftover, ignore_errors=True))
    cache = reg.home.path / "cache"
    if cache.is_dir():
        for leftover in sorted(cache.glob(".*-download-*")):
            report("download-leftover", f"an interrupted download of a variant's files, {leftover}",
                   lambda leftover=leftover: shutil.rmtree(leftover, ignore_errors=True))
    if reg.home.checkpoints.exists():
        for run_folder in sorted(reg.home.checkpoints.iterdir()):
            steps = sorted(p.name for p in run_folder.glob("step-*"))
            report("interrupted-training",
                   f"checkpoint {steps[-1] if steps else '(none complete)'} of an unfinished run in {run_folder}: "
                   "rerun the same command with --resume, or --repair to remove it",
                   lambda run_folder=run_folder: shutil.rmtree(run_folder, ignore_errors=True))
    return {"home": str(reg.home.path), "variants_checked": len(rows), "problems": problems, "repaired": repair}


def _run_artifact_folders(artifact_root: Path, experiment_id: str) -> list[Path]:
    """`<artifact root>/<experiment>/<run id>` folders that MLflow made for runs of this home."""
    experiment = artifact_root / str(experiment_id)
    if not experiment.is_dir():
        return []
    return sorted(p for p in experiment.iterdir() if p.is_dir() and RUN_ID.fullmatch(p.name))
