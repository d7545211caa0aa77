"""A team on shared stores: an MLflow tracking server and a PostgreSQL lineage database.

The server is `mlflow server --serve-artifacts` on PostgreSQL, as a team runs it
(see the `mlflow_server` fixture); each member has a home of their own on their
machine, which holds only work folders and downloaded copies. Alice makes the
variants with the CLI; Bob, from another home, finds, reads and runs them.
"""

from __future__ import annotations

import contextlib
import io
import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port


@dataclass
class Team:
    tracking_uri: str
    lineage_url: str
    served_artifacts: Path
    alice: Path
    bob: Path
    base: dict  # what `gpt2reg create --json` printed for Alice
    tuned: dict  # what `gpt2reg finetune --json` printed for Alice

    def options(self, home: Path) -> list[str]:
        return ["--home", str(home), "--tracking-uri", self.tracking_uri, "--lineage-url", self.lineage_url]


def _cli_json(*args) -> dict:
    """Run `gpt2reg ARGS... --json` in this process; its one JSON document (outside a test's capsys)."""
    from registry.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args] + ["--json"])
        except SystemExit as done:
            assert done.code in (0, None), f"gpt2reg {' '.join(map(str, args))} exited {done.code}: {err.getvalue()[-2000:]}"
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def team(mlflow_server, postgres_server, tmp_path_factory, text_file) -> Team:
    """Alice's `base/1` (create --config tiny) and `base-finetune/1` (two steps), made with the CLI."""
    root = tmp_path_factory.mktemp("team")
    team = Team(tracking_uri=mlflow_server.url, lineage_url=postgres_server.create_database(),
                served_artifacts=mlflow_server.artifacts, alice=root / "alice", bob=root / "bob", base={}, tuned={})
    team.base = _cli_json("create", "base", "--config", "tiny", *team.options(team.alice))
    team.tuned = _cli_json("finetune", "base/1", "--data", text_file, "--steps", 2, "--batch-size", 2,
                           "--seq-len", 32, *team.options(team.alice))
    return team


def test_a_second_member_lists_the_same_variants_and_their_lineage(team, gpt2reg):
    assert team.base["ref"] == "base/1" and team.tuned["ref"] == "base-finetune/1"
    assert team.tuned["parents"] == ["base/1"] and team.tuned["operation"] == "finetune"

    listed = gpt2reg("list", *team.options(team.bob), "--json")
    assert listed.exit_code == 0, listed
    assert [v["ref"] for v in listed.json()["variants"]] == ["base/1", "base-finetune/1"]
    assert [v["content_hash"] for v in listed.json()["variants"]] == [team.base["content_hash"],
                                                                      team.tuned["content_hash"]]

    lineage = gpt2reg("lineage", "base-finetune/1", *team.options(team.bob), "--json")
    assert lineage.exit_code == 0, lineage
    [edge] = lineage.json()["edges"]
    assert (edge["parent"], edge["child"], edge["operation"]) == ("base/1", "base-finetune/1", "finetune")
    assert edge["settings"]["steps"] == 2
    assert edge["metric_deltas"]["size_bytes"] == team.tuned["size_bytes"] - team.base["size_bytes"]
    assert "perplexity" in edge["metric_deltas"]  # measured on the same data before and after


def test_the_files_live_on_the_server_and_runs_are_read_from_a_downloaded_copy(team, gpt2reg):
    # The server holds the variants' files (--serve-artifacts); a member's home keeps only
    # downloaded copies (Alice's finetune fetched its parent).
    for home in (team.alice, team.bob):
        kept = [p.relative_to(home) for p in home.rglob("model.weights.h5")]
        assert all(p.parts[0] == "cache" for p in kept), kept
    assert not (team.alice / "artifacts").exists()
    served = {p.parent.name for p in team.served_artifacts.rglob("model.weights.h5")}
    assert served == {"preset"} and len(list(team.served_artifacts.rglob("model.weights.h5"))) == 2
    manifest_url = f"{team.tracking_uri}/get-artifact?path=gpt2reg.json&run_uuid={team.tuned['run_id']}"
    with urllib.request.urlopen(manifest_url, timeout=30) as response:
        assert json.load(response)["content_hash"] == team.tuned["content_hash"]

    generated = gpt2reg("generate", "base-finetune/1", "Hello there", "--max-new-tokens", 4, "--sampler", "greedy",
                        *team.options(team.bob), "--json")
    assert generated.exit_code == 0, generated
    [output] = generated.json()["outputs"]
    assert output["prompt"] == "Hello there" and len(output["token_ids"]) == 4 and isinstance(output["text"], str)
    cached = team.bob / "cache" / team.tuned["content_hash"] / "preset"
    assert (cached / "model.weights.h5").is_file() and (cached / "gpt2reg.json").is_file()
    assert not list((team.bob / "cache").glob(".*-download-*")), "a download work folder was left behind"


