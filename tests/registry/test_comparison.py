"""`gpt2reg compare`: quality against cost with its Pareto fronts, shared-metric panels, and one
metric over a model's versions, checked from the document rather than the chart's pixels.

The variants are store-only stamps (no model is built) given their figures with
`Registry.record_metrics`; their sizes are chosen, so every front is known by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

from registry.comparison import pareto_front
from tests.registry import store_only_plugin

PNG = b"\x89PNG\r\n\x1a\n"
SIZE_FRONT = "perplexity vs size_bytes"
SPEED_FRONT = "perplexity vs greedy_tokens_per_second"

# name: (bytes of weights, figures). Lower perplexity, smaller size and more tokens/s are better.
#   size:  d (5k, 60) < a (10k, 30) < b (20k, 20) < c (40k, 25): c is bigger and worse than b.
#   speed: b (50, 20), a (100, 30), c (200, 25): c is faster and better than a.
#   d has no speed and e no perplexity: each is left out where it lacks a coordinate.
#   teacher_perplexity is b's alone, so it gets no panel.
FAMILY = {
    "a": (10_000, {"perplexity": 30.0, "greedy_tokens_per_second": 100.0, "hellaswag.accuracy": 0.30}),
    "b": (20_000, {"perplexity": 20.0, "greedy_tokens_per_second": 50.0, "hellaswag.accuracy": 0.25,
                   "teacher_perplexity": 9.0}),
    "c": (40_000, {"perplexity": 25.0, "greedy_tokens_per_second": 200.0, "hellaswag.accuracy": 0.40}),
    "d": (5_000, {"perplexity": 60.0}),
    "e": (30_000, {"greedy_tokens_per_second": 300.0}),
}
REFS = [f"{name}/1" for name in FAMILY]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """FAMILY, and `base` with four versions: 1 (create, perplexity 5000), 2 (40), 3 (none), 4 (35)."""
    from registry import Registry

    home = tmp_path_factory.mktemp("compare") / "home"
    store_only_plugin.seed_home(home)
    store_only_plugin.install()
    reg = Registry(home)
    for name, (size, figures) in FAMILY.items():
        reg.record_metrics(reg.run("stamp", "base/1", name=name, tag=name, size=size), figures)
    for number in range(3):
        reg.run("stamp", "base/1", name="base", tag=f"base-{number}")
    for ref, perplexity in (("base/1", 5000.0), ("base/2", 40.0), ("base/4", 35.0)):
        reg.record_metrics(ref, {"perplexity": perplexity})
    reg.close()
    return home


def _panels(document: dict) -> dict:
    return {panel["id"]: panel for panel in document["panels"]}


def test_quality_against_size_and_speed_marks_each_pareto_front(gpt2reg, home, tmp_path):
    chart = tmp_path / "chart.png"
    result = gpt2reg("compare", *REFS, "--json", "--chart", chart, "--home", home)
    assert result.exit_code == 0, result
    document = result.json()
    assert [row["ref"] for row in document["variants"]] == REFS
    assert document["compared"] == "variants" and document["quality_metric"] == "perplexity"
    assert document["fronts"] == {SIZE_FRONT: ["a/1", "b/1", "d/1"], SPEED_FRONT: ["b/1", "c/1"]}

    panels = _panels(document)
    size = panels[SIZE_FRONT]
    assert size["kind"] == "scatter" and size["x"] == {"metric": "size_bytes", "better": "lower"}
    assert size["y"] == {"metric": "perplexity", "better": "lower"}
    assert {p["ref"]: p["on_front"] for p in size["points"]} == {"a/1": True, "b/1": True, "c/1": False, "d/1": True}
    assert size["left_out"] == [{"ref": "e/1", "missing": ["perplexity"]}]
    speed = panels[SPEED_FRONT]
    assert speed["x"] == {"metric": "greedy_tokens_per_second", "better": "higher"}
    assert [p["ref"] for p in speed["points"]] == ["a/1", "b/1", "c/1"]
    assert speed["left_out"] == [{"ref": "d/1", "missing": ["greedy_tokens_per_second"]},
                                 {"ref": "e/1", "missing": ["perplexity"]}]

    # Bars: size and parameters, and the metrics two or more variants hold; teacher_perplexity is b's alone.
    assert list(panels) == [SIZE_FRONT, SPEED_FRONT, "size_bytes", "parameters", "perplexity",
                            "greedy_tokens_per_second", "hellaswag.accuracy"]
    assert all(panels[i]["kind"] == "bar" for i in list(panels)[2:])
    assert panels["perplexity"]["values"] == {"a/1": 30.0, "b/1": 20.0, "c/1": 25.0, "d/1": 60.0}
    assert document["omitted_panels"] == [{"id": "teacher_perplexity", "kind": "bar", "reason": "only b/1 holds it"}]
    assert "teacher_perplexity" in document["metrics"]  # still a row of the table
    assert chart.read_bytes()[:8] == PNG and document["chart_file"] == str(chart)


def test_a_task_metric_turns_the_front_round_where_higher_is_better(gpt2reg, home):
    result = gpt2reg("compare", *REFS, "--metric", "hellaswag.accuracy", "--no-log", "--json", "--home", home)
    assert result.exit_code == 0, result
    document = result.json()
    assert document["quality_metric"] == "hellaswag.accuracy"
    # Size: a (10k, 0.30) beats b (20k, 0.25); c is bigger but the most accurate. Speed: c beats both.
    assert document["fronts"] == {"hellaswag.accuracy vs size_bytes": ["a/1", "c/1"],
                                  "hellaswag.accuracy vs greedy_tokens_per_second": ["c/1"]}
    assert _panels(document)["hellaswag.accuracy vs size_bytes"]["y"]["better"] == "higher"
    assert "run_id" not in document and "chart_uri" not in document


def test_a_figure_only_one_variant_holds_gets_no_panel_and_the_document_says_why(gpt2reg, home):
    result = gpt2reg("compare", "a/1", "d/1", "--no-log", "--json", "--home", home)
    assert result.exit_code == 0, result
    document = result.json()
    assert [panel["id"] for panel in document["panels"]] == [SIZE_FRONT, "size_bytes", "parameters", "perplexity"]
    omitted = {entry["id"]: entry for entry in document["omitted_panels"]}
    assert set(omitted) == {SPEED_FRONT, "greedy_tokens_per_second", "hellaswag.accuracy"}
    assert omitted[SPEED_FRONT]["kind"] == "scatter"
    assert omitted[SPEED_FRONT]["reason"].startswith("only a/1 holds greedy_tokens_per_second")  # d/1 lacks it
    assert document["fronts"] == {SIZE_FRONT: ["a/1", "d/1"]}


def test_the_comparison_run_holds_the_same_document_and_chart(home):
    from registry import Registry

    reg = Registry(home)
    document = reg.compare(["a", "b/1", "c"])
    logged = Path(urlparse(document["chart_uri"]).path)
    assert logged.read_bytes()[:8] == PNG
    written = json.loads((logged.parent / "comparison.json").read_text())
    assert written["fronts"] == document["fronts"] == {SIZE_FRONT: ["a/1", "b/1"], SPEED_FRONT: ["b/1", "c/1"]}
    assert written["panels"] == document["panels"]
    run = reg.tracker.client.get_run(document["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["gpt2reg.comparison"] == "a/1, b/1, c/1"


def test_one_metric_over_the_versions_of_a_model(gpt2reg, home, tmp_path):
    chart = tmp_path / "versions.png"
    result = gpt2reg("compare", "base", "--versions", "--json", "--chart", chart, "--home", home)
    assert result.exit_code == 0, result
    document = result.json()
    assert document["compared"] == "versions" and document["model"] == "base"
    assert [row["ref"] for row in document["variants"]] == ["base/1", "base/2", "base/3", "base/4"]
    (series,) = document["panels"]
    assert series["id"] == "perplexity by version" and series["kind"] == "line"
    assert [(p["version"], p["operation"], p["y"]) for p in series["points"]] == [
        (1, "create", 5000.0), (2, "finetune", 40.0), (4, "finetune", 35.0)]
    assert series["left_out"] == [{"ref": "base/3", "version": 3, "missing": ["perplexity"]}]
    assert series["best"] == "base/4"
    assert document["run_id"] and Path(urlparse(document["chart_uri"]).path).read_bytes()[:8] == PNG
    assert chart.read_bytes()[:8] == PNG

    table = gpt2reg("compare", "base", "--versions", "--no-log", "--home", home)
    assert table.exit_code == 0, table
    assert "35 (best)" in table.stdout and "create" in table.stdout


def test_the_sdk_compares_versions_as_the_cli_does(home):
    from registry import Registry

    document = Registry(home).compare_versions("base", metric="perplexity", log=False)
    assert [p["ref"] for p in document["panels"][0]["points"]] == ["base/1", "base/2", "base/4"]
    assert "run_id" not in document


@pytest.mark.parametrize("args, named", [
    (["a", "nope"], "no variant nope"),
    (["a", "b", "--metric", "nope"], "holds metric 'nope'"),
    (["a"], "--versions"),
    (["a", "a/1"], "two or more variants"),
    (["a", "--versions"], "a has one version"),
    (["base", "a", "--versions"], "one model"),
    (["base/2", "--versions"], "give base"),
    (["nope", "--versions"], "no registered model nope"),
    (["base", "--versions", "--metric", "hellaswag.accuracy"], "no version of base holds"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_bad_input_is_one_line_naming_the_fix(gpt2reg, home, args, named):
    refused = gpt2reg("compare", *args, "--no-log", "--home", home)
    assert refused.exit_code == 2, refused
    assert refused.stderr.count("\n") == 1 and named in refused.stderr, refused


def test_the_pareto_front_keeps_ties_and_drops_what_is_dominated():
    points = [{"ref": "tie-1", "x": 1.0, "y": 5.0}, {"ref": "tie-2", "x": 1.0, "y": 5.0},
              {"ref": "same-size-worse", "x": 1.0, "y": 6.0}, {"ref": "bigger-better", "x": 3.0, "y": 2.0},
              {"ref": "bigger-same", "x": 4.0, "y": 2.0}]
    assert pareto_front(points, x_higher=False, y_higher=False) == ["tie-1", "tie-2", "bigger-better"]
    assert pareto_front(points, x_higher=True, y_higher=True) == ["same-size-worse", "bigger-same"]


def test_a_figure_that_is_not_finite_is_a_missing_coordinate():
    from registry.comparison import scatter_panel

    rows = [{"ref": f"{name}/1", "size_bytes": size, "parameters": 1, "metrics": {"perplexity": perplexity}}
            for name, size, perplexity in (("ok", 10, 30.0), ("fine", 20, 20.0), ("diverged", 5, float("inf")))]
    panel, _ = scatter_panel(rows, "perplexity", "size_bytes")
    assert panel["front"] == ["ok/1", "fine/1"]
    assert panel["left_out"] == [{"ref": "diverged/1", "missing": ["perplexity"]}]
