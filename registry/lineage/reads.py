"""The lineage store's reads on a local SQLite file, with Python's own sqlite3 module.

`gpt2reg list`, `show` and `lineage` only read. Through `LineageStore` each of
them would import SQLAlchemy first, about 0.16 s of CPU before the first query
(a third of such a command on a small home), and build every row through its
result machinery (a fifth of a second more for 10,000 variants). A
`SqliteLineageReader` answers the same read methods with the same entities from
the same file, importing nothing beyond the standard library.

It reads only a database already at the schema this code knows
(`SCHEMA_HEAD`); `local_reader` returns None otherwise, and the caller opens
`LineageStore`, which migrates it. It never writes. Each method reads in one
transaction of its own connection, so a method that runs several queries sees
one state of the store while writers go on (WAL).

`tests/registry/test_lineage_reads.py` holds it to `LineageStore`'s answers,
method by method, on one store.

Example:
    >>> reader = local_reader("sqlite:///mlruns/lineage.db")
    >>> [variant.ref for variant in reader.list("quickstart")]
    ['quickstart/1']
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from registry.errors import NotFoundError, RegistryError
from registry.lineage.entities import LineageEdge, LineageVariant

# The newest migration's revision (migrations/versions/). A database already there is opened without
# importing Alembic or SQLAlchemy; tests/registry/test_lineage_store.py keeps it true.
SCHEMA_HEAD = "0003"

_VARIANT_COLUMNS = ("id, name, version, kind, operation, config, parameters, size_bytes, content_hash, "
                    "run_id, artifact_uri, metrics, tags, created_at")
_EDGE_SELECT = ("SELECT p.name, p.version, c.name, c.version, e.operation, e.role, e.settings, e.metric_deltas "
                "FROM edges e JOIN variants p ON p.id = e.parent_id JOIN variants c ON c.id = e.child_id ")
_ID_BATCH = 5000  # ids per IN (...) list, under SQLite's bound-parameter limit
_BUSY_TIMEOUT_S = 30.0
_SQLITE_PREFIX = "sqlite:///"


def local_reader(lineage_url: str) -> SqliteLineageReader | None:
    """A reader of the SQLite file `lineage_url` names, or None where `LineageStore` must open it: another
    database, a URL with options, a file not there yet, or a schema older or newer than this code's."""
    if not lineage_url.startswith(_SQLITE_PREFIX):
        return None
    database = lineage_url[len(_SQLITE_PREFIX):]
    if not database or "?" in database or database.startswith(":memory:") or database.startswith("file:"):
        return None
    path = Path(database)
    if not path.is_file():
        return None
    try:
        connection = _connect(path)
        try:
            revisions = {row[0] for row in connection.execute("SELECT version_num FROM alembic_version")}
        finally:
            connection.close()
    except sqlite3.Error:  # not a database, no version table, locked past the timeout: the store says why
        return None
    return SqliteLineageReader(path) if revisions == {SCHEMA_HEAD} else None


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; each method opens its own (see _reading).
    return sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)


