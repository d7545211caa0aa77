"""The lineage store: variants and the derivations between them, in SQL."""

from __future__ import annotations

import builtins
import json
import math
import os
import random
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, and_, create_engine, delete, event, func, literal, or_, select, text, union
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, joinedload, sessionmaker

from registry.errors import NotFoundError, RegistryError, UsageError
from registry.lineage.entities import LineageEdge, LineageVariant
from registry.lineage.models import KINDS, OPERATION_NAME, OPERATIONS, Edge, Variant
# A database already at SCHEMA_HEAD is opened without importing Alembic (a third of a second).
from registry.lineage.reads import SCHEMA_HEAD

MIGRATIONS_DIR = os.path.join(os.path.dirname(__file__), "migrations")

# Read by the SQLite "begin" listener; an execution option rather than a global
# so that threads sharing one store cannot see each other's mode.
_WRITE_OPTION = "lineage_write"

# Arbitrary but fixed: every gpt2-registry process must contend on the same keys.
_PG_MIGRATION_LOCK = 0x67707432_6C696E
_PG_WRITE_LOCK = 0x67707432_6C7772

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ID_BATCH = 5000  # ids per IN (...) list
_REF_BATCH = 200  # (name, version) pairs per OR-ed query

Parent = tuple[str, str, Mapping[str, Any], Mapping[str, float]]


