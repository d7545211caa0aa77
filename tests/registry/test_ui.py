"""`gpt2reg ui` serves the MLflow UI and API on the home's stores."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from tests.conftest import free_port


class UiServer:
    """`gpt2reg ui` on a free port of 127.0.0.1, started as a user starts it."""

    def __init__(self, home):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # A file, not a pipe: the server logs every request, and a full pipe would stall it.
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "registry.cli", "ui", "--home", str(home), "--host", "127.0.0.1", "--port", str(port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def output(self, last: int | None = 3000) -> str:
        """What the server printed: its last `last` characters (None: all of it)."""
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        return text if last is None else text[-last:]

    def registered_models(self, timeout: float = 300) -> list[str]:
        """The names the server's registry API lists, once it answers (MLflow starts several
        processes: a minute or more on a busy machine)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"gpt2reg ui exited: {self.output()}"
            try:
                with urllib.request.urlopen(f"{self.url}/api/2.0/mlflow/registered-models/search", timeout=5) as answer:
                    return sorted(m["name"] for m in json.load(answer).get("registered_models", []))
            except OSError:
                time.sleep(0.5)  # still starting
        raise AssertionError(f"gpt2reg ui did not answer at {self.url} within {timeout:.0f} s")

    def stop(self, grace: float = 10) -> None:
        """Stop the server and every process it started (MLflow's workers and job runners)."""
        group = self.process.pid  # start_new_session: the server leads its own process group
        os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.process.poll()  # reaps the server itself once it exits
            try:
                os.killpg(group, 0)  # raises once no process of the group is left
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            # MLflow's job consumers can take half a minute to wind down on a busy machine;
            # a test's server holds nothing worth waiting for.
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)
        self.log.close()


def test_ui_lists_the_registered_variants(family_home):
    from registry import Registry

    expected = sorted({v.name for v in Registry(family_home).list()})
    assert {"base", "base-finetune"} <= set(expected)
    server = UiServer(family_home)
    try:
        assert server.registered_models() == expected
        with urllib.request.urlopen(f"{server.url}/", timeout=5) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        server.stop()


# ---------------------------------------------------------------- what each variant's run shows


def _table(client, run_id: str, artifact_file: str) -> list[dict]:
    """An MLflow table artifact (written by `log_table`, pandas' "split" layout) as rows."""
    logged = json.loads(open(client.download_artifacts(run_id, artifact_file), encoding="utf-8").read())
    return [dict(zip(logged["columns"], row)) for row in logged["data"]]


def _lineage_json(client, run_id: str) -> dict:
    return json.loads(open(client.download_artifacts(run_id, "lineage/lineage.json"), encoding="utf-8").read())


def test_every_variant_run_shows_its_sample_generations(family_home):
    from registry import Registry
    from registry.capability import SAMPLE_NEW_TOKENS, SAMPLE_PROMPTS

    reg = Registry(family_home)
    client = reg.tracker.client
    for variant in reg.list():
        rows = _table(client, variant.run_id, "samples.json")
        assert [row["prompt"] for row in rows] == list(SAMPLE_PROMPTS), variant.ref
        assert all(1 <= row["new_tokens"] <= SAMPLE_NEW_TOKENS and isinstance(row["text"], str) for row in rows)
    # The samples are the variant's own greedy text: what `generate` gives from its recorded weights.
    tuned = reg.get("base-finetune/1")
    generated = reg.run("generate", tuned, prompts=list(SAMPLE_PROMPTS), max_new_tokens=SAMPLE_NEW_TOKENS,
                        runtime="keras", xla=False)
    assert [row["text"] for row in _table(client, tuned.run_id, "samples.json")] == \
        [item["text"] for item in generated.output["outputs"]]


def test_a_version_links_its_parent_and_a_parents_picture_shows_its_children(family_home):
    from registry import Registry

    reg = Registry(family_home)
    client = reg.tracker.client
    child = client.get_model_version("base-finetune", "1")
    assert child.tags["gpt2reg.parent"] == "base/1" and child.tags["gpt2reg.operation"] == "finetune"
    assert "[base/1](#/models/base/versions/1)" in child.description  # the UI's route to a version page

    base = reg.get("base/1")
    drawn = _lineage_json(client, base.run_id)
    assert drawn["root"] == "base/1" and drawn["children"] == 1 and drawn["omitted_children"] == {"base/1": 0}
    assert {"parent": "base/1", "child": "base-finetune/1"} in [
        {"parent": e["parent"], "child": e["child"]} for e in drawn["edges"]]
    with open(client.download_artifacts(base.run_id, "lineage/lineage.png"), "rb") as picture:
        assert picture.read(8) == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- parents' pictures, with the store alone


def _stamp_home(tmp_path):
    from registry import Registry
    from tests.registry import store_only_plugin

    home = tmp_path / "home"
    store_only_plugin.seed_home(home)
    store_only_plugin.install()
    return Registry(home)


def _drawn_children(reg, ref: str) -> tuple[list[str], dict]:
    variant = reg.get(ref)
    drawn = _lineage_json(reg.tracker.client, variant.run_id)
    return [e["child"] for e in drawn["edges"] if e["parent"] == ref], drawn


