"""The Python SDK, as SPEC section 6 shows it."""

import pytest

from registry import Registry
from registry.errors import NotFoundError


def test_get_load_lineage_and_search(family_home):
    reg = Registry(family_home)
    tuned = reg.get("base-finetune")
    assert tuned.ref == "base-finetune/1" and tuned.parent == "base/1" and tuned.uri == "models:/base-finetune/1"
    assert tuned.metrics["perplexity"] > 0 and tuned.parameters == 3_324_736
    lm = tuned.load()
    assert type(lm).__name__ == "GPT2CausalLM" and lm.backbone.num_layers == 2
    # KerasHub's own generate works on the loaded model (its context fits the preprocessor).
    assert isinstance(lm.generate("Hello", max_length=12), str)

    graph = reg.lineage("base/1")
    assert [edge["child"] for edge in graph["edges"]] == ["base-finetune/1"]

    best = reg.search(metric="perplexity", max_size_mb=50)
    assert best.ref == "base-finetune/1"
    assert reg.search(metric="perplexity", max_size_mb=1) is None
    with pytest.raises(NotFoundError):
        reg.get("base/7")


def test_run_finetune_returns_a_new_variant_and_evaluate_returns_figures(tmp_path, text_file):
    # A registry of its own: the shared family must stay as other files expect it.
    reg = Registry(tmp_path / "home")
    parent = reg.create("base", config="tiny", seed=0)
    child = reg.run("finetune", parent, name="sdk-child", device="cpu", data=[str(text_file)], steps=2,
                    batch_size=2, seq_len=16)
    assert child.ref == "sdk-child/1" and child.parents == ("base/1",)
    assert child.content_hash != parent.content_hash
    figures = reg.run("evaluate", child, data=[str(text_file)])
    assert figures.metrics["tokens"] > 100 and figures.metrics["perplexity"] > 1
    # The same weights give the same figure: evaluation is deterministic.
    again = reg.run("evaluate", child, data=[str(text_file)])
    assert again.metrics["perplexity"] == pytest.approx(figures.metrics["perplexity"], rel=1e-6)


def test_sampling_is_reproducible_with_a_seed(imported_home):
    reg = Registry(imported_home)
    first = reg.run("generate", "fx", prompts=["Hello there"], sampler="top_k", top_k=20, seed=7, max_new_tokens=8)
    second = reg.run("generate", "fx", prompts=["Hello there"], sampler="top_k", top_k=20, seed=7, max_new_tokens=8)
    other = reg.run("generate", "fx", prompts=["Hello there"], sampler="top_k", top_k=20, seed=8, max_new_tokens=8)
    assert first.output["outputs"][0]["token_ids"] == second.output["outputs"][0]["token_ids"]
    assert first.output["outputs"][0]["token_ids"] != other.output["outputs"][0]["token_ids"]


def test_a_keras_hub_preset_folder_imports_with_the_same_weights(imported_home, tmp_path):
    import numpy as np

    reg = Registry(tmp_path / "home")
    source = Registry(imported_home)
    copy = reg.import_("again", str(source.preset_path("fx")))
    assert copy.operation == "import" and copy.parameters == source.get("fx").parameters
    ids = np.array([[464, 2068, 7586, 21831]])
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    np.testing.assert_allclose(np.asarray(copy.load()(inputs)), np.asarray(source.get("fx").load()(inputs)), atol=1e-6)
