"""The main job, shortened: every step registered, perplexity at least halved, int8 close to float32,
a distilled student, task scores on the lineage, a comparison chart."""

from pathlib import Path
from urllib.parse import urlparse

import pytest


def test_quickstart_registers_every_step_and_halves_perplexity(gpt2reg, tmp_path):
    home = tmp_path / "home"
    # A shortened held-out text (about 1,250 tokens of 9,800) is scored by every step alike.
    result = gpt2reg("quickstart", "--steps", 30, "--heldout-tokens", 2000, "--json", "--home", home)
    assert result.exit_code == 0, result
    summary = result.json()
    base, tuned, adapter, merged, quantized, student = summary["variants"]
    assert base["operation"] == "create" and tuned["operation"] == "finetune" and tuned["parents"] == [base["ref"]]
    assert adapter["kind"] == "adapter" and adapter["parents"] == [tuned["ref"]]
    assert merged["operation"] == "merge" and merged["parents"] == [adapter["ref"]]
    assert tuned["metrics"]["perplexity"] < 0.5 * base["metrics"]["perplexity"]
    # The merged model scores what the adapter on its base scored, on the same text.
    assert merged["metrics"]["perplexity"] == pytest.approx(adapter["metrics"]["perplexity"], rel=1e-4)
    edge = summary["lineage"]["edges"][0]
    assert [e["operation"] for e in summary["lineage"]["edges"]] == ["finetune", "lora", "merge", "quantize", "distill"]
    # int8 weights: a smaller file that scores about what its float parent scores.
    assert quantized["parents"] == [merged["ref"]] and quantized["tags"]["quantization"] == "int8"
    assert quantized["size_bytes"] < 0.6 * merged["size_bytes"]
    assert quantized["metrics"]["perplexity"] == pytest.approx(merged["metrics"]["perplexity"], rel=0.02)
    # Parent and child were measured the same way on the same held-out text.
    assert edge["metric_deltas"]["perplexity"] == pytest.approx(
        tuned["metrics"]["perplexity"] - base["metrics"]["perplexity"], rel=1e-6)

    human = gpt2reg("lineage", tuned["ref"], "--home", home)
    assert base["ref"] in human.stdout and "perplexity" in human.stdout

    # The student: half the teacher's layers, both scored on the same held-out text.
    assert student["operation"] == "distill" and student["parents"] == [merged["ref"]]
    assert student["config"]["num_layers"] == merged["config"]["num_layers"] // 2
    assert student["metrics"]["teacher_perplexity"] == pytest.approx(merged["metrics"]["perplexity"], rel=1e-4)
    # Task scores on the variants and their change on the teacher-student edge.
    for variant in (base, merged, student):
        assert 0 <= variant["metrics"]["word_order.accuracy"] <= 1 and variant["metrics"]["bits_per_byte"] > 0
    distill_edge = summary["lineage"]["edges"][-1]
    assert distill_edge["metric_deltas"]["word_order.accuracy"] == pytest.approx(
        student["metrics"]["word_order.accuracy"] - merged["metrics"]["word_order.accuracy"])
    chart = Path(urlparse(summary["comparison"]["chart_uri"]).path)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [row["ref"] for row in summary["comparison"]["variants"]] == [
        base["ref"], tuned["ref"], merged["ref"], quantized["ref"], student["ref"]]

    check_mlflow_sees_the_variants_as_models(home, summary)


def check_mlflow_sees_the_variants_as_models(home, summary):
    """What an MLflow 3 user finds: the model-training view, a logged model per full variant ranked by
    held-out perplexity, the data sets each run used, versions made from logged models, model cards."""
    from huggingface_hub import ModelCard
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    from registry.tracking import local_path

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", registry_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpt2reg")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    ranked = client.search_logged_models(experiment_ids=[experiment.experiment_id],
                                         order_by=[{"field_name": "metrics.perplexity", "ascending": True}])
    full = [v for v in summary["variants"] if v["kind"] == "full"]
    assert len(full) == 5
    assert [model.name for model in ranked] == [v["name"] for v in sorted(full, key=lambda v: v["metrics"]["perplexity"])]
    by_name = {v["name"]: v for v in full}
    for model in ranked:
        variant = by_name[model.name]
        assert model.status == LoggedModelStatus.READY and model.source_run_id == variant["run_id"]
        perplexity = [m for m in model.metrics if m.key == "perplexity"][-1]
        assert perplexity.value == pytest.approx(variant["metrics"]["perplexity"], rel=1e-6)
        assert perplexity.dataset_name == "heldout.txt" and len(perplexity.dataset_digest) == 16
        version = client.get_model_version(model.name, str(variant["version"]))
        assert version.source == f"models:/{model.model_id}"
        card = ModelCard.load(local_path(model.artifact_location) / "README.md")
        assert card.data.gpt2_registry["ref"] == variant["ref"]
        if variant["parents"]:
            assert card.data.base_model == variant["parents"][0]

    tuned = by_name[summary["variants"][1]["name"]]
    # The fine-tuning run spans the training: its duration is at least the training's, not the recording's.
    run = client.get_run(tuned["run_id"])
    assert run.info.status == "FINISHED"
    assert (run.info.end_time - run.info.start_time) / 1000 >= tuned["metrics"]["train_seconds"]
    inputs = run.inputs.dataset_inputs
    roles = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for i in inputs}
    assert roles == {"train.txt": "training", "heldout.txt": "validation"}
    edge = summary["lineage"]["edges"][0]
    assert {d["name"]: d["context"] for d in edge["settings"]["datasets"]} == roles
    assert {d["digest"] for d in edge["settings"]["datasets"]} == {i.dataset.digest for i in inputs}


def test_quickstart_refuses_a_held_out_text_too_short_to_measure(gpt2reg, tmp_path):
    result = gpt2reg("quickstart", "--heldout-tokens", 100, "--home", tmp_path / "home")
    assert result.exit_code == 2 and "--heldout-tokens must be at least 500" in result.stderr
    assert not (tmp_path / "home").exists()
