"""A store of thousands of variants: what `gpt2reg list`, `show` and `lineage` print, read the fast way.

The homes here hold lineage rows only (written through `LineageStore.add_variant`, milliseconds
each) where the command reads nothing else, and real store-only registrations where it does.
`bench/store_scale.py` measures the same commands on 10,000 variants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO
from tests.registry import store_only_plugin

COMMON = dict(kind="full", config={"num_layers": 2}, parameters=1_000, size_bytes=66_000, content_hash="0" * 64,
              run_id=None, artifact_uri=None, tags={})


def lineage_only_home(path, variants):
    """A home whose lineage store holds `variants`: (name, version, [(parent ref, role)], perplexity).

    Written in one transaction: a thousand `add_variant` calls would wait for the disk a thousand times.
    """
    from registry.lineage import LineageStore
    from registry.lineage.models import Edge, Variant

    with LineageStore(f"sqlite:///{path / 'lineage.db'}") as store, store.session_scope(write=True) as session:
        ids = {}
        for name, version, parents, perplexity in variants:
            row = Variant(name=name, version=version, operation="finetune" if parents else "create",
                          metrics={} if perplexity is None else {"perplexity": perplexity}, **COMMON)
            session.add(row)
            session.flush()
            ids[f"{name}/{version}"] = row.id
            for ref, role in parents:
                session.add(Edge(parent_id=ids[ref], child_id=row.id, operation=row.operation, role=role,
                                 settings={}, metric_deltas={}))
    return path


@pytest.fixture(scope="module")
def stamp_home(tmp_path_factory):
    """A real home holding `base/1`, for store-only registrations (`stamp`)."""
    home = tmp_path_factory.mktemp("stamps") / "home"
    store_only_plugin.seed_home(home)
    return home


def rich_drawing(variants, width):
    """What rich's own table layout draws for these variants at this width (the reference)."""
    import io

    from rich.console import Console

    from registry import rendering

    drawn = io.StringIO()
    unpatched = rendering._fitted_plain_table
    rendering._fitted_plain_table = lambda *args: None  # rich lays the table out itself
    try:
        table = rendering.variant_table(variants)
    finally:
        rendering._fitted_plain_table = unpatched
    assert type(table).__name__ == "Table"
    Console(file=drawn, width=width, highlight=False).print(table)
    return drawn.getvalue()


