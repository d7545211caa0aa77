"""The store commands through the CLI, and what MLflow's own client sees."""

import json

import pytest


def test_create_gpt2_reports_the_published_parameter_count(gpt2reg, tmp_path):
    result = gpt2reg("create", "base", "--config", "gpt2", "--json", "--home", tmp_path / "home")
    assert result.exit_code == 0, result
    assert result.json()["parameters"] == 124_439_808
    assert result.json()["ref"] == "base/1"


def test_list_show_lineage_alias_and_mlflow_agree(gpt2reg, family_home):
    home = ["--home", family_home]
    listed = gpt2reg("list", "--json", *home)
    assert listed.exit_code == 0, listed
    refs = [v["ref"] for v in listed.json()["variants"]]
    assert refs == ["base/1", "base-finetune/1"]

    shown = gpt2reg("show", "base-finetune", "--json", *home).json()
    for key in ("ref", "name", "version", "operation", "parents", "parameters", "size_bytes", "content_hash", "metrics"):
        assert key in shown
    assert shown["parents"] == ["base/1"] and shown["operation"] == "finetune"
    assert shown["metrics"]["perplexity"] < 50257 * 2

    graph = gpt2reg("lineage", "base/1", "--json", *home).json()
    assert [n["ref"] for n in graph["nodes"]] == ["base/1", "base-finetune/1"]
    (edge,) = graph["edges"]
    assert edge["parent"] == "base/1" and edge["child"] == "base-finetune/1" and edge["operation"] == "finetune"
    assert edge["settings"]["steps"] == 6
    assert "perplexity" in edge["metric_deltas"] and edge["metric_deltas"]["size_bytes"] == pytest.approx(
        shown["size_bytes"] - graph["nodes"][0]["size_bytes"])

    assert gpt2reg("alias", "base-finetune/1", "champion", *home).exit_code == 0
    assert gpt2reg("show", "base-finetune@champion", "--json", *home).json()["ref"] == "base-finetune/1"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{family_home / 'mlflow.db'}")
    versions = {(v.name, int(v.version)) for v in client.search_model_versions()}
    assert versions == {("base", 1), ("base-finetune", 1)}
    champion = client.get_model_version_by_alias("base-finetune", "champion")
    assert champion.tags["gpt2reg.parent"] == "base/1" and champion.tags["gpt2reg.operation"] == "finetune"
    run = client.get_run(champion.run_id)
    assert "train_loss" in run.data.metrics and len(client.get_metric_history(run.info.run_id, "train_loss")) == 6
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "lineage")}
    assert artifacts == {"lineage/lineage.json", "lineage/lineage.png"}
    picture = client.download_artifacts(run.info.run_id, "lineage/lineage.png")
    assert open(picture, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    logged = json.loads(open(client.download_artifacts(run.info.run_id, "lineage/lineage.json")).read())
    assert logged["edges"] == [{"parent": "base/1", "child": "base-finetune/1", "operation": "finetune", "role": "parent"}]

    tree = gpt2reg("lineage", "base-finetune", *home)
    assert "base/1" in tree.stdout and "base-finetune/1" in tree.stdout


def test_pyfunc_model_generates_through_mlflow(family_home):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{family_home / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{family_home / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/base-finetune/1")
    texts = model.predict(["The meaning of", "import"], params={"max_new_tokens": 4})
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)


def test_doctor_finds_nothing_wrong_in_a_healthy_store(gpt2reg, family_home):
    result = gpt2reg("doctor", "--json", "--home", family_home)
    assert result.exit_code == 0, result
    assert result.json()["problems"] == [] and result.json()["variants_checked"] == 2


def _fresh_import(home, fixture_dir):
    # A store of its own: MLflow records absolute artifact locations, so a copied home would share files.
    from registry import Registry

    reg = Registry(home)
    reg.import_("fx", str(fixture_dir))
    return reg


def test_doctor_finds_and_repairs_a_half_made_variant(gpt2reg, tmp_path, fixture_dir):
    from registry import Registry

    home = tmp_path / "home"
    reg = _fresh_import(home, fixture_dir)
    # A registration that died after MLflow registered the version but before the lineage commit.
    row = reg.lineage_store.get("fx", 1)
    reg.lineage_store.delete_variant("fx", 1)
    reg.close()
    found = gpt2reg("doctor", "--json", "--home", home)
    assert found.exit_code == 1
    assert [p["kind"] for p in found.json()["problems"]] == ["half-made-version"]
    repaired = gpt2reg("doctor", "--repair", "--json", "--home", home)
    assert repaired.json()["problems"][0]["repaired"] is True
    assert gpt2reg("doctor", "--json", "--home", home).json()["problems"] == []
    assert Registry(home).tracker.versions() == [] and row is not None


def test_damaged_weights_are_detected_before_loading(tmp_path, fixture_dir, gpt2reg, monkeypatch):
    from backends import keras_gpt2
    from registry.errors import RegistryError

    reg = _fresh_import(tmp_path / "home", fixture_dir)
    weights = reg.preset_path("fx") / "model.weights.h5"
    intact = weights.read_bytes()
    opened = []
    monkeypatch.setattr(keras_gpt2, "load", lambda *args, **kwargs: opened.append(args))
    for damage in ("one flipped byte", "truncated"):
        data = bytearray(intact)
        if damage == "truncated":
            del data[len(data) // 2 :]
        else:
            data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        with pytest.raises(RegistryError, match="do not match their recorded hash"):
            reg.get("fx").load()
        result = gpt2reg("generate", "fx", "Hello", "--home", reg.home.path)
        assert result.exit_code == 1 and "do not match their recorded hash" in result.stderr, result
        assert result.stderr.count("\n") == 1
        assert opened == [], "the damaged file was handed to Keras"


def test_home_comes_from_the_environment_when_not_given(gpt2reg, family_home, monkeypatch):
    monkeypatch.setenv("GPT2REG_HOME", str(family_home))
    refs = [v["ref"] for v in gpt2reg("list", "--json").json()["variants"]]
    assert {"base/1", "base-finetune/1"} <= set(refs)