def test_the_sdk_reads_and_runs_the_team_s_variants(team):
    from registry import Registry
    from registry.artifacts import content_hash

    reg = Registry(team.bob, tracking_uri=team.tracking_uri, lineage_url=team.lineage_url)
    tuned = reg.get("base-finetune")
    assert tuned.ref == "base-finetune/1" and tuned.parent == "base/1"
    assert tuned.artifact_uri.startswith("mlflow-artifacts:")  # served, not a path on Alice's machine
    graph = reg.lineage("base/1")
    assert [(e["parent"], e["child"]) for e in graph["edges"]] == [("base/1", "base-finetune/1")]
    assert content_hash(reg.preset_path(tuned)) == tuned.content_hash
    lm = tuned.load()
    assert isinstance(lm.generate("Hello", max_length=8), str)
    reg.alias(tuned, "champion")  # Bob's alias is Alice's too: one registry
    alice = Registry(team.alice, tracking_uri=team.tracking_uri, lineage_url=team.lineage_url)
    assert alice.get("base-finetune@champion").ref == "base-finetune/1"
    reg.close()
    alice.close()


def test_a_cached_copy_without_its_manifest_is_fetched_again(team):
    from registry import Registry

    reg = Registry(team.bob, tracking_uri=team.tracking_uri, lineage_url=team.lineage_url)
    partial = team.bob / "cache" / team.base["content_hash"] / "preset"
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "gpt2reg.json").unlink(missing_ok=True)
    (partial / "model.weights.h5").write_bytes(b"the first bytes of an interrupted download")
    path = reg.preset_path("base/1")
    assert path == partial and (path / "gpt2reg.json").is_file()
    assert reg.get("base/1").load() is not None  # the hash check in load() passes: whole files
    reg.close()


def test_doctor_finds_the_shared_stores_consistent_and_ui_points_at_the_server(team, gpt2reg):
    checked = gpt2reg("doctor", *team.options(team.bob), "--json")
    assert checked.exit_code == 0, checked
    assert checked.json()["problems"] == [] and checked.json()["variants_checked"] == 2

    ui = gpt2reg("ui", *team.options(team.bob))
    assert ui.exit_code == 0, ui
    assert team.tracking_uri in ui.stdout  # the server is the UI: nothing else to start
    shown = gpt2reg("ui", *team.options(team.bob), "--json").json()
    assert {key: shown[key] for key in ("url", "started")} == {"url": team.tracking_uri, "started": False}
    # The registry's experiment, in MLflow's model-training view, on the server itself.
    assert shown["experiment_url"].startswith(f"{team.tracking_uri}/#/experiments/")
    assert shown["experiment_url"].endswith("?workflowType=machine_learning")


def test_a_removed_run_s_files_are_removed_from_the_server(team):
    """A half-made variant's run is deleted with its files, on the server too (not left for `mlflow gc`)."""
    from registry import Registry

    reg = Registry(team.bob, tracking_uri=team.tracking_uri, lineage_url=team.lineage_url)
    run = reg.tracker.start_run("half-made (finetune)", tags={"gpt2reg.operation": "finetune"})
    note = team.bob / "note.txt"
    note.write_text("a partial copy")
    reg.tracker.log_artifact(run.info.run_id, note)
    [stored] = [p for p in team.served_artifacts.rglob("note.txt") if run.info.run_id in p.parts]
    reg.tracker.delete_run(run.info.run_id)
    assert not stored.exists()
    assert reg.tracker.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
    reg.close()


def test_unreachable_stores_are_one_line_naming_the_fix(gpt2reg, tmp_path, postgres_server):
    # `init` opens both stores (`list` reads the lineage database alone).
    nobody = f"http://127.0.0.1:{free_port()}"
    refused = gpt2reg("init", "--home", tmp_path / "h", "--tracking-uri", nobody,
                      "--lineage-url", postgres_server.create_database())
    assert refused.exit_code == 2, refused
    assert refused.stderr.count("\n") == 1 and f"cannot reach the MLflow tracking server at {nobody}" in refused.stderr
    assert "--tracking-uri" in refused.stderr

    for url, problem, fix in [
        ("postgresql://team@127.0.0.1:1/lineage", "refused", "start the database server"),
        (postgres_server.url("no_such_database"), 'database "no_such_database" does not exist', "createdb"),
    ]:
        failed = gpt2reg("list", "--home", tmp_path / "h", "--lineage-url", url)
        assert failed.exit_code == 2, failed
        assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("error: cannot connect to the database")
        assert problem in failed.stderr and fix in failed.stderr and "--lineage-url" in failed.stderr

    dead_tracking = gpt2reg("init", "--home", tmp_path / "h", "--tracking-uri", "postgresql://team@127.0.0.1:1/mlflow")
    assert dead_tracking.exit_code == 2, dead_tracking
    assert dead_tracking.stderr.count("\n") == 1 and "--tracking-uri" in dead_tracking.stderr

    not_a_url = gpt2reg("init", "--home", tmp_path / "h", "--tracking-uri", "127.0.0.1:5000")
    assert not_a_url.exit_code == 2 and "is not a URL" in not_a_url.stderr
