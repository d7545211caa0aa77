"""The example third-party plugin `examples/gpt2reg-prune`, installed as a package: what a plugin author gets.

It is installed into the test environment (`pip install --no-deps --no-build-isolation -e
examples/gpt2reg-prune`); the last test uninstalls it and puts it back.
"""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from registry import Registry, plugins
from tests.conftest import REPO, store_snapshot

EXAMPLE = REPO / "examples" / "gpt2reg-prune"
DISTRIBUTION = "gpt2reg-prune"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
# Offline and without touching the installed gpt2-registry: the example needs nothing else.
INSTALL = [*PIP, "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation", "-e", str(EXAMPLE)]
EVAL_TEXT = ("The standard library documentation describes the built-in functions, the data types and the "
             "modules that every Python installation ships with. ") * 3


def _dense_kernels(lm) -> dict:
    """The transformer layers' dense kernels, the weights `prune` is documented to touch."""
    return {v.path: v.numpy() for v in lm.backbone.weights
            if v.path.startswith("transformer_layer_") and v.path.endswith("/kernel")}


@pytest.fixture
def fresh_plugins():
    plugins._reset_for_tests()  # another test of this process may have loaded plugins under other settings
    yield
    plugins._reset_for_tests()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny random `base/1` and `base-prune/1`, made by `gpt2reg prune base --sparsity 0.5 --json`."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from registry.cli import main

    try:
        importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"the example plugin is not installed; run: pip install --no-deps --no-build-isolation -e {EXAMPLE}")
    plugins._reset_for_tests()
    home = tmp_path_factory.mktemp("prune-home")
    eval_file = tmp_path_factory.mktemp("prune-eval") / "eval.txt"
    eval_file.write_text(EVAL_TEXT, encoding="utf-8")
    Registry(home).create("base", config="tiny", seed=0)
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):  # the `gpt2reg` fixture is per test; this runs once
        try:
            main(["prune", "base", "--sparsity", "0.5", "--eval-data", str(eval_file), "--home", str(home), "--json"])
        except SystemExit as done:
            assert done.code in (0, None), err.getvalue()
    plugins._reset_for_tests()
    return home, json.loads(out.getvalue()), eval_file


def test_the_installed_plugin_is_listed_with_its_capability(fresh_plugins, gpt2reg):
    listed = gpt2reg("plugins", "--json")
    assert listed.exit_code == 0 and listed.stderr == "", listed
    document = listed.json()
    rows = {row["name"]: row for row in document["plugins"]}
    assert rows["prune"]["status"] == "loaded", rows.get("prune")
    assert rows["prune"]["source"] == f"{DISTRIBUTION} {importlib.metadata.version(DISTRIBUTION)}"
    assert rows["prune"]["capabilities"] == ["prune"]
    assert rows["prune"]["hooks"] == ["register_capabilities"]  # its command comes from its options
    assert "prune" in document["capabilities"]
    assert [row["name"] for row in document["plugins"] if row["status"] == "failed"] == []
    assert "--sparsity" in gpt2reg("prune", "--help").stdout