def test_a_long_listing_prints_what_rich_draws_with_every_parent_in_order(gpt2reg, tmp_path, monkeypatch):
    from registry import Registry

    rows = [("base", 1, [], None), ("teacher", 1, [("base/1", "parent")], 30.5)]
    rows += [(f"family-{n % 3}", n // 3 + 1, [("base/1", "parent")], 20.0 + n) for n in range(45)]
    rows += [("student", 1, [("teacher/1", "teacher"), ("family-0/2", "student_init")], 25.25)]
    home = lineage_only_home(tmp_path, rows)

    listed = gpt2reg("list", "--json", "--home", home)
    assert listed.exit_code == 0, listed
    documents = {v["ref"]: v for v in listed.json()["variants"]}
    assert len(documents) == 48 and documents["student/1"]["parents"] == ["teacher/1", "family-0/2"]
    assert documents["base/1"]["parents"] == [] and documents["family-2/15"]["parents"] == ["base/1"]

    variants = Registry(home).list()
    for width in (80, 200):  # 80 drops the hash and parents columns; 200 shows them all
        monkeypatch.setenv("COLUMNS", str(width))
        printed = gpt2reg("list", "--home", home)
        assert printed.exit_code == 0, printed
        assert printed.stdout == rich_drawing(variants, width)
    assert "teacher/1, family-0/2" in printed.stdout and "content hash" in printed.stdout

    best = gpt2reg("list", "--best", "perplexity", "--max-size-mb", "1", "--json", "--home", home)
    assert [v["ref"] for v in best.json()["variants"]] == ["family-0/1"]  # perplexity 20.0
    typo = gpt2reg("list", "--best", "perplexty", "--home", home)
    assert typo.exit_code == 2 and "recorded metrics: perplexity" in typo.stderr


def test_the_lineage_of_a_chain_a_thousand_generations_deep(gpt2reg, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no line folded: each variant's line is read whole below
    depth = 1_050  # deeper than Python's recursion limit, where the tree used to fail
    home = lineage_only_home(tmp_path, [("chain", v, [(f"chain/{v - 1}", "parent")] if v > 1 else [], float(v))
                                        for v in range(1, depth + 1)])

    tree = gpt2reg("lineage", f"chain/{depth}", "--home", home)
    assert tree.exit_code == 0, tree
    lines = tree.stdout.splitlines()
    assert len(lines) < 40  # the straight stretch is one line, not a thousand indented ones
    drawn = [line.split("──")[-1].split()[0] for line in lines[1:] if "──" in line]
    assert drawn == ["chain/1", "chain/2", "chain/3", "chain/4", "…", "chain/1048", "chain/1049", "chain/1050"]
    assert "… 1,043 generations, chain/5 to chain/1047" in tree.stdout
    assert lines[-1].endswith("chain/1050 (finetune)  size 66.0 KB  perplexity 1,050.00  ◀")

    # From the middle: the mark stays on its own line, and the stretches before and after it fold.
    middle = gpt2reg("lineage", "chain/500", "--home", home).stdout
    assert "chain/500 (finetune)" in middle and "◀" in middle
    assert "… 493 generations, chain/5 to chain/497" in middle and "… 544 generations, chain/504 to chain/1047" in middle

    graph = gpt2reg("lineage", "--json", f"chain/{depth}", "--home", home).json()
    assert len(graph["nodes"]) == depth and len(graph["edges"]) == depth - 1
    assert graph["nodes"][-1]["parents"] == [f"chain/{depth - 1}"]


def test_show_and_an_alias_are_read_without_starting_mlflow(stamp_home):
    from registry import Registry

    home = stamp_home
    Registry(home).alias("base/1", "champion")
    probe = textwrap.dedent(
        """
        import sys
        from registry.cli import main
        try:
            main(sys.argv[1:])
        finally:
            print("mlflow imported" if "mlflow" in sys.modules else "mlflow not imported", file=sys.stderr)
        """
    )

    def show(ref):
        environment = {**os.environ, "PYTHONPATH": str(REPO), "GPT2REG_HOME": str(home)}
        return subprocess.run([sys.executable, "-c", probe, "show", ref, "--json"], capture_output=True, text=True,
                              env=environment, timeout=300)

    shown = show("base@champion")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["ref"] == "base/1" and document["aliases"] == ["champion"]
    assert "mlflow not imported" in shown.stderr

    missing = show("base@nobody")  # not in the table: MLflow's client says so, as before
    assert missing.returncode == 2 and "base@nobody does not exist" in missing.stderr


def test_a_registration_under_a_deep_chain_draws_its_nearest_generations(stamp_home, monkeypatch):
    from registry import Registry, recorder
    from registry.tracking import local_path

    GENERATIONS_DRAWN = 3  # noqa: N806 - the recorder's constant, made small to keep the chain short
    monkeypatch.setattr(recorder, "GENERATIONS_DRAWN", GENERATIONS_DRAWN)
    store_only_plugin.install()
    reg = Registry(stamp_home)
    parent = "base/1"
    for step in range(GENERATIONS_DRAWN + 3):  # chain/1 .. chain/6
        parent = reg.run("stamp", parent, name="chain", tag=str(step)).ref
    newest = reg.get(parent)

    # Its picture's graph: its parent and that parent's GENERATIONS_DRAWN nearest generations.
    logged = json.loads((local_path(newest.artifact_uri) / "lineage" / "lineage.json").read_text())
    refs = [node["ref"] for node in logged["nodes"]]
    assert refs == [f"chain/{v}" for v in range(newest.version - GENERATIONS_DRAWN - 1, newest.version + 1)]
    assert logged["oldest_drawn"] == [refs[0]]
    # The whole family is still there for whoever asks for it.
    assert len(reg.lineage(newest)["nodes"]) == newest.version + 1
    reg.close()


def test_list_json_documents_are_the_variants_own(family_home, gpt2reg):
    """`list --json` prints documents made straight from the rows: the same as each variant's `to_dict()`,
    through the standard-library reader and through the open lineage store alike."""
    from registry import Registry

    reg = Registry(family_home)
    expected = [variant.to_dict() for variant in reg.list()]
    assert len(expected) == 2 and reg.list_documents() == expected
    assert reg.list_documents("base") == [variant.to_dict() for variant in reg.list("base")]
    printed = gpt2reg("list", "--json", "--home", family_home)
    assert printed.exit_code == 0 and printed.json()["variants"] == json.loads(json.dumps(expected, default=str))
    reg.lineage_store  # noqa: B018 - opened, as by a write: reads then go through it
    assert reg.list_documents() == expected