class LineageStore:
    """Variants and their parent -> child edges, in SQLite or Postgres.

    Opening the store brings the schema to the newest migration. Every method
    takes and returns frozen entities; ORM rows stay inside.

    >>> import tempfile
    >>> tmp = tempfile.mkdtemp()
    >>> with LineageStore(f"sqlite:///{tmp}/lineage.db") as store:
    ...     common = dict(kind="full", config={"n_layer": 12}, parameters=124_439_808,
    ...                   size_bytes=497_759_232, content_hash="0" * 64, run_id=None,
    ...                   artifact_uri=None, metrics={}, tags={})
    ...     base = store.add_variant(name="gpt2", version=1, operation="import", **common)
    ...     tuned = store.add_variant(name="gpt2-chat", version=1, operation="finetune",
    ...                               parents=[(base.ref, "parent", {"lr": 3e-5}, {})], **common)
    ...     [edge.parent_ref for edge in store.parents("gpt2-chat", 1)]
    ['gpt2/1']
    """

    def __init__(self, url: str) -> None:
        from registry.home import shown_url, with_installed_driver

        try:
            parsed = make_url(with_installed_driver(url))
            self._is_sqlite = parsed.get_backend_name() == "sqlite"
            if self._is_sqlite:
                _ensure_sqlite_parent_dir(parsed.database)
                engine = create_engine(parsed)
            else:
                # pool_pre_ping: a long-lived store outlives a restart of the database server.
                engine = create_engine(parsed, pool_pre_ping=True, **_connect_options(parsed))
        except ArgumentError as exc:
            raise UsageError(f"bad lineage database URL {shown_url(url)!r}: {exc}") from exc
        except ModuleNotFoundError as exc:  # the URL names a driver that is not installed
            raise UsageError(f"the lineage database URL {shown_url(url)!r} needs the {exc.name} module: pip install it, "
                             "or for PostgreSQL pip install 'gpt2-registry[postgres]'") from None
        self._display_url = parsed.render_as_string(hide_password=True)
        if self._is_sqlite:
            _configure_sqlite(engine)
        elif parsed.get_backend_name() == "postgresql":
            _configure_postgresql(engine)
        self._engine: Engine = engine
        self._read_sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )
        try:
            self._migrate()
        except BaseException:
            engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"LineageStore({self._display_url!r})"

    def __enter__(self) -> LineageStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    # -- transactions -----------------------------------------------------

    @contextmanager
    def session_scope(self, write: bool = False) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any error.

        `write=True` takes SQLite's write lock up front (BEGIN IMMEDIATE) so a
        read-then-write cannot be invalidated by another process's commit.
        """
        factory = self._write_sessions if write else self._read_sessions
        with self._translate_errors(), factory() as session, session.begin():
            yield session

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError as exc:
            raise UsageError(f"lineage store rejected the change: {exc.orig}") from exc
        except DBAPIError as exc:  # OperationalError; on PostgreSQL also ProgrammingError (a missing table)
            raise RegistryError(
                f"lineage database {self._display_url} failed: {_first_line(exc.orig)}; "
                "check that it exists, is writable and is not held by a stuck process"
            ) from exc

    # -- migrations -------------------------------------------------------

    def _migrate(self) -> None:
        with self._translate_errors(), self._first_connection() as conn:
            if self._stamped_revisions(conn) == {SCHEMA_HEAD}:
                return  # the common case: up to date, read without the write lock or Alembic
        from alembic import command
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", MIGRATIONS_DIR)
        script = ScriptDirectory.from_config(config)
        head = script.get_current_head()
        known = {rev.revision for rev in script.walk_revisions()}

        with self._translate_errors():
            with self._first_connection() as conn:
                current = self._schema_heads(conn, known)  # refuses a database newer than this code
            if current == {head}:
                return

            write_engine = self._engine.execution_options(**{_WRITE_OPTION: True})
            with write_engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
                # Re-read under the lock: another process may have migrated
                # while we waited for it.
                current = self._schema_heads(conn, known)
                if current != {head}:
                    config.attributes["connection"] = conn
                    command.upgrade(config, "head")
                conn.commit()

    @contextmanager
    def _first_connection(self) -> Iterator[Connection]:
        """A connection, or one line saying why a database server refused it."""
        try:
            conn = self._engine.connect()
        except OperationalError as exc:
            if self._is_sqlite:
                raise  # a file: _translate_errors names it
            from registry.home import connection_problem

            raise UsageError(connection_problem(self._display_url, exc, "--lineage-url")) from None
        with conn:
            yield conn

    @staticmethod
    def _stamped_revisions(conn: Connection) -> set[str]:
        """The revisions in Alembic's version table; empty when there is none (a new database)."""
        try:
            return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
        except DBAPIError:  # no such table; the connection is closed (rolled back) after this
            return set()

    def _schema_heads(self, conn: Connection, known: set[str]) -> set[str]:
        from alembic.runtime.migration import MigrationContext

        current = set(MigrationContext.configure(conn).get_current_heads())
        unknown = sorted(current - known)
        if unknown:
            raise RegistryError(
                f"lineage database {self._display_url} at revision {', '.join(unknown)} "
                "is newer than this gpt2-registry; upgrade gpt2-registry"
            )
        return current

    # -- writes -----------------------------------------------------------

    def add_variant(
        self,
        *,
        name: str,
        version: int | None,
        kind: str,
        operation: str,
        config: Mapping[str, Any],
        parameters: int,
        size_bytes: int,
        content_hash: str,
        run_id: str | None,
        artifact_uri: str | None,
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        parents: Sequence[Parent] = (),
    ) -> LineageVariant:
        """Register NAME/VERSION and one edge per parent, all or nothing.

        ``version=None`` takes max(version) + 1, read and inserted in the same
        write transaction so that concurrent writers never pick the same number.
        """
        fields = _variant_fields(
            kind=kind,
            operation=operation,
            config=config,
            parameters=parameters,
            size_bytes=size_bytes,
            content_hash=content_hash,
            run_id=run_id,
            artifact_uri=artifact_uri,
            metrics=metrics,
            tags=tags,
        )
        _check_name(name)
        if version is not None:
            _check_version(version)
        edges = _edge_fields(parents)
        with self.session_scope(write=True) as session:
            if version is None:
                # The write transaction holds the store's write lock (see _on_begin), so
                # no other writer can take the same max between this read and the insert.
                current = session.scalar(select(func.max(Variant.version)).where(Variant.name == name))
                version = (current or 0) + 1
            return _insert(session, name, version, fields, edges)

    def update_metrics(self, name: str, version: int, metrics: Mapping[str, float]) -> LineageVariant:
        """Merge `metrics` into the variant and put their changes on the edges around it.

        An edge gets ``child - parent`` for every one of these metrics that both
        ends hold, whichever of the two was evaluated first; other deltas stay.
        """
        clean = _float_dict("metrics", metrics)
        with self.session_scope(write=True) as session:
            row = _require(session, name, version)
            # A new dict, not an in-place update: plain JSON columns do not
            # track mutation, so the change would be silently dropped.
            row.metrics = {**row.metrics, **clean}
            around = session.scalars(
                select(Edge).where((Edge.child_id == row.id) | (Edge.parent_id == row.id))
                .options(joinedload(Edge.parent), joinedload(Edge.child))
            )
            for edge in around:
                child, parent = edge.child.metrics, edge.parent.metrics
                deltas = {key: child[key] - parent[key] for key in clean if key in child and key in parent}
                if deltas:
                    edge.metric_deltas = {**edge.metric_deltas, **deltas}
            session.flush()
            return row.to_entity()

    def delete_variant(self, name: str, version: int) -> None:
        """Delete the variant; its edges go with it (ON DELETE CASCADE)."""
        with self.session_scope(write=True) as session:
            row_id = _require(session, name, version).id
            session.execute(delete(Variant).where(Variant.id == row_id))

    def relocate_artifacts(self, old_prefix: str, new_prefix: str) -> int:
        """Point every artifact URI that is `old_prefix`, or lies under it, at the same place under
        `new_prefix` (a home moved or copied elsewhere); returns how many variants changed. For
        example `relocate_artifacts("file:///old/home/artifacts", "file:///new/home/artifacts")`.
        """
        from sqlalchemy import literal, or_, update

        uri = Variant.artifact_uri
        with self.session_scope(write=True) as session:
            moved = session.execute(
                update(Variant)
                # The prefix and a "/", never a sibling folder that merely starts with the same name.
                .where(or_(uri == old_prefix, uri.startswith(old_prefix + "/", autoescape=True)))
                .values(artifact_uri=literal(new_prefix) + func.substr(uri, len(old_prefix) + 1))
                .execution_options(synchronize_session=False)
            )
            return moved.rowcount

    # -- reads ------------------------------------------------------------

    def get(self, name: str, version: int) -> LineageVariant | None:
        with self.session_scope() as session:
            row = _find(session, name, version)
            return None if row is None else row.to_entity()

    def latest(self, name: str) -> LineageVariant | None:
        """The highest version of NAME, or None if NAME has none."""
        with self.session_scope() as session:
            row = session.scalar(
                select(Variant).where(Variant.name == name).order_by(Variant.version.desc()).limit(1)
            )
            return None if row is None else row.to_entity()

    def list(self, name: str | None = None) -> builtins.list[LineageVariant]:
        """All variants, or all versions of NAME, ordered by name then version."""
        query = select(*Variant.__table__.columns).order_by(Variant.name, Variant.version)
        if name is not None:
            query = query.where(Variant.name == name)
        with self.session_scope() as session:
            return _entities(session, query)

    def names(self) -> builtins.list[str]:
        with self.session_scope() as session:
            return builtins.list(
                session.scalars(select(Variant.name).distinct().order_by(Variant.name))
            )

    def parents(self, name: str, version: int) -> builtins.list[LineageEdge]:
        """Edges into NAME/VERSION, oldest first."""
        with self.session_scope() as session:
            row_id = _require(session, name, version).id
            return _edges(session, Edge.child_id == row_id)

    def parent_refs(self, variant_ids: Iterable[int] | None = None) -> dict[int, builtins.list[str]]:
        """The parents' refs of each variant (by id), oldest edge first, in one query per batch.

        ``None`` reads every variant's parents at once (what a listing of the whole store needs);
        a variant without parents is absent from the result.
        """
        parent = aliased(Variant)
        query = (
            select(Edge.child_id, parent.name, parent.version)
            .join(parent, parent.id == Edge.parent_id)
            .order_by(Edge.child_id, Edge.id)
        )
        out: dict[int, builtins.list[str]] = {}
        with self.session_scope() as session:
            if variant_ids is None:
                batches = [session.execute(query)]
            else:
                ids = builtins.list(dict.fromkeys(variant_ids))
                # Batches stay under the bound-parameter limits of SQLite and the drivers.
                batches = (session.execute(query.where(Edge.child_id.in_(ids[start:start + _ID_BATCH])))
                           for start in range(0, len(ids), _ID_BATCH))
            for batch in batches:
                for child_id, name, version in batch:
                    out.setdefault(child_id, []).append(f"{name}/{version}")
        return out

    def children(self, name: str, version: int, *, newest: int | None = None) -> builtins.list[LineageEdge]:
        """Edges out of NAME/VERSION, oldest first; with ``newest=N`` only the N newest."""
        with self.session_scope() as session:
            row_id = _require(session, name, version).id
            if newest is None:
                return _edges(session, Edge.parent_id == row_id)
            last = select(Edge.id).where(Edge.parent_id == row_id).order_by(Edge.id.desc()).limit(newest)
            return _edges(session, Edge.id.in_(last))

    def child_count(self, name: str, version: int) -> int:
        """How many edges go out of NAME/VERSION."""
        with self.session_scope() as session:
            row_id = _require(session, name, version).id
            return session.scalar(select(func.count()).select_from(Edge).where(Edge.parent_id == row_id)) or 0

    def variants(self, refs: Iterable[str]) -> dict[str, LineageVariant]:
        """The variants of these refs, by ref, in one query per batch; a ref not in the store is absent.

        For a few dozen refs at once (the children a lineage picture shows), where one `get`
        each would cost a session and a query apiece.
        """
        keys = builtins.list(dict.fromkeys(parse_ref(ref) for ref in refs))
        out: dict[str, LineageVariant] = {}
        with self.session_scope() as session:
            for start in range(0, len(keys), _REF_BATCH):
                # One (name, version) test per ref, OR-ed: SQLite answers each from the unique index,
                # where a row-value IN list would scan the whole table.
                wanted = or_(*(and_(Variant.name == name, Variant.version == version)
                               for name, version in keys[start:start + _REF_BATCH]))
                query = select(*Variant.__table__.columns).where(wanted)
                out.update((row.ref, row) for row in _entities(session, query))
        return out

    def graph(
        self, name: str, version: int, *, descendants: bool = True, generations: int | None = None
    ) -> tuple[builtins.list[LineageVariant], builtins.list[LineageEdge]]:
        """NAME/VERSION with all its ancestors and descendants, and the edges among them.

        Siblings and co-parents are left out unless they are also ancestors or
        descendants; ``descendants=False`` leaves the descendants out too;
        ``generations=N`` keeps those at most N edges away. Both lists are in
        insertion (id) order.
        """
        with self.session_scope() as session:
            root_id = _require(session, name, version).id
            # The family as a subquery rather than a list of ids: a family can be the whole store,
            # more ids than SQLite takes as parameters.
            walks = [select(literal(root_id).label("id")),
                     select(_reachable(root_id, upward=True, generations=generations).c.id)]
            if descendants:
                walks.append(select(_reachable(root_id, upward=False, generations=generations).c.id))
            family = union(*walks)
            nodes = _entities(session, select(*Variant.__table__.columns)
                              .where(Variant.id.in_(family)).order_by(Variant.id))
            # The edges into the family, less those from a parent outside it (a distillation's other parent):
            # SQLite would walk the family again for every edge if both ends were tested in SQL.
            inside = {node.ref for node in nodes}
            links = [edge for edge in _edges(session, Edge.child_id.in_(family)) if edge.parent_ref in inside]
            return nodes, links


