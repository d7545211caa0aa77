"""A home moved, copied or restored elsewhere opens from its new place and reads nothing of its old one.

One home holds every kind of variant (an import, a LoRA adapter, its merge, an int8
quantization, a Keras export, an alias). It is moved (a rename), then copied and
the original deleted; from each new place the CLI in fresh processes and the SDK
list, show and generate every variant with the greedy tokens of before, evaluate,
serve through MLflow's pyfunc and register a new variant. The old place is gone
each time, so anything that still read it would fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from registry import Registry
from tests.conftest import REPO
from tests.registry.conftest import RUNNER

PROMPT = "The registry"
NEW_TOKENS = 6
REFS = ("fx/1", "ad/1", "merged/1", "q8/1", "fx-keras/1", "merged@champion")
KERAS_REFS = ("fx-keras/1",)  # a Keras export generates through TensorFlow, seconds to import
MOVED_NOTE = "note: this registry was moved or copied from"


@pytest.fixture(scope="module")
def built(tmp_path_factory, fixture_dir, text_file):
    """The home at its first place, and what it answered there: greedy tokens and `list --json`."""
    root = tmp_path_factory.mktemp("moving").resolve()
    eval_text = root / "eval.txt"
    eval_text.write_text("The registry keeps every variant of the model, with where it came from.\n", encoding="utf-8")
    quick = dict(eval_data=[str(eval_text)], new_tokens=4)  # the before/after measurements, kept short
    reg = Registry(root / "first-place")
    base = reg.import_("fx", str(fixture_dir))
    adapter = reg.run("lora", base, name="ad", data=[str(text_file)], rank=4, steps=4, batch_size=4, seq_len=32,
                      lr=0.05)
    merged = reg.run("merge", adapter, name="merged")
    reg.run("quantize", base, name="q8", mode="int8", **quick)
    reg.run("export", base, name="fx-keras", format="keras", out=str(root / "exported"), **quick)
    reg.alias(merged, "champion")
    tokens = {ref: reg.run("generate", ref, prompts=[PROMPT], max_new_tokens=NEW_TOKENS).output["outputs"][0]
              for ref in REFS}
    listed = sorted(variant.ref for variant in reg.list())
    reg.close()
    return {"root": root, "home": reg.home.path, "outputs": tokens, "listed": listed, "text": text_file}


@pytest.fixture(scope="module")
def moved(built):
    """The home renamed to another folder (as `mv` does)."""
    target = built["root"] / "moved-here"
    shutil.move(built["home"], target)
    return target


@pytest.fixture(scope="module")
def copied(built, moved):
    """The moved home copied (as a restore from a backup does); the home it was copied from stays."""
    target = built["root"] / "copied-here"
    shutil.copytree(moved, target)
    return target


def started(*args) -> subprocess.Popen:
    """`gpt2reg ARGS` started in a fresh interpreter, as a user's shell runs it, not waited for."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", RUNNER, os.devnull, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment)


def artifact_locations(home) -> list[str]:
    """Every location MLflow and the lineage store keep for the home's artifacts, as stored (not those
    of MLflow's own Default experiment, which the registry never uses)."""
    import sqlite3

    from registry.relocation import MLFLOW_LOCATIONS

    found = []
    with sqlite3.connect(home / "mlflow.db") as mlflow_db:
        for table, column in MLFLOW_LOCATIONS:
            rows = mlflow_db.execute(f"SELECT {column} FROM {table}" + (" WHERE name = 'gpt2reg'"
                                                                         if table == "experiments" else ""))
            # A `models:/<id>` source names a logged model, whose own location is listed with it.
            found += [row[0] for row in rows if row[0] and not row[0].startswith("models:/")]
    with sqlite3.connect(home / "lineage.db") as lineage_db:
        found += [row[0] for row in lineage_db.execute("SELECT artifact_uri FROM variants") if row[0]]
    return found


def check_generates_as_before(run_cli, gpt2reg, home, built):
    for ref in REFS:
        args = ("generate", ref, PROMPT, "--max-new-tokens", NEW_TOKENS, "--json", "--home", home)
        if ref in KERAS_REFS:  # in this process, where TensorFlow is loaded already
            done = gpt2reg(*args)
            assert done.exit_code == 0, (ref, done)
        else:
            done = run_cli(*args)
            assert done.code == 0, (ref, done)
        assert json.loads(done.stdout)["outputs"][0]["token_ids"] == built["outputs"][ref]["token_ids"], ref


def test_doctor_reports_a_moved_home_and_relocate_rewrites_it(built, moved, gpt2reg):
    before = artifact_locations(moved)
    found = gpt2reg("doctor", "--home", moved, "--json")
    assert found.exit_code == 1, found
    problems = found.json()["problems"]
    assert [p["kind"] for p in problems] == ["moved-home"]
    assert str(built["home"]) in problems[0]["detail"] and "gpt2reg doctor --relocate" in problems[0]["detail"]
    assert artifact_locations(moved) == before  # reporting changes nothing

    relocated = gpt2reg("doctor", "--relocate", "--home", moved, "--json")
    assert relocated.exit_code == 0, relocated
    report = relocated.json()
    assert report["problems"] == [] and report["variants_checked"] == 5
    assert report["relocated"]["from"] == str(built["home"] / "artifacts")
    assert report["relocated"]["to"] == str(moved / "artifacts")
    rewritten = report["relocated"]["rewritten"]
    assert rewritten["experiments.artifact_location"] == 1
    assert rewritten["runs.artifact_uri"] == rewritten["lineage.variants.artifact_uri"] == 5
    # A full variant's version comes from its logged model (source `models:/<id>`); the others from their runs.
    logged = rewritten["logged_models.artifact_location"]
    assert logged >= 1 and rewritten["model_versions.source"] + logged == 5
    assert rewritten["model_versions.storage_location"] == 5
    locations = artifact_locations(moved)
    assert len(locations) == len(before) and all(str(moved / "artifacts") in loc for loc in locations)

    again = gpt2reg("doctor", "--relocate", "--home", moved)
    assert again.exit_code == 0 and "nothing to relocate" in again.stdout, again