class SqliteLineageReader:
    """`LineageStore`'s read methods (`get`, `latest`, `list`, `names`, `parents`, `parent_refs`,
    `children`, `child_count`, `graph`) on a local SQLite lineage database; see the module."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"SqliteLineageReader({str(self.path)!r})"

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        # A connection per call: cheap (tens of microseconds), and safe from any thread the SDK is used in.
        try:
            connection = _connect(self.path)
            try:
                connection.execute("BEGIN")
                yield connection
            finally:
                connection.close()  # ends the read transaction
        except sqlite3.Error as error:
            raise RegistryError(f"lineage database {self.path} failed: {error}; check that it exists, is "
                                "readable and is not held by a stuck process") from error

    # -- reads, as LineageStore answers them ---------------------------------

    def get(self, name: str, version: int) -> LineageVariant | None:
        with self._reading() as db:
            rows = _variants(db, f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE name = ? AND version = ?",
                             (name, version))
        return rows[0] if rows else None

    def latest(self, name: str) -> LineageVariant | None:
        with self._reading() as db:
            rows = _variants(db, f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE name = ? "
                                 "ORDER BY version DESC LIMIT 1", (name,))
        return rows[0] if rows else None

    def list(self, name: str | None = None) -> builtins.list[LineageVariant]:
        """All variants, or all versions of NAME, ordered by name then version."""
        where, args = ("WHERE name = ? ", (name,)) if name is not None else ("", ())
        with self._reading() as db:
            return _variants(db, f"SELECT {_VARIANT_COLUMNS} FROM variants {where}ORDER BY name, version", args)

    def names(self) -> builtins.list[str]:
        with self._reading() as db:
            return [row[0] for row in db.execute("SELECT DISTINCT name FROM variants ORDER BY name")]

    def parents(self, name: str, version: int) -> builtins.list[LineageEdge]:
        """Edges into NAME/VERSION, oldest first."""
        with self._reading() as db:
            row_id = _require(db, name, version)
            return _edges(db, "WHERE e.child_id = ? ORDER BY e.id", (row_id,))

    def parent_refs(self, variant_ids: Iterable[int] | None = None) -> dict[int, builtins.list[str]]:
        """The parents' refs of each variant (by id), oldest edge first; `None` reads every variant's."""
        query = ("SELECT e.child_id, p.name, p.version FROM edges e JOIN variants p ON p.id = e.parent_id {where}"
                 "ORDER BY e.child_id, e.id")
        out: dict[int, builtins.list[str]] = {}
        with self._reading() as db:
            if variant_ids is None:
                batches = [db.execute(query.format(where=""))]
            else:
                ids = builtins.list(dict.fromkeys(variant_ids))
                batches = (db.execute(query.format(where=f"WHERE e.child_id IN ({', '.join('?' * len(batch))}) "),
                                      batch)
                           for batch in (ids[start:start + _ID_BATCH] for start in range(0, len(ids), _ID_BATCH)))
            for batch in batches:
                for child_id, name, version in batch:
                    out.setdefault(child_id, []).append(f"{name}/{version}")
        return out

    def children(self, name: str, version: int, *, newest: int | None = None) -> builtins.list[LineageEdge]:
        """Edges out of NAME/VERSION, oldest first; with ``newest=N`` only the N newest."""
        with self._reading() as db:
            row_id = _require(db, name, version)
            if newest is None:
                return _edges(db, "WHERE e.parent_id = ? ORDER BY e.id", (row_id,))
            return _edges(db, "WHERE e.id IN (SELECT id FROM edges WHERE parent_id = ? ORDER BY id DESC LIMIT ?) "
                              "ORDER BY e.id", (row_id, newest))

    def child_count(self, name: str, version: int) -> int:
        with self._reading() as db:
            row_id = _require(db, name, version)
            return db.execute("SELECT count(*) FROM edges WHERE parent_id = ?", (row_id,)).fetchone()[0]

    def graph(self, name: str, version: int, *, descendants: bool = True, generations: int | None = None
              ) -> tuple[builtins.list[LineageVariant], builtins.list[LineageEdge]]:
        """NAME/VERSION with its ancestors and (unless ``descendants=False``) descendants, all or those at most
        ``generations`` edges away, and the edges among them; both in insertion (id) order."""
        with self._reading() as db:
            root_id = _require(db, name, version)
            walks, args = ["SELECT ?"], [root_id]
            for upward in (True, False) if descendants else (True,):
                walk, walk_args = _reachable(root_id, upward=upward, generations=generations)
                walks.append(walk)
                args.extend(walk_args)
            # The family as a subquery, not a list of ids: a family can be the whole store.
            family = " UNION ".join(walks)
            nodes = _variants(db, f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE id IN ({family}) ORDER BY id",
                              args)
            # The edges into the family, less those from a parent outside it (a distillation's other parent).
            inside = {node.ref for node in nodes}
            links = [edge for edge in _edges(db, f"WHERE e.child_id IN ({family}) ORDER BY e.id", args)
                     if edge.parent_ref in inside]
        return nodes, links


def _reachable(start: int, *, upward: bool, generations: int | None) -> tuple[str, builtins.list[int]]:
    """A query of the ids of the ancestors (upward) or descendants of `start`, with its arguments."""
    near, far = ("child_id", "parent_id") if upward else ("parent_id", "child_id")
    # UNION, not UNION ALL: repeats are dropped, so diamonds stay cheap and even a cycle would end.
    if generations is None:
        return (f"SELECT id FROM (WITH RECURSIVE walk(id) AS (SELECT {far} FROM edges WHERE {near} = ? "
                f"UNION SELECT e.{far} FROM edges e JOIN walk ON e.{near} = walk.id) SELECT id FROM walk)",
                [start])
    return (f"SELECT id FROM (WITH RECURSIVE walk(id, depth) AS (SELECT {far}, 1 FROM edges WHERE {near} = ? "
            f"UNION SELECT e.{far}, walk.depth + 1 FROM edges e JOIN walk ON e.{near} = walk.id "
            f"WHERE walk.depth < ?) SELECT id FROM walk)", [start, generations])


def _require(db: sqlite3.Connection, name: str, version: int) -> int:
    row = db.execute("SELECT id FROM variants WHERE name = ? AND version = ?", (name, version)).fetchone()
    if row is None:
        raise NotFoundError(f"variant {name}/{version} not found in the lineage store")
    return row[0]


def _variants(db: sqlite3.Connection, query: str, args: Iterable) -> builtins.list[LineageVariant]:
    loads, repeated = json.loads, _RepeatedJson()
    return [
        LineageVariant(id=row_id, name=name, version=version, kind=kind, operation=operation,
                       config=repeated.loads(config), parameters=parameters, size_bytes=size_bytes,
                       content_hash=content_hash, run_id=run_id, artifact_uri=artifact_uri, metrics=loads(metrics),
                       tags=repeated.loads(tags), created_at=_utc(created_at))
        for (row_id, name, version, kind, operation, config, parameters, size_bytes, content_hash, run_id,
             artifact_uri, metrics, tags, created_at) in db.execute(query, builtins.list(args))
    ]


class _RepeatedJson:
    """json.loads for a column whose text repeats from row to row (a family's config, a capability's tags):
    each text is decoded once, and each row gets a copy of its own (a third of a listing's decoding)."""

    def __init__(self) -> None:
        self._flat: dict[str, dict] = {}

    def loads(self, text: str):
        flat = self._flat.get(text)
        if flat is not None:
            return dict(flat)
        value = json.loads(text)
        # Only an object of plain values is remembered: its copy then shares nothing with another row's.
        if isinstance(value, dict) and not any(isinstance(item, (dict, list)) for item in value.values()):
            self._flat[text] = value
            return dict(value)
        return value


def _edges(db: sqlite3.Connection, where: str, args: Iterable) -> builtins.list[LineageEdge]:
    loads = json.loads
    return [
        LineageEdge(parent_ref=f"{parent_name}/{parent_version}", child_ref=f"{child_name}/{child_version}",
                    operation=operation, role=role, settings=loads(settings), metric_deltas=loads(deltas))
        for parent_name, parent_version, child_name, child_version, operation, role, settings, deltas
        in db.execute(_EDGE_SELECT + where, builtins.list(args))
    ]


def _utc(stored: str | None) -> datetime | None:
    """A stored timestamp as `LineageStore` reads it: aware, in UTC (SQLite keeps no offset)."""
    if stored is None:
        return None
    value = datetime.fromisoformat(stored)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
