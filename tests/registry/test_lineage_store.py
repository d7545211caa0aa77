"""Lineage store: round trips, family graphs, atomicity, migrations, concurrency.

Tests that take a `url` (or a store opened on one) run on a SQLite file and on a
fresh database of a PostgreSQL server, the two kinds of lineage store a team uses.
"""

from __future__ import annotations

import doctest
import multiprocessing
import sqlite3
import traceback
from datetime import datetime, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from registry.errors import NotFoundError, RegistryError, UsageError
from registry.lineage import LineageEdge, LineageStore, LineageVariant
from registry.lineage import store as store_module
from registry.lineage.models import Base

HASH = "ab" * 32


def fields(**overrides):
    base = dict(
        kind="full",
        operation="create",
        config={"n_layer": 2, "n_head": 2, "n_embd": 64},
        parameters=1_000,
        size_bytes=4_000,
        content_hash=HASH,
        run_id=None,
        artifact_uri=None,
        metrics={},
        tags={},
    )
    base.update(overrides)
    return base


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", store_module.MIGRATIONS_DIR)
    return ScriptDirectory.from_config(config).get_current_head()


def db_url(path) -> str:
    return f"sqlite:///{path}"


def engine_for(url: str):
    from registry.home import with_installed_driver

    return create_engine(with_installed_driver(url))