def test_prune_records_a_variant_with_its_sparsity_and_perplexity_change(pruned):
    home, made, eval_file = pruned
    assert (made["ref"], made["operation"], made["parents"], made["kind"]) == ("base-prune/1", "prune", ["base/1"], "full")
    reg = Registry(home)
    [edge] = [e for e in reg.lineage("base-prune/1")["edges"] if e["child"] == "base-prune/1"]
    assert (edge["parent"], edge["operation"]) == ("base/1", "prune")
    assert edge["settings"]["sparsity"] == 0.5 and edge["settings"]["scope"] == "per-matrix"
    assert edge["settings"]["matrices"] == 12  # 2 layers x query, key, value, attention output, MLP in and out
    # Measured by counting zeros in the saved weights: a random model has none before.
    assert made["metrics"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert edge["metric_deltas"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    # The perplexity change is child minus parent on the same text, as `evaluate` measures the parent.
    parent_perplexity = reg.run("evaluate", "base/1", data=[str(eval_file)]).output["perplexity"]
    assert edge["metric_deltas"]["perplexity"] != 0
    assert made["metrics"]["perplexity"] - edge["metric_deltas"]["perplexity"] == pytest.approx(parent_perplexity, rel=1e-4)
    assert edge["metric_deltas"]["size_bytes"] == made["size_bytes"] - reg.get("base/1").size_bytes

    run = reg.tracker.get_run(made["run_id"])  # the core logged it: the plugin never touches MLflow
    assert run.data.tags["gpt2reg.operation"] == "prune" and run.data.tags["gpt2reg.parent"] == "base/1"
    assert run.data.params["sparsity"] == "0.5" and run.data.metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_the_pruned_variant_holds_the_zeros_where_the_parent_had_its_smallest_weights(pruned):
    home, _, _ = pruned
    reg = Registry(home)
    parent, child = reg.get("base/1").load(), reg.get("base-prune/1").load()
    parent_kernels, child_kernels = _dense_kernels(parent), _dense_kernels(child)
    assert len(child_kernels) == 12
    for path, before in parent_kernels.items():
        after = child_kernels[path]
        zeroed = after == 0
        assert zeroed.mean() == 0.5, path
        assert (after[~zeroed] == before[~zeroed]).all(), path  # the weights kept are unchanged
        assert abs(before[zeroed]).max() <= abs(before[~zeroed]).min(), path  # and they were the largest
    others = {v.path: v.numpy() for v in parent.backbone.weights if v.path not in parent_kernels}
    for variable in child.backbone.weights:  # embeddings, layer norms and biases are left alone
        if variable.path in others:
            assert (variable.numpy() == others[variable.path]).all(), variable.path


def test_global_scope_takes_the_smallest_weights_of_all_matrices_and_per_matrix_each_matrix_its_share():
    import numpy as np

    from gpt2reg_prune import magnitude

    small = np.array([[0.1, -0.2], [0.3, -0.4]], dtype="float32")
    large = np.array([[5.0, 6.0], [-7.0, 8.0]], dtype="float32")
    per_matrix = magnitude.prune({"small": small, "large": large}, 0.5, "per-matrix")
    assert (per_matrix["small"] == np.array([[0, 0], [0.3, -0.4]], dtype="float32")).all()
    assert (per_matrix["large"] == np.array([[0, 0], [-7, 8]], dtype="float32")).all()
    whole = magnitude.prune({"small": small, "large": large}, 0.5, "global")
    assert (whole["small"] == 0).all() and (whole["large"] == large).all()
    # All tied: exactly half of 9, rounded up, go (not none, not all).
    ties = magnitude.prune({"ones": np.ones((3, 3), dtype="float32")}, 0.5, "global")
    assert magnitude.zero_count(ties.values()) == 5 and magnitude.zero_fraction(ties.values()) == 5 / 9


@pytest.mark.parametrize("args, message", [
    (["base", "--sparsity", "1.5"], "error: --sparsity must be in (0, 1) (got 1.5)"),
    (["base", "--sparsity", "0.5", "--scope", "row"], "error: unknown --scope 'row'"),
    (["no-such-model", "--sparsity", "0.5"], "error: no variant no-such-model"),
])
def test_bad_input_is_one_error_line_exit_2_and_the_store_is_unchanged(pruned, gpt2reg, args, message):
    home, _, _ = pruned
    before = store_snapshot(home)
    result = gpt2reg("prune", *args, "--home", home)
    assert result.exit_code == 2, result
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith(message), result
    assert store_snapshot(home) == before


AFTER_UNINSTALL = """
import contextlib, io, json, sys
from registry.cli import main

home, ref = sys.argv[1], sys.argv[2]

def gpt2reg(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*args, "--home", home, "--json"])
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return {"exit_code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}

print(json.dumps({
    "plugins": gpt2reg("plugins"),
    "list": gpt2reg("list"),
    "lineage": gpt2reg("lineage", ref),
    "show": gpt2reg("show", ref),
    "generate": gpt2reg("generate", ref, "The meaning of", "--max-new-tokens", "4", "--ignore-end-of-text"),
    "doctor": gpt2reg("doctor"),
}))
"""


def test_uninstalling_the_plugin_leaves_the_store_and_every_other_command_working(pruned):
    home, made, _ = pruned
    removed = subprocess.run([*PIP, "uninstall", "--yes", DISTRIBUTION], capture_output=True, text=True)
    assert removed.returncode == 0, removed.stderr
    try:
        # A new process: what a user's next command sees once the package is gone.
        done = subprocess.run([sys.executable, "-c", AFTER_UNINSTALL, str(home), made["ref"]], capture_output=True,
                              text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    finally:
        reinstalled = subprocess.run(INSTALL, capture_output=True, text=True)
        assert reinstalled.returncode == 0, reinstalled.stderr
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for command, result in results.items():
        assert result["exit_code"] == 0 and "warning" not in result["stderr"], (command, result)
    listed = json.loads(results["plugins"]["stdout"])
    assert "prune" not in listed["capabilities"] and "prune" not in [row["name"] for row in listed["plugins"]]
    assert [row for row in listed["plugins"] if row["status"] == "failed"] == []
    assert {"base/1", made["ref"]} <= {v["ref"] for v in json.loads(results["list"]["stdout"])["variants"]}
    edges = json.loads(results["lineage"]["stdout"])["edges"]
    assert {(e["parent"], e["child"], e["operation"]) for e in edges} == {("base/1", made["ref"], "prune")}
    assert json.loads(results["show"]["stdout"])["metrics"]["sparsity"] == made["metrics"]["sparsity"]
    assert len(json.loads(results["generate"]["stdout"])["outputs"][0]["token_ids"]) == 4
    assert json.loads(results["doctor"]["stdout"])["problems"] == []