# -- engine setup ---------------------------------------------------------


def _ensure_sqlite_parent_dir(database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    parent = os.path.dirname(os.path.abspath(database))
    os.makedirs(parent, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite would otherwise emit its own deferred BEGIN, and only before
        # the first INSERT: a read-then-write would read outside the transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching a fresh file to WAL needs a lock
            # that another opener may hold.
            cursor.execute("PRAGMA busy_timeout=30000")
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A deferred BEGIN that later writes fails with SQLITE_BUSY without
        # waiting when another writer got there first (measured: 71 of 800
        # writes kept under 8 processes); IMMEDIATE queues on busy_timeout.
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def _connect_options(url: Any) -> dict[str, Any]:
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg2", "psycopg"):
        # Without it a server that drops packets keeps the command waiting for minutes.
        return {"connect_args": {"connect_timeout": 10}}
    return {}


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # PostgreSQL's equivalent of SQLite's BEGIN IMMEDIATE: write transactions take one
        # lock, held to commit, so a read-then-write (the next version, metric deltas read
        # from both ends of an edge) cannot be overtaken by another writer. Under READ
        # COMMITTED alone, two writers would both read the same max(version) or both
        # merge metrics into the same old value. Lineage writes are few and short.
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_WRITE_LOCK})")


