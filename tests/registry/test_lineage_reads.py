"""The sqlite3 reader answers every read exactly as `LineageStore` does, on the same file.

`gpt2reg list`, `show` and `lineage` read a local home through `registry.lineage.reads`
(no SQLAlchemy to import); the SDK's writes and a database server go through
`LineageStore`. Both must see one store the same way: each read method is asked the same
questions of both, on a family with every shape the store holds (chains, a busy parent,
two parents with roles, settings and metric deltas, a name with a slash).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from registry.errors import NotFoundError
from registry.lineage import LineageStore
from registry.lineage.reads import SCHEMA_HEAD, SqliteLineageReader, local_reader
from tests.conftest import REPO
from tests.registry.test_lineage_store import fields, head_revision


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(store, reader) on one SQLite file holding a family of every shape."""
    url = f"sqlite:///{tmp_path_factory.mktemp('reads') / 'lineage.db'}"
    store = LineageStore(url)
    add = store.add_variant
    add(name="base", version=1, **fields(config={"n_layer": 2, "dims": [64, 256], "nested": {"a": 1}}))
    add(name="chat", version=1, **fields(operation="finetune", metrics={"val_loss": 3.1}, tags={"note": "first"}),
        parents=[("base/1", "parent", {"lr": 3e-4, "steps": 10, "data": ["a.txt"]}, {"val_loss": -0.4})])
    add(name="chat-lora", version=1, **fields(kind="adapter", operation="lora"),
        parents=[("chat/1", "base", {"rank": 8}, {})])
    add(name="org/model", version=1, **fields(operation="merge"), parents=[("chat-lora/1", "parent", {}, {})])
    add(name="small", version=1, **fields())
    add(name="distilled", version=1, **fields(operation="distill", artifact_uri="file:///x/artifacts/1",
                                              run_id="r" * 32),
        parents=[("chat/1", "teacher", {"temperature": 2.0}, {}), ("small/1", "student_init", {}, {"val_loss": -0.1})])
    for version in range(1, 7):  # a busy parent, and a chain under it
        add(name="sweep", version=version, **fields(operation="finetune", metrics={"perplexity": 30.0 + version}),
            parents=[("base/1" if version < 4 else f"sweep/{version - 1}", "parent", {"seed": version}, {})])
    store.update_metrics("chat", 1, {"perplexity": 40.0})  # deltas onto the edges around it
    store.update_metrics("base", 1, {"perplexity": 60.0})
    reader = local_reader(url)
    assert isinstance(reader, SqliteLineageReader)
    yield store, reader
    store.close()


REFS = ["base/1", "chat/1", "chat-lora/1", "org/model/1", "small/1", "distilled/1"] + [f"sweep/{v}" for v in range(1, 7)]


def split(ref):
    name, _, version = ref.rpartition("/")
    return name, int(version)


def test_listings_and_single_reads_agree(both):
    store, reader = both
    assert reader.list() == store.list() and len(reader.list()) == len(REFS)
    for name in ("sweep", "org/model", "nobody"):
        assert reader.list(name) == store.list(name)
        assert reader.latest(name) == store.latest(name)
    assert reader.names() == store.names()
    for ref in REFS + ["base/9"]:
        assert reader.get(*split(ref)) == store.get(*split(ref))
    # The entities are whole: JSON decoded, the time aware and in UTC, as the store's.
    base = reader.get("base", 1)
    assert base.config["dims"] == [64, 256] and base.metrics == {"perplexity": 60.0}
    assert base.created_at.tzinfo is not None and base.created_at.utcoffset().total_seconds() == 0


def test_rows_share_no_dicts(both):
    """A config or tags text repeats from row to row and is decoded once: each row still owns its dicts."""
    _, reader = both
    first, second = reader.list("sweep")[:2]
    assert first.config == second.config and first.config is not second.config
    first.tags["changed"] = "here"
    assert "changed" not in second.tags and "changed" not in reader.list("sweep")[0].tags
    nested = [row for row in reader.list() if row.name == "base"][0]
    assert nested.config["nested"] == {"a": 1}


