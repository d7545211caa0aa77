"""Many processes on one home: nothing lost, nothing doubled, no "database is locked".

Workers are separate processes forked from `multiprocessing`'s forkserver
(see `store_only_plugin`), each with its own MLflow and lineage connections,
as eight `gpt2reg` commands started at once would have.
"""

from __future__ import annotations


import pytest

from tests.registry import store_only_plugin
from tests.registry.store_only_plugin import incomplete_variants

WORKERS = 8
REGISTRATIONS = 25



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
def test_eight_writers_lose_nothing(forkserver, tmp_path, names):
    from registry import Registry

    home = tmp_path / "home"
    store_only_plugin.seed_home(home)
    plans = [
        ["shared" if names == "one shared name" else f"worker{w}"] * REGISTRATIONS
        for w in range(WORKERS)
    ]
    results = _run_all(forkserver, store_only_plugin.register_many, [(str(home), plan) for plan in plans])
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[0]
    latencies = [t for r in results for t in r["latencies"]]
    assert len(latencies) == WORKERS * REGISTRATIONS

    reg = Registry(home)
    expected = {name: plans.count([name] * REGISTRATIONS) * REGISTRATIONS for name in {p[0] for p in plans}}
    for name, count in expected.items():
        versions = sorted(int(v.version) for v in reg.tracker.versions() if v.name == name)
        assert versions == list(range(1, count + 1)), f"{name}: duplicates or gaps"
        rows = reg.lineage_store.list(name)
        assert [row.version for row in rows] == versions
        assert len({row.run_id for row in rows}) == count and len({row.content_hash for row in rows}) == count
        assert all(edge.parent_ref == "base/1" for row in rows for edge in reg.lineage_store.parents(name, row.version))
    assert sum(expected.values()) == WORKERS * REGISTRATIONS
    assert incomplete_variants(home) == []
    reg.close()
    print(f"\n{WORKERS} writers x {REGISTRATIONS} registrations ({names}): p50 {_percentile(latencies, 0.5):.2f} s, "
          f"p95 {_percentile(latencies, 0.95):.2f} s, max {max(latencies):.2f} s per registration")


def test_eight_processes_opening_a_new_home_at_once(forkserver, tmp_path):
    from registry import Registry

    home = tmp_path / "new-home"
    results = _run_all(forkserver, store_only_plugin.open_new_home, [(str(home),)] * WORKERS)
    assert [r["error"] for r in results] == [None] * WORKERS, next(r["error"] for r in results if r["error"])
    assert len({r["experiment"] for r in results}) == 1
    import sqlite3

    for database in ("mlflow.db", "lineage.db"):
        with sqlite3.connect(home / database) as connection:
            # One schema version in each: the migrations ran to the end, once.
            assert len(connection.execute("SELECT version_num FROM alembic_version").fetchall()) == 1
    reg = Registry(home)
    assert sorted(e.name for e in reg.tracker.client.search_experiments()) == ["Default", "gpt2reg"]
    assert reg.list() == []
    reg.close()
