"""`gpt2reg doctor`: find (and with --repair remove) anything half-made, and leave live work alone.

A variant is complete when its lineage row exists, its MLflow model version
exists and is READY, and its weight files hash to the recorded content hash.
The lineage row is written last, so a model version or run without one is
debris from an interrupted registration (repair removes the files and versions
it made and ends its run as KILLED, keeping its params and figures), unless the registration is still
going on: everything a registration, a run or a download makes before its
end names a lease (`registry.leases`), and what names a live lease is listed
under "running", never repaired.

Two races are closed here. Work that starts after doctor has listed the stores
is judged when doctor reaches it, not from the listing. And work that ends in
between (its lineage row committed, then its lease released) is seen whole:
doctor reads the lease first and then reads the stores again, so a released
lease means the commit is already there to read.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

from registry import artifacts, leases
from registry.leases import HEARTBEAT_TAG, LEASE_TAG
from registry.tracking import REGISTERED_MODEL_DESCRIPTION, TrackingServerUnreachable

RUN_ID = re.compile(r"[0-9a-f]{32}")
LOGGED_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")


def run_doctor(reg, *, repair: bool = False) -> dict:
    """What is half-made (``problems``, removed with `repair`) and what is work in progress (``running``)."""
    leases.heartbeat_seconds()  # a bad setting is one clear error before anything is judged by it
    problems: list[dict] = []
    running: list[dict] = []
    home = reg.home
    if not home.exists():
        return {"home": str(home.path), "variants_checked": 0, "problems": [], "running": [], "repaired": repair}
    tracker, lineage = reg.tracker, reg.lineage_store
    # Listed in the reverse of the order a registration makes them (run, registered model,
    # model version, lineage row): what one listing shows, the listings after it show the
    # makings of too.
    rows = {(row.name, row.version): row for row in lineage.list()}
    models = tracker.registered_models()
    versions = {(v.name, int(v.version)): v for v in tracker.versions()}
    runs = {run.info.run_id: run for run in tracker.search_runs()}

    def report(kind: str, detail: str, fix: Callable[[], object] | None = None, *,
               live: Callable[[], bool] = lambda: False, still_debris: Callable[[], bool] = lambda: True,
               live_as: tuple[str, str] | None = None) -> None:
        """One finding; judged now (lease first, then the stores again), not from the listing.
        `live_as`: what and detail to list under running, where they differ from the debris's."""
        if live():
            what, detail = live_as or (kind, detail)
            running.append({"kind": "in-progress", "what": what, "detail": detail})
            return
        if not still_debris():
            return  # finished (committed) since the listing
        entry = {"kind": kind, "detail": detail, "repaired": False}
        if repair and fix is not None:
            fix()
            entry["repaired"] = True
        problems.append(entry)

    def run_is_live(run_id: str) -> bool:
        """The run's lease and heartbeat as they are now."""
        from mlflow.exceptions import MlflowException

        try:
            tags = tracker.get_run(run_id).data.tags
        except MlflowException:
            return False
        return leases.is_live(home, tags.get(LEASE_TAG), tags.get(HEARTBEAT_TAG))

    def committed_runs() -> set[str]:
        return {row.run_id for row in lineage.list()}

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
            report("half-made-version", f"{key[0]}/{key[1]} is registered in MLflow but has no lineage row"
                   + _lease_note(version.tags),
                   lambda key=key, version=version: (tracker.delete_version(*key), _end_as_killed(tracker, version.run_id)),
                   live=lambda version=version: run_is_live(version.run_id)
                   or leases.is_live(home, (version.tags or {}).get(LEASE_TAG)),
                   still_debris=lambda key=key: lineage.get(*key) is None)
            used_runs.add(version.run_id)
    for run in runs.values():
        if run.data.tags.get("gpt2reg.error"):
            continue  # a recorded failure (a diverged run): kept on purpose, with its curves
        if run.info.run_id not in used_runs and run.data.tags.get("gpt2reg.operation"):
            report("orphan-run", f"MLflow run {run.info.run_id} ({run.info.run_name}, {run.info.status}) made no "
                   "variant" + _lease_note(run.data.tags),
                   lambda run=run: _end_as_killed(tracker, run.info.run_id),
                   live=lambda run=run: run_is_live(run.info.run_id),
                   # A capability's run begins with its work: a live one is working, not orphaned.
                   live_as=("run", f"MLflow run {run.info.run_id} ({run.info.run_name}) is working"
                            + _lease_note(run.data.tags)),
                   still_debris=lambda run=run: run.info.run_id not in committed_runs())
    for folder in _run_artifact_folders(home.artifact_root, tracker.experiment_id):
        if folder.name not in runs:
            report("orphan-artifacts", f"artifact files {folder} belong to no MLflow run (a deleted or interrupted one)",
                   lambda folder=folder: shutil.rmtree(folder, ignore_errors=True),
                   # A run started after the listing has its files here already.
                   live=lambda folder=folder: run_is_live(folder.name),
                   still_debris=lambda folder=folder: not _run_is_active(tracker, folder.name))
    for folder in _logged_model_folders(home.artifact_root):
        # A logged model's row comes before its files, and the two go together (Tracker.delete_run):
        # files without a row are what an interrupted deletion left.
        if not _logged_model_exists(tracker, folder.name):
            report("orphan-artifacts", f"logged model files {folder} belong to no MLflow logged model",
                   lambda folder=folder: shutil.rmtree(folder, ignore_errors=True),
                   still_debris=lambda folder=folder: not _logged_model_exists(tracker, folder.name))
    for model in models:
        if not any(key[0] == model.name for key in versions) and model.description == REGISTERED_MODEL_DESCRIPTION:
            lease_tag = (model.tags or {}).get(LEASE_TAG)
            report("empty-registered-model", f"registered model {model.name} has no versions (an interrupted first "
                   "registration)" + _lease_note(model.tags),
                   lambda model=model: tracker.delete_registered_model(model.name),
                   live=lambda lease_tag=lease_tag: _lease_is_live(home, lease_tag, runs, run_is_live),
                   still_debris=lambda model=model: not any(v.name == model.name for v in tracker.versions()))
    if home.staging.exists():
        for leftover in sorted(home.staging.iterdir()):
            partial = _partial_delivery(leftover)
            report("staging-leftover", f"unfinished work folder {leftover}"
                   + (f", and the partial copy for --out it was making, {partial}" if partial else ""),
                   lambda leftover=leftover: _remove_work_folder(leftover),
                   live=lambda leftover=leftover: leases.folder_is_live(home, leftover.name),
                   still_debris=leftover.exists)
    cache = home.path / "cache"
    if cache.is_dir():
        for leftover in sorted(cache.glob(".*-download-*")):
            report("download-leftover", f"an interrupted download of a variant's files, {leftover}",
                   lambda leftover=leftover: shutil.rmtree(leftover, ignore_errors=True),
                   live=lambda leftover=leftover: leases.folder_is_live(home, leftover.name),
                   still_debris=leftover.exists)
    if home.checkpoints.exists():
        for run_folder in sorted(home.checkpoints.iterdir()):
            steps = sorted(p.name for p in run_folder.glob("step-*"))
            # Checkpoint folders are named by what they train, not by their run: while any
            # run of this home lives, each one may be that run's (resumed or being written).
            report("interrupted-training",
                   f"checkpoint {steps[-1] if steps else '(none complete)'} of an unfinished run in {run_folder}: "
                   "rerun the same command with --resume, or --repair to remove it",
                   lambda run_folder=run_folder: shutil.rmtree(run_folder, ignore_errors=True),
                   live=lambda: _any_live_lease(home), still_debris=run_folder.exists)
    if repair:
        # Last, as the judgments above read them. A dead process's lease file is no problem of
        # its own (its lock died with it; what the process made is reported above): it goes quietly.
        for lease_file in leases.dead_lease_files(home):
            leases.remove_dead_lease(lease_file)
    return {"home": str(home.path), "variants_checked": len(rows), "problems": problems, "running": running,
            "repaired": repair}