def alembic_versions(url: str) -> list[str]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "lineage.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, db_path) -> str:
    """An empty lineage database: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return db_url(db_path)
    return request.getfixturevalue("postgres_url")  # the server starts only when a PostgreSQL case runs


@pytest.fixture
def store(url):
    with LineageStore(url) as opened:
        yield opened


@pytest.fixture
def family(store):
    """base -(finetune)-> chat -(lora)-> chat-lora -(merge)-> chat-merged;
    distilled has two parents: chat (teacher) and small (student_init)."""
    store.add_variant(name="base", version=1, **fields())
    store.add_variant(
        name="chat",
        version=1,
        **fields(operation="finetune", metrics={"val_loss": 3.1}),
        parents=[("base/1", "parent", {"lr": 3e-4, "steps": 10}, {"val_loss": -0.4})],
    )
    store.add_variant(
        name="chat-lora",
        version=1,
        **fields(kind="adapter", operation="lora"),
        parents=[("chat/1", "base", {"rank": 8}, {})],
    )
    store.add_variant(
        name="chat-merged",
        version=1,
        **fields(operation="merge"),
        parents=[("chat-lora/1", "parent", {}, {})],
    )
    store.add_variant(name="small", version=1, **fields())
    store.add_variant(
        name="distilled",
        version=1,
        **fields(operation="distill"),
        parents=[
            ("chat/1", "teacher", {"temperature": 2.0}, {}),
            ("small/1", "student_init", {}, {"val_loss": -0.1}),
        ],
    )
    return store


def test_round_trip(store):
    added = store.add_variant(
        name="gpt2",
        version=1,
        **fields(
            operation="import",
            config={"n_layer": 12, "nested": {"a": [1, 2]}},
            parameters=124_439_808,
            size_bytes=6_000_000_000,
            run_id="0123456789abcdef",
            artifact_uri="mlflow-artifacts:/1/abc/artifacts/model",
            metrics={"val_loss": 3, "ppl": 29.4},
            tags={"source": "hf"},
        ),
    )
    got = store.get("gpt2", 1)
    assert isinstance(got, LineageVariant)
    assert got == added
    assert got.ref == "gpt2/1"
    assert got.metrics == {"val_loss": 3.0, "ppl": 29.4}
    assert got.size_bytes == 6_000_000_000
    assert got.config == {"n_layer": 12, "nested": {"a": [1, 2]}}
    assert got.created_at.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - got.created_at).total_seconds()) < 60
    assert store.get("gpt2", 2) is None
    assert store.latest("gpt2") == got
    assert store.latest("nope") is None


def test_list_names_latest_update_delete(family):
    family.add_variant(name="chat", version=2, **fields(operation="finetune"))
    assert [v.ref for v in family.list("chat")] == ["chat/1", "chat/2"]
    assert [v.ref for v in family.list()][:3] == ["base/1", "chat/1", "chat/2"]
    assert family.names() == ["base", "chat", "chat-lora", "chat-merged", "distilled", "small"]
    assert family.latest("chat").version == 2

    updated = family.update_metrics("chat", 1, {"ppl": 12.5})
    assert updated.metrics == {"val_loss": 3.1, "ppl": 12.5}
    assert family.get("chat", 1).metrics == {"val_loss": 3.1, "ppl": 12.5}
    with pytest.raises(NotFoundError):
        family.update_metrics("chat", 9, {"ppl": 1.0})

    family.delete_variant("chat", 1)
    assert family.get("chat", 1) is None
    # Edges to and from chat/1 went with it.
    assert family.children("base", 1) == []
    assert [e.parent_ref for e in family.parents("distilled", 1)] == ["small/1"]
    with pytest.raises(NotFoundError):
        family.delete_variant("chat", 1)


def test_parents_and_children(family):
    assert family.parents("base", 1) == []
    assert family.parents("chat", 1) == [
        LineageEdge(
            parent_ref="base/1",
            child_ref="chat/1",
            operation="finetune",
            role="parent",
            settings={"lr": 3e-4, "steps": 10},
            metric_deltas={"val_loss": -0.4},
        )
    ]
    assert [(e.child_ref, e.operation, e.role) for e in family.children("chat", 1)] == [
        ("chat-lora/1", "lora", "base"),
        ("distilled/1", "distill", "teacher"),
    ]
    assert [(e.parent_ref, e.role) for e in family.parents("distilled", 1)] == [
        ("chat/1", "teacher"),
        ("small/1", "student_init"),
    ]
    with pytest.raises(NotFoundError):
        family.parents("ghost", 1)


def test_variants_reads_many_refs_at_once(family):
    found = family.variants(["chat-lora/1", "base/1", "chat-lora/1", "ghost/1", "chat/7"])
    assert set(found) == {"base/1", "chat-lora/1"}  # each once; refs not in the store are absent
    assert found["chat-lora/1"] == family.get("chat-lora", 1) and found["base/1"] == family.get("base", 1)
    assert family.variants([]) == {}
    with pytest.raises(UsageError):
        family.variants(["no-version"])


def test_graph(family):
    variants, edges = family.graph("chat-lora", 1)
    # Ancestors and descendants only: distilled and small are chat's other branch.
    assert [v.ref for v in variants] == ["base/1", "chat/1", "chat-lora/1", "chat-merged/1"]
    assert [(e.parent_ref, e.child_ref) for e in edges] == [
        ("base/1", "chat/1"),
        ("chat/1", "chat-lora/1"),
        ("chat-lora/1", "chat-merged/1"),
    ]

    variants, edges = family.graph("distilled", 1)
    assert [v.ref for v in variants] == ["base/1", "chat/1", "small/1", "distilled/1"]
    assert [(e.parent_ref, e.child_ref, e.role) for e in edges] == [
        ("base/1", "chat/1", "parent"),
        ("chat/1", "distilled/1", "teacher"),
        ("small/1", "distilled/1", "student_init"),
    ]

    variants, edges = family.graph("base", 1)
    assert [v.ref for v in variants] == [
        "base/1",
        "chat/1",
        "chat-lora/1",
        "chat-merged/1",
        "distilled/1",
    ]
    assert len(edges) == 4  # small/1 is a co-parent, not a descendant

    assert family.graph("small", 1)[0][-1].ref == "distilled/1"
    with pytest.raises(NotFoundError):
        family.graph("ghost", 3)


def test_unknown_parent_writes_nothing(family):
    before = family.list()
    with pytest.raises(NotFoundError, match="ghost/1"):
        family.add_variant(
            name="orphan",
            version=1,
            **fields(operation="merge"),
            parents=[("base/1", "parent", {}, {}), ("ghost/1", "parent", {}, {})],
        )
    assert family.list() == before
    assert family.get("orphan", 1) is None
    assert len(family.children("base", 1)) == 1


def test_duplicate_version_leaves_store_as_it_was(family):
    before = (family.list(), family.graph("base", 1))
    with pytest.raises(UsageError, match="chat/1 already exists"):
        family.add_variant(
            name="chat",
            version=1,
            **fields(operation="finetune", metrics={"val_loss": 0.0}),
            parents=[("small/1", "parent", {}, {})],
        )
    assert (family.list(), family.graph("base", 1)) == before
    assert family.children("small", 1)[0].child_ref == "distilled/1"
    assert len(family.children("small", 1)) == 1


@pytest.mark.parametrize(
    "bad",
    [
        dict(kind="lora"),
        dict(operation="Train now"),  # not a lowercase name: plugin operations like "prune" are welcome
        dict(content_hash="xyz"),
        dict(metrics={"loss": float("nan")}),
        dict(config={"f": object()}),
        dict(parameters=-1),
    ],
)
def test_bad_input_is_a_usage_error(store, bad):
    with pytest.raises(UsageError):
        store.add_variant(name="x", version=1, **fields(**bad))
    with pytest.raises(UsageError):
        store.add_variant(name="x", version=1, **fields(), parents=[("no-version", "parent", {}, {})])
    assert store.list() == []


def test_add_variant_without_a_version_takes_the_next(store):
    assert store.add_variant(name="gpt2", version=None, **fields()).version == 1
    assert store.add_variant(name="gpt2", version=None, **fields()).version == 2
    tuned = store.add_variant(
        name="gpt2-ft", version=None, **fields(operation="finetune"), parents=[("gpt2/2", "parent", {}, {})]
    )
    assert tuned.ref == "gpt2-ft/1"
    assert store.parents("gpt2-ft", 1)[0].parent_ref == "gpt2/2"


def test_migration_runs_on_open_and_not_again(url, monkeypatch):
    LineageStore(url).close()
    head = head_revision()
    assert alembic_versions(url) == [head]

    upgrades = []
    monkeypatch.setattr(command, "upgrade", lambda *a, **k: upgrades.append(a))
    with LineageStore(url) as reopened:
        reopened.add_variant(name="gpt2", version=1, **fields())
    assert upgrades == []
    assert alembic_versions(url) == [head]


def test_an_up_to_date_store_opens_without_alembic(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    assert store_module.SCHEMA_HEAD == head_revision()  # the constant the fast path compares with
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    LineageStore(url).close()
    program = ("import sys; from registry.lineage import LineageStore; LineageStore(sys.argv[1]).close(); "
               "print('alembic' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", program, url], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-1500:]


def test_a_store_made_before_exports_upgrades_and_keeps_its_rows(url):
    config = Config()
    config.set_main_option("script_location", store_module.MIGRATIONS_DIR)
    engine = engine_for(url)
    with engine.connect() as conn:  # the schema as the first release made it
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.commit()
    insert = ("INSERT INTO variants (name, version, kind, operation, config, parameters, size_bytes, "
              "content_hash, metrics, tags) VALUES (:name, 1, :kind, :kind, '{}', 1, 1, 'h', '{}', '{}')")
    with pytest.raises(IntegrityError):  # 0001 knew no export kind
        with engine.begin() as conn:
            conn.execute(text(insert), {"name": "x", "kind": "export"})
    with engine.begin() as conn:
        conn.execute(text(insert.replace(":kind, :kind", "'full', 'create'")), {"name": "base"})
    engine.dispose()
    with LineageStore(url) as upgraded:
        assert [row.ref for row in upgraded.list()] == ["base/1"]
        exported = upgraded.add_variant(name="base-export", version=1, **fields(kind="export", operation="export"),
                                        parents=[("base/1", "parent", {"format": "onnx"}, {})])
        assert exported.kind == "export" and upgraded.parents("base-export", 1)[0].parent_ref == "base/1"
    assert alembic_versions(url) == [head_revision()]


def test_migrated_schema_matches_models(store):
    with store.session_scope() as session:
        diff = compare_metadata(MigrationContext.configure(session.connection()), Base.metadata)
    assert diff == []


def test_newer_database_is_refused(url):
    LineageStore(url).close()
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()
    with pytest.raises(RegistryError, match="9999_future is newer than this gpt2-registry; upgrade"):
        LineageStore(url)


def test_sqlite_pragmas(db_path):
    with LineageStore(db_url(db_path)) as store, store.session_scope() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    # WAL is a property of the file, so plain sqlite3 clients see it too.
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class _RefusingCursor:
    """A cursor whose WAL switch is refused a given number of times, as SQLite
    refuses one of two openers that both hold a shared lock on a fresh file."""

    def __init__(self, refusals, message="database is locked"):
        self.refusals = refusals
        self.message = message
        self.calls = 0

    def execute(self, sql):
        self.calls += 1
        if self.calls <= self.refusals:
            raise sqlite3.OperationalError(self.message)


def test_wal_switch_retries_a_refused_lock():
    cursor = _RefusingCursor(refusals=3)
    store_module._switch_to_wal(cursor)
    assert cursor.calls == 4


def test_wal_switch_gives_up_at_the_deadline_and_passes_other_errors():
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store_module._switch_to_wal(_RefusingCursor(refusals=10**6), timeout=0.05)
    other = _RefusingCursor(refusals=1, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        store_module._switch_to_wal(other)
    assert other.calls == 1


def test_session_scope_rolls_back_and_maps_errors(store):
    store.add_variant(name="gpt2", version=1, **fields())
    with pytest.raises(RuntimeError):
        with store.session_scope(write=True) as session:
            session.execute(text("DELETE FROM variants"))
            raise RuntimeError("boom")
    assert store.get("gpt2", 1) is not None
    with pytest.raises(UsageError, match="rejected"):
        with store.session_scope(write=True) as session:
            session.execute(text("INSERT INTO edges (parent_id, child_id, operation, role, "
                                 "settings, metric_deltas) VALUES (1, 999, 'merge', 'p', '{}', '{}')"))
    with pytest.raises(RegistryError):
        with store.session_scope() as session:
            session.execute(text("SELECT * FROM no_such_table"))


def test_unopenable_database_is_a_registry_error(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(RegistryError, match="lineage database"):
        LineageStore(db_url(tmp_path / "dir.db"))


def test_bad_url_is_a_usage_error():
    with pytest.raises(UsageError):
        LineageStore("nonsense://")


def test_a_database_server_nobody_runs_is_one_line_naming_the_fix():
    # Port 1: nothing listens there, so the connection is refused at once.
    with pytest.raises(UsageError) as refused:
        LineageStore("postgresql://team@127.0.0.1:1/lineage")
    message = str(refused.value)
    assert "\n" not in message
    assert "cannot connect to the database postgresql" in message and "127.0.0.1:1/lineage" in message
    assert "refused" in message and "start the database server, or correct --lineage-url" in message


def test_a_database_the_server_lacks_is_one_line_saying_to_create_it(postgres_server):
    with pytest.raises(UsageError) as missing:
        LineageStore(postgres_server.url("no_such_database"))
    message = str(missing.value)
    assert "\n" not in message
    assert 'database "no_such_database" does not exist' in message and "createdb" in message


def test_a_password_in_the_url_is_not_repeated_in_errors():
    with pytest.raises(UsageError) as refused:
        LineageStore("postgresql://team:s3cret@127.0.0.1:1/lineage")
    assert "s3cret" not in str(refused.value) and "***" in str(refused.value)


def test_docstring_example_runs():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(LineageStore, "LineageStore", globs={"LineageStore": LineageStore}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert runner.summarize(verbose=False).attempted > 0


# -- several processes ----------------------------------------------------


def _worker(target, args, errors):
    try:
        target(*args)
    except BaseException:
        errors.put(traceback.format_exc())
        raise


def _run_processes(target, args_list, timeout=60):
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(target, args, errors)) for args in args_list]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout)
    alive = [proc for proc in procs if proc.is_alive()]
    for proc in alive:
        proc.kill()
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not alive, "worker processes hung"
    assert not failures, "\n".join(failures)
    assert [proc.exitcode for proc in procs] == [0] * len(procs)


def _append_versions(url, barrier, count):
    with LineageStore(url) as store:
        barrier.wait()
        for _ in range(count):
            store.add_variant(name="gpt2", version=None, **fields())


def _open_store(url, barrier):
    barrier.wait()
    with LineageStore(url) as store:
        assert store.list() == []


def test_concurrent_next_version_loses_no_writes(url):
    LineageStore(url).close()
    barrier = multiprocessing.get_context("spawn").Barrier(4)
    _run_processes(_append_versions, [(url, barrier, 25)] * 4)
    with LineageStore(url) as store:
        assert [v.version for v in store.list("gpt2")] == list(range(1, 101))


def test_concurrent_first_open(tmp_path):
    # On PostgreSQL, test_concurrency opens a new registry from eight processes at once.
    url = db_url(tmp_path / "fresh" / "lineage.db")
    barrier = multiprocessing.get_context("spawn").Barrier(4)
    _run_processes(_open_store, [(url, barrier)] * 4)
    assert alembic_versions(url) == [head_revision()]