def test_a_parents_picture_draws_its_newest_children_and_counts_the_others(tmp_path, monkeypatch):
    from registry import recorder

    monkeypatch.setattr(recorder, "CHILDREN_DRAWN", 2)
    reg = _stamp_home(tmp_path)
    for number in range(4):
        reg.run("stamp", "base/1", name="child", tag=str(number))
    children, drawn = _drawn_children(reg, "base/1")
    assert children == ["child/3", "child/4"]
    assert drawn["children"] == 4 and drawn["omitted_children"] == {"base/1": 2}
    # The children are read together, and each is drawn with the document a read of it alone gives.
    documents = {node["ref"]: node for node in drawn["nodes"]}
    assert [documents[ref] for ref in children] == [json.loads(json.dumps(reg.get(ref).to_dict(), default=str))
                                                    for ref in children]
    # Saved with a palette: the picture keeps its layout's size (2 generations; 2 children and "+2 more")
    # and its fills exactly (the parent's highlight, a child's, the "+N more" node's, the background).
    from PIL import Image

    from registry.lineage_picture import COLUMN_WIDTH, MARGIN, ROW_HEIGHT

    with Image.open(reg.tracker.client.download_artifacts(reg.get("base/1").run_id, "lineage/lineage.png")) as picture:
        assert picture.mode == "P" and picture.size == (2 * MARGIN + 2 * COLUMN_WIDTH, 2 * MARGIN + 3 * ROW_HEIGHT)
        colours = {colour for _, colour in picture.convert("RGB").getcolors(256)}
    assert {(0xff, 0xe8, 0xb0), (0xe8, 0xf0, 0xff), (0xee, 0xee, 0xee), (0xff, 0xff, 0xff)} <= colours
    # A child's own picture draws its ancestry.
    assert _drawn_children(reg, "child/4")[1]["edges"][-1] == {
        "parent": "base/1", "child": "child/4", "operation": "finetune", "role": "parent"}


def test_an_older_reading_never_replaces_a_newer_picture(tmp_path):
    from registry.recorder import Recorder, _now

    reg = _stamp_home(tmp_path)
    reg.run("stamp", "base/1", name="child", tag="1")
    before_second = _now()
    reg.run("stamp", "base/1", name="child", tag="2")
    folder = tmp_path / "late"
    folder.mkdir()
    # A process that committed its child before the second one and redraws only now finds the
    # picture drawn from a later reading, which holds its child already: it leaves it alone.
    children, drawn = _drawn_children(reg, "base/1")
    assert children == ["child/1", "child/2"] and drawn["lineage_read_at"] > before_second
    recorder = Recorder(reg.home, reg.tracker, reg.lineage_store)
    recorder._refresh_lineage_picture(reg.get("base/1"), folder, committed_at=before_second)
    assert _drawn_children(reg, "base/1")[1] == drawn and list(folder.iterdir()) == []
    # One committed after that reading is not in the picture yet: it redraws.
    recorder._refresh_lineage_picture(reg.get("base/1"), folder, committed_at=_now())
    assert _drawn_children(reg, "base/1")[1]["lineage_read_at"] > drawn["lineage_read_at"]


def test_a_failed_redraw_of_a_parents_picture_keeps_the_new_variant(tmp_path, monkeypatch, caplog, gpt2reg):
    from registry import lineage_picture
    from tests.registry.store_only_plugin import incomplete_variants

    reg = _stamp_home(tmp_path)
    reg.run("stamp", "base/1", name="child", tag="1")
    draw = lineage_picture.draw

    def fail_for_the_parent(graph, destination):
        if graph.root == "base/1":
            raise OSError("the disk hiccupped")
        return draw(graph, destination)

    monkeypatch.setattr(lineage_picture, "draw", fail_for_the_parent)
    new = reg.run("stamp", "base/1", name="child", tag="2")
    assert new.ref == "child/2" and reg.get("child/2").content_hash == new.content_hash
    assert "lineage picture of base/1 was not redrawn (the disk hiccupped)" in caplog.text
    assert _drawn_children(reg, "base/1")[0] == ["child/1"]  # the old picture, whole
    assert incomplete_variants(reg.home.path) == []
    assert gpt2reg("doctor", "--json", "--home", reg.home.path).json()["problems"] == []


def _register_and_die_between_the_picture_renames(home: str) -> None:
    """One stamp registration, killed (SIGKILL) after the parent's new PNG replaced the old
    one and before its JSON did: the variant is committed, the picture half-refreshed."""
    from pathlib import Path

    from registry import Registry
    from tests.registry import store_only_plugin

    store_only_plugin.install()
    replace = os.replace

    def replace_then_die(source, destination):
        replace(source, destination)
        if Path(destination).name == "lineage.png":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_die
    Registry(home).run("stamp", "base/1", name="child", tag="killed")


def test_a_redraw_killed_midway_loses_nothing_and_the_next_one_completes_it(forkserver, tmp_path, gpt2reg):
    from tests.registry.store_only_plugin import incomplete_variants

    reg = _stamp_home(tmp_path)
    reg.run("stamp", "base/1", name="child", tag="1")
    worker = forkserver.Process(target=_register_and_die_between_the_picture_renames, args=(str(reg.home.path),))
    worker.start()
    worker.join()
    assert worker.exitcode == -signal.SIGKILL
    assert [v.ref for v in reg.list()] == ["base/1", "child/1", "child/2"]  # committed before the kill
    repaired = gpt2reg("doctor", "--repair", "--json", "--home", reg.home.path).json()["problems"]
    assert [p["kind"] for p in repaired] == ["staging-leftover"]  # the killed process's work folder
    assert incomplete_variants(reg.home.path) == []
    reg.run("stamp", "base/1", name="child", tag="3")
    assert _drawn_children(reg, "base/1")[0] == ["child/1", "child/2", "child/3"]