# `artifacts.stage_delivery`'s hidden copy beside an --out folder.
PARTIAL_DELIVERY = re.compile(r"\..+\.partial-[0-9a-f]{8}")


def _partial_delivery(folder: Path) -> Path | None:
    """The copy for --out that a dead run's staging folder says it was making outside the home."""
    try:
        named = Path((folder / artifacts.DELIVERY_NOTE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    # Only a hidden partial copy as stage_delivery names them: the note is a file in the home, not a
    # licence to delete whatever it names.
    if PARTIAL_DELIVERY.fullmatch(named.name) and named.is_dir() and not named.is_symlink():
        return named
    return None


def _remove_work_folder(folder: Path) -> None:
    """A dead run's staging folder, and first the partial copy for --out it names (it is outside the home)."""
    partial = _partial_delivery(folder)
    if partial is not None:
        shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


KILLED_NOTE = "the process ended before the variant was registered (found by gpt2reg doctor)"


def _end_as_killed(tracker, run_id: str) -> None:
    """A dead process's run, as its process would have ended it had it been interrupted: KILLED, with
    its params and the figures it streamed; the files it had logged are part of no variant and go."""
    from mlflow.exceptions import MlflowException

    tracker.delete_run_files(run_id)
    try:
        tracker.set_run_tags(run_id, {"gpt2reg.error": KILLED_NOTE})
        tracker.finish_run(run_id, status="KILLED")
    except MlflowException:  # deleted meanwhile: nothing left to end
        pass


def _lease_note(tags: dict | None) -> str:
    lease_tag = (tags or {}).get(LEASE_TAG)
    return f" (lease {lease_tag})" if lease_tag else ""


def _lease_is_live(home, lease_tag: str | None, runs: dict, run_is_live: Callable[[str], bool]) -> bool:
    """A registered model's lease: its file on this machine, else the heartbeat of the run that made it."""
    if not lease_tag:
        return False
    if leases.is_live(home, lease_tag):
        return True
    return any(run_is_live(run_id) for run_id, run in runs.items() if run.data.tags.get(LEASE_TAG) == lease_tag)


def _any_live_lease(home) -> bool:
    folder = leases.leases_folder(home)
    return folder.is_dir() and any(leases.held(path) for path in folder.iterdir()
                                   if leases.LEASE_ID.fullmatch(path.name) or path.name.endswith(".new"))


def _logged_model_exists(tracker, model_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        tracker.client.get_logged_model(model_id)
        return True
    except MlflowException:
        return False


def _run_is_active(tracker, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return tracker.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def _run_artifact_folders(artifact_root: Path, experiment_id: str) -> list[Path]:
    """The folders MLflow made for runs of this home: `<artifact root>/<run id>` (the home's experiment
    keeps its artifacts at the artifact root), or `<artifact root>/<experiment>/<run id>`."""
    found = []
    for parent in (artifact_root, artifact_root / str(experiment_id)):
        if parent.is_dir():
            found += [p for p in parent.iterdir() if p.is_dir() and RUN_ID.fullmatch(p.name)]
    return sorted(found)


def _logged_model_folders(artifact_root: Path) -> list[Path]:
    """`<artifact root>/models/<model id>`: the files of the home's MLflow logged models."""
    models = artifact_root / "models"
    if not models.is_dir():
        return []
    return sorted(p for p in models.iterdir() if p.is_dir() and LOGGED_MODEL_ID.fullmatch(p.name))