def test_a_moved_home_lists_shows_and_generates_every_variant_as_before(built, moved, gpt2reg, run_cli):
    listed = run_cli("list", "--json", "--home", moved)
    assert listed.code == 0, listed
    assert sorted(v["ref"] for v in json.loads(listed.stdout)["variants"]) == built["listed"]
    shown = run_cli("show", "merged@champion", "--json", "--home", moved)
    assert shown.code == 0, shown
    document = json.loads(shown.stdout)
    assert document["ref"] == "merged/1" and document["aliases"] == ["champion"]
    assert document["preset_path"].startswith(str(moved / "artifacts"))
    check_generates_as_before(run_cli, gpt2reg, moved, built)

    evaluated = gpt2reg("evaluate", "q8", "--data", built["text"], "--json", "--home", moved)
    assert evaluated.exit_code == 0, evaluated
    assert evaluated.json()["tokens"] > 0
    assert not built["home"].exists()


def test_a_copy_relocates_once_and_leaves_its_original_alone(built, moved, copied, run_cli):
    # Two processes open the copy at once: one rewrites it, the other finds it done.
    processes = [started("list", "--json", "--home", copied) for _ in range(2)]
    answers = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], answers
    listed = [sorted(v["ref"] for v in json.loads(out)["variants"]) for out, _ in answers]
    assert listed == [built["listed"], built["listed"]]
    assert sum(MOVED_NOTE in err for _, err in answers) == 1, answers
    assert all(str(copied / "artifacts") in loc for loc in artifact_locations(copied))

    # The original still names its own place, and still works from it.
    assert all(str(moved / "artifacts") in loc for loc in artifact_locations(moved))
    original = run_cli("doctor", "--home", moved, "--json")
    assert original.code == 0 and json.loads(original.stdout)["problems"] == [], original
    reg = Registry(moved)
    assert reg.run("generate", "q8", prompts=[PROMPT], max_new_tokens=NEW_TOKENS).output["outputs"][0]["token_ids"] \
        == built["outputs"]["q8/1"]["token_ids"]
    assert reg.preset_path("fx").is_relative_to(moved)
    reg.close()


def test_a_copy_of_a_deleted_home_serves_and_registers_from_its_own_place(built, moved, copied, monkeypatch, run_cli,
                                                                           gpt2reg):
    import mlflow

    from registry.inference import KEPT

    shutil.rmtree(moved)  # anything that still read the original fails from here on
    KEPT.release()  # nor does this process answer from a model it loaded from there
    kept_graphs = sorted(path.name for path in (copied / "runtimes").iterdir())
    check_generates_as_before(run_cli, gpt2reg, copied, built)
    # The runtime graphs kept in the home read weight files beside them: the copy's own, reused as they are.
    assert kept_graphs and sorted(path.name for path in (copied / "runtimes").iterdir()) == kept_graphs

    # The copy's store, for this test only: a URI an earlier test of this process set with
    # mlflow.set_tracking_uri or set_registry_uri (MLflow keeps both, and their variables) would win.
    import mlflow.tracking._model_registry.utils as registry_uri
    import mlflow.tracking._tracking_service.utils as tracking_uri

    monkeypatch.setattr(tracking_uri, "_tracking_uri", None)
    monkeypatch.setattr(registry_uri, "_registry_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copied / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{copied / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/merged/1")
    assert model.predict([PROMPT], params={"max_new_tokens": NEW_TOKENS}) == [built["outputs"]["merged/1"]["text"]]

    reg = Registry(copied)
    remerged = reg.run("merge", "ad/1", name="remerged")
    assert remerged.parents == ("ad/1",)
    assert reg.preset_path(remerged).is_relative_to(copied / "artifacts")
    assert [edge["parent"] for edge in reg.lineage(remerged)["edges"] if edge["child"] == remerged.ref] == ["ad/1"]
    assert reg.run("generate", remerged, prompts=[PROMPT], max_new_tokens=NEW_TOKENS).output["outputs"][0][
        "token_ids"] == built["outputs"]["merged/1"]["token_ids"]
    reg.close()
    assert all(str(copied / "artifacts") in loc for loc in artifact_locations(copied))
    assert not moved.exists() and not built["home"].exists()  # nothing wrote to an old place either


def test_doctor_repair_relocates_a_copy_and_removes_none_of_its_variants(built, copied, tmp_path, gpt2reg):
    # Unrelocated, every variant's files would read as missing from the copy: --repair must relocate first.
    variants = sorted(v["ref"] for v in gpt2reg("list", "--json", "--home", copied).json()["variants"])
    copy = tmp_path / "repaired-here"
    shutil.copytree(copied, copy, ignore=shutil.ignore_patterns("runtimes"))
    repaired = gpt2reg("doctor", "--repair", "--home", copy, "--json")
    assert repaired.exit_code == 0, repaired
    report = repaired.json()
    assert report["problems"] == [] and report["relocated"]["to"] == str(copy / "artifacts")
    assert sorted(v["ref"] for v in gpt2reg("list", "--json", "--home", copy).json()["variants"]) == variants
    assert set(built["listed"]) <= set(variants)