def _first_line(error: BaseException | None) -> str:
    # psycopg2's messages run over several lines (a DETAIL, a HINT); the CLI prints one.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _switch_to_wal(cursor: Any, timeout: float = 30.0) -> None:
    """Put the database file in WAL mode, waiting out other openers.

    The switch needs an exclusive lock. When two connections opening a fresh
    file both hold a shared lock and both ask for it, SQLite refuses one at
    once instead of calling the busy handler (deadlock avoidance), so
    busy_timeout alone does not cover it: retry with a short jittered pause.
    WAL is a property of the file, so the loser usually finds it already set.
    """
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause * (1 + random.random()))
        pause = min(pause * 2, 0.2)


# -- validation -----------------------------------------------------------


def parse_ref(ref: str) -> tuple[str, int]:
    """Split "NAME/VERSION" into (NAME, VERSION); NAME may itself contain "/"."""
    name, sep, version = ref.rpartition("/") if isinstance(ref, str) else ("", "", "")
    if not sep or not name or not version.isdigit() or int(version) < 1:
        raise UsageError(f"bad variant reference {ref!r}: expected NAME/VERSION, e.g. gpt2/1")
    return name, int(version)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise UsageError(f"bad variant name {name!r}: use a non-empty name without surrounding spaces")


def _check_version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UsageError(f"bad version {version!r}: versions are integers from 1")


