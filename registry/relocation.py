"""A home that was moved, copied or restored elsewhere: its stored locations follow it.

MLflow records absolute artifact locations (the experiment's artifact location,
each run's artifact URI, each model version's source and storage location, each
logged model's artifact location), and the lineage store keeps each variant's
artifact URI. A home opened from a new place would read, or fail to find, the
files of its old place. Opening a local home (both stores its own SQLite files)
compares the location MLflow recorded for the home's experiment with the home's
artifact root (one query) and, when they differ, rewrites every stored location
under the old artifact root to the same place under the new one, under the
home's lock, so that processes opening a copy at once rewrite it once.

Only the copy's own database files are written: the original home, when it is
still there, keeps its locations and keeps working from its own place. Nothing
else a home keeps names its place: a variant's pyfunc model names its files
relative to its own folder, and the runtime graphs in `runtimes/` read weight
files beside them, by name.

Example:
    >>> from registry.home import Home
    >>> from registry.relocation import moved_from, relocate
    >>> home = Home.resolve("restored-registry")
    >>> moved_from(home)  # where the stores say the artifacts are, when that is elsewhere
    'file:///old/place/mlruns/artifacts'
    >>> relocate(home)["rewritten"]["runs.artifact_uri"]
    12
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from registry.errors import UsageError
from registry.home import Home
from registry.tracking import EXPERIMENT, local_path

if TYPE_CHECKING:
    from registry.lineage import LineageStore

# The MLflow columns that hold absolute artifact locations (those of this MLflow's schema are rewritten).
MLFLOW_LOCATIONS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
_BUSY_TIMEOUT_S = 30.0


def relocatable(home: Home) -> bool:
    """Whether both stores are the home's own SQLite files: only then is their place the home's place
    (a database or tracking server, or a SQLite file named with --tracking-uri, may be shared by
    homes in other places, and each would rewrite it back to its own)."""
    return (home.tracking_uri == f"sqlite:///{home.path / 'mlflow.db'}"
            and home.lineage_url == f"sqlite:///{home.path / 'lineage.db'}")


def moved_from(home: Home) -> str | None:
    """The artifact location MLflow recorded for the home's experiment when it names another place
    than the home's artifact root (the home was moved or copied there); None when it names this
    one, when the home has no experiment yet, or when its stores are not the home's own files.

    An old location that is the same folder by another path (a symbolic link, another mount of
    the same disk) is no move: its files read as they are.
    """
    database = home.path / "mlflow.db"
    if not relocatable(home) or not database.is_file():
        return None
    try:
        connection = sqlite3.connect(database, timeout=_BUSY_TIMEOUT_S)
        try:
            row = connection.execute("SELECT artifact_location FROM experiments WHERE name = ?",
                                     (EXPERIMENT,)).fetchone()
        finally:
            connection.close()
    except sqlite3.Error:  # no experiments table yet: a store MLflow has not set up
        return None
    recorded = row[0] if row else None
    if not recorded or recorded == home.artifact_root.as_uri():
        return None
    old_root = local_path(recorded)
    if old_root is None:
        return None  # a remote artifact store: it has no place on this machine to follow
    try:
        if old_root.exists() and os.path.samefile(old_root, home.artifact_root):
            return None
    except OSError:
        pass
    return recorded


def moved_home_problem(home: Home) -> dict | None:
    """`gpt2reg doctor`'s entry for a moved home, or None when the home is where its stores say."""
    recorded = moved_from(home)
    if recorded is None:
        return None
    return {"kind": "moved-home", "repaired": False,
            "detail": f"the stores name the artifact store {_shown(recorded)}, but this home's is "
                      f"{home.artifact_root}: the home was moved or copied; run `gpt2reg doctor --relocate` "
                      "(any other command that opens it relocates it too)"}


def follow_move(home: Home, lineage: LineageStore | None = None) -> dict | None:
    """Relocate the home when it was moved (see `relocate`); the cheap check alone otherwise.

    `lineage`: the home's lineage store when it is open already (else one is opened for the rewrite).
    """
    report = relocate(home, lineage)
    if report is not None:
        logging.getLogger(__name__).warning(
            "note: this registry was moved or copied from %s; its stored locations now name %s",
            report["from"], report["to"])
    return report


def relocate(home: Home, lineage: LineageStore | None = None) -> dict | None:
    """Rewrite every location the stores keep under the old artifact root to the home's own; None
    when the home is where its stores say (or another process relocated it while this one waited).

    Returns `{"from": old artifact root, "to": new artifact root, "rewritten": {"table.column": rows}}`.
    The lineage rows are rewritten first and MLflow's last, in one transaction with the experiment's
    own location in it: an interrupted relocation is still seen as a move, and done again.
    """
    recorded = moved_from(home)
    if recorded is None:
        return None
    try:
        with home.lock():
            recorded = moved_from(home)  # again, under the lock: another process may have done it
            if recorded is None:
                return None
            new_root = home.artifact_root.as_uri()
            old_path, new_path = str(local_path(recorded)), str(home.artifact_root)
            # Each location is stored as MLflow was given it: a file:// URI, or a plain path.
            prefixes = [(recorded, new_root)] + ([(old_path, new_path)] if old_path != recorded else [])
            rewritten = {"lineage.variants.artifact_uri": _rewrite_lineage(home, lineage, prefixes)}
            rewritten.update(_rewrite_mlflow(home.path / "mlflow.db", prefixes))
    except (sqlite3.OperationalError, PermissionError) as error:
        if isinstance(error, sqlite3.OperationalError) and "readonly" not in str(error).replace(" ", ""):
            raise
        raise UsageError(f"the registry at {home.path} was moved or copied from {_shown(recorded)}, and its "
                         f"stored locations cannot be rewritten ({error}); make its folder and databases "
                         "writable, or open the original from its old place") from None
    return {"from": _shown(recorded), "to": str(home.artifact_root), "rewritten": rewritten}


def _rewrite_lineage(home: Home, lineage: LineageStore | None, prefixes: list[tuple[str, str]]) -> int:
    from registry.lineage import LineageStore

    store = lineage if lineage is not None else LineageStore(home.lineage_url)
    try:
        return sum(store.relocate_artifacts(old, new) for old, new in prefixes)
    finally:
        if lineage is None:
            store.close()


def _rewrite_mlflow(database: Path, prefixes: list[tuple[str, str]]) -> dict[str, int]:
    """Every MLflow location under an old prefix, moved under the new one: one write transaction."""
    connection = sqlite3.connect(database, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        connection.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
        # IMMEDIATE: the write lock before the first read, so no other writer commits in between.
        connection.execute("BEGIN IMMEDIATE")
        try:
            counts = {}
            for table, column in MLFLOW_LOCATIONS:
                columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    continue  # a column an older or newer MLflow does not have
                changed = 0
                for old, new in prefixes:
                    # The prefix itself, or the prefix and a "/": never a sibling folder such as artifacts-old.
                    changed += connection.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                        (new, len(old) + 1, old, len(old) + 1, old + "/"),
                    ).rowcount
                counts[f"{table}.{column}"] = changed
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    finally:
        connection.close()
    return counts


def _shown(location: str) -> str:
    path = local_path(location)
    return str(path) if path is not None else location
