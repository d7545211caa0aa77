"""`gpt2reg doctor`: find (and with --repair remove) anything half-made.

A variant is complete when its lineage row exists, its MLflow model version
exists and is READY, and its weight files hash to the recorded content hash.
The lineage row is written last, so a model version or run without one is
debris from an interrupted registration.
"""

from __future__ import annotations

import shutil

from registry import artifacts


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
    if reg.home.staging.exists():
        for leftover in sorted(reg.home.staging.iterdir()):
            report("staging-leftover", f"unfinished work folder {leftover}",
                   lambda leftover=leftover: shutil.rmtree(leftover, ignore_errors=True))
    if reg.home.checkpoints.exists():
        for run_folder in sorted(reg.home.checkpoints.iterdir()):
            steps = sorted(p.name for p in run_folder.glob("step-*"))
            report("interrupted-training",
                   f"checkpoint {steps[-1] if steps else '(none complete)'} of an unfinished run in {run_folder}: "
                   "rerun the same command with --resume, or --repair to remove it",
                   lambda run_folder=run_folder: shutil.rmtree(run_folder, ignore_errors=True))
    return {"home": str(reg.home.path), "variants_checked": len(rows), "problems": problems, "repaired": repair}