def _check_count(label: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"bad {label} {value!r}: expected a non-negative integer")
    return value


def _json_dict(label: str, value: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise UsageError(f"bad {label}: expected a mapping with string keys")
    try:
        # Round trip so the caller's later mutations cannot reach the row, and
        # so non-JSON values fail here rather than at flush time.
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad {label}: not JSON-serializable ({exc})") from exc


def _float_dict(label: str, value: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise UsageError(f"bad {label}: expected a mapping of name to number")
    out: dict[str, float] = {}
    for key, number in value.items():
        if not isinstance(key, str) or isinstance(number, bool) or not isinstance(number, (int, float)):
            raise UsageError(f"bad {label} entry {key!r}: {number!r}; expected name -> number")
        # Postgres JSON rejects NaN/Infinity; refuse them on every backend alike.
        if not math.isfinite(number):
            raise UsageError(f"bad {label} entry {key!r}: {number!r} is not finite")
        out[key] = float(number)
    return out


def _str_dict(label: str, value: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise UsageError(f"bad {label}: expected a mapping of string to string")
    return dict(value)


def _optional_str(label: str, value: str | None) -> str | None:
    if value is not None and not isinstance(value, str):
        raise UsageError(f"bad {label} {value!r}: expected a string or None")
    return value


def _variant_fields(
    *,
    kind: str,
    operation: str,
    config: Mapping[str, Any],
    parameters: int,
    size_bytes: int,
    content_hash: str,
    run_id: str | None,
    artifact_uri: str | None,
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
) -> dict[str, Any]:
    if kind not in KINDS:
        raise UsageError(f"bad kind {kind!r}: use one of {', '.join(KINDS)}")
    if not isinstance(operation, str) or not OPERATION_NAME.fullmatch(operation):
        raise UsageError(f"bad operation {operation!r}: a lowercase name of up to 16 letters, digits, '-' or '_' "
                         f"(built-in: {', '.join(OPERATIONS)})")
    if not isinstance(content_hash, str) or not _SHA256_HEX.fullmatch(content_hash):
        raise UsageError(f"bad content hash {content_hash!r}: expected 64 lowercase hex digits (sha256)")
    return dict(
        kind=kind,
        operation=operation,
        config=_json_dict("config", config),
        parameters=_check_count("parameters", parameters),
        size_bytes=_check_count("size_bytes", size_bytes),
        content_hash=content_hash,
        run_id=_optional_str("run_id", run_id),
        artifact_uri=_optional_str("artifact_uri", artifact_uri),
        metrics=_float_dict("metrics", metrics),
        tags=_str_dict("tags", tags),
    )


def _edge_fields(parents: Sequence[Parent]) -> builtins.list[tuple[str, int, dict[str, Any]]]:
    out = []
    seen: set[tuple[str, int]] = set()
    for parent in parents:
        if not isinstance(parent, (tuple, builtins.list)) or len(parent) != 4:
            raise UsageError(
                f"bad parent {parent!r}: expected (NAME/VERSION, role, settings, metric_deltas)"
            )
        ref, role, settings, deltas = parent
        key = parse_ref(ref)
        if key in seen:
            raise UsageError(f"parent {ref} is listed twice")
        seen.add(key)
        if not isinstance(role, str) or not role.strip():
            raise UsageError(f"bad role {role!r} for parent {ref}: e.g. parent, teacher, base")
        out.append(
            (
                key[0],
                key[1],
                dict(
                    role=role,
                    settings=_json_dict(f"settings of parent {ref}", settings),
                    metric_deltas=_float_dict(f"metric_deltas of parent {ref}", deltas),
                ),
            )
        )
    return out


# -- queries (inside a session) -------------------------------------------


def _find(session: Session, name: str, version: int) -> Variant | None:
    return session.scalar(select(Variant).where(Variant.name == name, Variant.version == version))


def _require(session: Session, name: str, version: int) -> Variant:
    row = _find(session, name, version)
    if row is None:
        raise NotFoundError(f"variant {name}/{version} not found in the lineage store")
    return row


def _insert(
    session: Session,
    name: str,
    version: int,
    fields: dict[str, Any],
    edges: builtins.list[tuple[str, int, dict[str, Any]]],
) -> LineageVariant:
    # Checked here rather than left to the unique constraint, for a message
    # that names the variant; the constraint still guards other writers.
    if _find(session, name, version) is not None:
        raise UsageError(f"variant {name}/{version} already exists; register a new version")
    parent_ids = []
    for parent_name, parent_version, _ in edges:
        parent = _find(session, parent_name, parent_version)
        if parent is None:
            raise NotFoundError(
                f"parent variant {parent_name}/{parent_version} not found; register it first"
            )
        parent_ids.append(parent.id)
    row = Variant(name=name, version=version, **fields)
    session.add(row)
    session.flush()
    for parent_id, (_, _, edge) in zip(parent_ids, edges):
        session.add(Edge(parent_id=parent_id, child_id=row.id, operation=row.operation, **edge))
    session.flush()
    return row.to_entity()


def _entities(session: Session, query: Any) -> builtins.list[LineageVariant]:
    """The variants a query of the table's columns selects, without building ORM objects.

    A listing of thousands of variants spends most of its time building and copying ORM
    rows; here each JSON column is decoded once, into dicts that no session holds, so the
    entities need no defensive copies.
    """
    return [LineageVariant(**row._mapping) for row in session.connection().execute(query)]


def _edges(session: Session, *where: Any) -> builtins.list[LineageEdge]:
    """The edges `where` selects, oldest first, with their ends' refs, read as plain rows."""
    parent, child = aliased(Variant), aliased(Variant)
    query = (
        select(parent.name, parent.version, child.name, child.version,
               Edge.operation, Edge.role, Edge.settings, Edge.metric_deltas)
        .join(parent, parent.id == Edge.parent_id)
        .join(child, child.id == Edge.child_id)
        .where(*where)
        .order_by(Edge.id)
    )
    return [
        LineageEdge(parent_ref=f"{parent_name}/{parent_version}", child_ref=f"{child_name}/{child_version}",
                    operation=operation, role=role, settings=settings, metric_deltas=deltas)
        for parent_name, parent_version, child_name, child_version, operation, role, settings, deltas
        in session.connection().execute(query)
    ]


def _reachable(start: int, *, upward: bool, generations: int | None = None) -> Any:
    """A recursive CTE of the ids of the ancestors (upward) or descendants of `start`: all of
    them, or those at most `generations` edges away."""
    near, far = (Edge.child_id, Edge.parent_id) if upward else (Edge.parent_id, Edge.child_id)
    name = "ancestors" if upward else "descendants"
    # UNION, not UNION ALL: it drops repeats, so diamonds stay cheap and even
    # a cycle (which add_variant cannot create) would terminate.
    if generations is None:
        walk = select(far.label("id")).where(near == start).cte(name, recursive=True)
        return walk.union(select(far).join(walk, near == walk.c.id))
    walk = select(far.label("id"), literal(1).label("depth")).where(near == start).cte(name, recursive=True)
    return walk.union(select(far, walk.c.depth + 1).join(walk, near == walk.c.id).where(walk.c.depth < generations))
