"""Many processes on one registry: nothing lost, nothing doubled, no "database is locked".

Workers are separate processes forked from `multiprocessing`'s forkserver
(see `store_only_plugin`), each with its own MLflow and lineage connections,
as eight `gpt2reg` commands started at once would have. Each test runs on a
home's own SQLite files and on shared PostgreSQL databases (MLflow's and the
lineage store's), as a team shares them.
"""

from __future__ import annotations

import pytest

from tests.registry import store_only_plugin
from tests.registry.store_only_plugin import incomplete_variants

WORKERS = 8
# Registrations per worker. PostgreSQL gets fewer: the races are the same at any count,
# and the SQLite runs already carry the load.
REGISTRATIONS = {"sqlite": 25, "postgresql": 4}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request) -> str:
    return request.param


def _shared_stores(store: str, request, *, migrated: bool = True) -> dict:
    """`tracking_uri` and `lineage_url` for Registry: none for SQLite (the home's own files),
    fresh PostgreSQL databases otherwise (MLflow's already migrated unless `migrated=False`)."""
    if store == "sqlite":
        return {}
    server = request.getfixturevalue("postgres_server")  # started only when a PostgreSQL case runs
    tracking = server.create_mlflow_database() if migrated else server.create_database()
    return {"tracking_uri": tracking, "lineage_url": server.create_database()}


def _run_all(context, target, argument_lists) -> list:
    queue = context.Queue()
    workers = [context.Process(target=target, args=(*arguments, queue)) for arguments in argument_lists]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0] * len(workers)
    return results


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@pytest.mark.parametrize("names", ["one shared name", "a name per worker"])
def test_eight_writers_lose_nothing(forkserver, tmp_path, request, store, names):
    from registry import Registry

    home = tmp_path / "home"
    stores = _shared_stores(store, request)
    registrations = REGISTRATIONS[store]
    store_only_plugin.seed_home(home, **stores)
    plans = [
        ["shared" if names == "one shared name" else f"worker{w}"] * registrations
        for w in range(WORKERS)
    ]
    results = _run_all(forkserver, store_only_plugin.register_many, [(str(home), plan, stores) for plan in plans])
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[0]
    latencies = [t for r in results for t in r["latencies"]]
    assert len(latencies) == WORKERS * registrations

    reg = Registry(home, **stores)
    expected = {name: plans.count([name] * registrations) * registrations for name in {p[0] for p in plans}}
    for name, count in expected.items():
        versions = sorted(int(v.version) for v in reg.tracker.versions() if v.name == name)
        assert versions == list(range(1, count + 1)), f"{name}: duplicates or gaps"
        rows = reg.lineage_store.list(name)
        assert [row.version for row in rows] == versions
        assert len({row.run_id for row in rows}) == count and len({row.content_hash for row in rows}) == count
        assert all(edge.parent_ref == "base/1" for row in rows for edge in reg.lineage_store.parents(name, row.version))
    assert sum(expected.values()) == WORKERS * registrations
    assert incomplete_variants(home, **stores) == []
    reg.close()
    print(f"\n{WORKERS} writers x {registrations} registrations on {store} ({names}): "
          f"p50 {_percentile(latencies, 0.5):.2f} s, p95 {_percentile(latencies, 0.95):.2f} s, "
          f"max {max(latencies):.2f} s per registration")


def test_eight_processes_opening_a_new_registry_at_once(forkserver, tmp_path, request, store):
    """Eight first opens of empty stores: both schemas migrate once, and every opener works.

    On PostgreSQL each opener has a home of its own (eight team members), so nothing
    on this machine serializes them: only the database's own locks do.
    """
    from sqlalchemy import create_engine, text

    from registry import Registry
    from registry.home import with_installed_driver

    stores = _shared_stores(store, request, migrated=False)
    homes = [tmp_path / ("new-home" if store == "sqlite" else f"member{w}") for w in range(WORKERS)]
    results = _run_all(forkserver, store_only_plugin.open_new_home, [(str(home), stores) for home in homes])
    assert [r["error"] for r in results] == [None] * WORKERS, next(r["error"] for r in results if r["error"])
    assert len({r["experiment"] for r in results}) == 1
    databases = [stores["tracking_uri"], stores["lineage_url"]] if stores else [
        f"sqlite:///{homes[0] / name}" for name in ("mlflow.db", "lineage.db")]
    for url in databases:
        engine = create_engine(with_installed_driver(url))
        with engine.connect() as connection:
            # One schema version in each: the migrations ran to the end, once.
            assert len(connection.execute(text("SELECT version_num FROM alembic_version")).all()) == 1
        engine.dispose()
    reg = Registry(homes[0], **stores)
    assert sorted(e.name for e in reg.tracker.client.search_experiments()) == ["Default", "gpt2reg"]
    assert reg.list() == []
    reg.close()