def test_edges_agree(both):
    store, reader = both
    for ref in REFS:
        assert reader.parents(*split(ref)) == store.parents(*split(ref))
        assert reader.children(*split(ref)) == store.children(*split(ref))
        assert reader.children(*split(ref), newest=2) == store.children(*split(ref), newest=2)
        assert reader.child_count(*split(ref)) == store.child_count(*split(ref))
    assert [edge.child_ref for edge in reader.children("base", 1, newest=2)] == ["sweep/2", "sweep/3"]
    assert reader.parent_refs() == store.parent_refs()
    ids = [row.id for row in reader.list()]
    assert reader.parent_refs(ids[::2]) == store.parent_refs(ids[::2])
    assert reader.parent_refs([]) == store.parent_refs([]) == {}
    distilled = reader.get("distilled", 1).id
    assert reader.parent_refs([distilled]) == {distilled: ["chat/1", "small/1"]}  # oldest edge first


@pytest.mark.parametrize("descendants", [True, False])
@pytest.mark.parametrize("generations", [None, 1, 2])
def test_family_graphs_agree(both, descendants, generations):
    store, reader = both
    for ref in REFS:
        assert reader.graph(*split(ref), descendants=descendants, generations=generations) == \
            store.graph(*split(ref), descendants=descendants, generations=generations), ref


def test_an_unknown_variant_is_the_same_error(both):
    store, reader = both
    for method in ("parents", "children", "child_count", "graph"):
        with pytest.raises(NotFoundError) as from_store:
            getattr(store, method)("ghost", 1)
        with pytest.raises(NotFoundError) as from_reader:
            getattr(reader, method)("ghost", 1)
        assert str(from_reader.value) == str(from_store.value)


def test_only_a_local_store_at_this_schema_is_read_this_way(tmp_path):
    assert SCHEMA_HEAD == head_revision()
    path = tmp_path / "lineage.db"
    assert local_reader(f"sqlite:///{path}") is None  # not there yet: the store creates it
    LineageStore(f"sqlite:///{path}").close()
    assert local_reader(f"sqlite:///{path}") is not None
    assert local_reader(f"sqlite:///{path}?timeout=5") is None  # options the store interprets
    assert local_reader("postgresql://team@db/registry") is None
    assert local_reader("sqlite://") is None  # in memory
    with sqlite3.connect(path) as connection:  # a store an older release made: the store migrates it
        connection.execute("UPDATE alembic_version SET version_num = '0002'")
    assert local_reader(f"sqlite:///{path}") is None
    (tmp_path / "not-a-database.db").write_text("hello")
    assert local_reader(f"sqlite:///{tmp_path / 'not-a-database.db'}") is None


def test_the_read_commands_import_neither_sqlalchemy_nor_mlflow_nor_the_plugins(tmp_path):
    """`list`, `show` and `lineage` of a local home, as a user runs them: right answers, light imports."""
    from registry import Registry
    from tests.registry import store_only_plugin

    home = tmp_path / "home"
    store_only_plugin.seed_home(home)
    store_only_plugin.install()
    child = Registry(home).run("stamp", "base/1", name="child", tag="one")
    probe = textwrap.dedent(
        """
        import sys
        from registry.cli import main
        try:
            main(sys.argv[1:])
        finally:
            heavy = sorted({name.split(".")[0] for name in sys.modules} & {"sqlalchemy", "mlflow", "alembic"})
            plugins = sorted(name for name in sys.modules if name.startswith("plugins."))
            print("imported:", heavy + plugins, file=sys.stderr)
        """
    )

    def gpt2reg(*args):
        environment = {**os.environ, "PYTHONPATH": str(REPO), "GPT2REG_HOME": str(home)}
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                              env=environment, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "imported: []" in done.stderr, done.stderr
        return done.stdout

    import json

    listed = json.loads(gpt2reg("list", "--json"))
    assert [v["ref"] for v in listed["variants"]] == ["base/1", "child/1"]
    assert listed["variants"][1]["parents"] == ["base/1"] and listed["variants"][1]["run_id"] == child.run_id
    assert "child/1" in gpt2reg("list") and "base/1" in gpt2reg("show", "child/1")
    graph = json.loads(gpt2reg("lineage", "--json", "child/1"))
    assert [edge["child"] for edge in graph["edges"]] == ["child/1"]
    assert "child/1" in gpt2reg("lineage", "base/1")
