"""LoRA adapters as first-class variants, and merging them back into a full model."""

import numpy as np
import pytest

from registry import Registry
from registry.errors import UsageError

PROBE = np.array([[464, 2068, 7586, 21831, 18045, 625, 262]])


def logits(lm):
    return np.asarray(lm({"token_ids": PROBE, "padding_mask": np.ones_like(PROBE)}))


@pytest.fixture(scope="module")
def adapter_family(tmp_path_factory, fixture_dir, text_file):
    reg = Registry(tmp_path_factory.mktemp("lora-home"))
    base = reg.import_("fx", str(fixture_dir))
    adapter = reg.run("lora", base, data=[str(text_file)], val_data=[str(text_file)], rank=4, alpha=8, steps=4,
                      batch_size=4, seq_len=32, lr=0.05)
    merged = reg.run("merge", adapter)
    return reg, base, adapter, merged


def test_the_adapter_variant_stores_only_the_adapter(adapter_family):
    reg, base, adapter, _ = adapter_family
    assert adapter.kind == "adapter" and adapter.operation == "lora" and adapter.parents == (base.ref,)
    assert adapter.size_bytes < 0.01 * base.size_bytes
    files = sorted(p.name for p in reg.preset_path(adapter).iterdir())
    assert files == ["adapter.json", "adapter.lora.h5", "gpt2reg.json"]
    assert adapter.tags["base_content_hash"] == base.content_hash
    # 2 layers x (query, value) x A (64, r) and B (r, 64 = 4 heads x 16), as PEFT factors them.
    assert adapter.parameters == 2 * 2 * (64 * 4 + 4 * 64)
    assert adapter.metrics["trainable_parameters"] == adapter.parameters
    edge = reg.lineage(adapter)["edges"][0]
    assert edge["settings"]["rank"] == 4 and edge["settings"]["alpha"] == 8 and edge["settings"]["targets"] == "query,value"


def test_loading_an_adapter_applies_it_to_its_base(adapter_family, text_file):
    reg, base, adapter, _ = adapter_family
    assert np.abs(logits(reg.load(adapter)) - logits(reg.load(base))).max() > 1e-3
    # The perplexity recorded at training time is the stored adapter's, not a stale model's.
    reloaded = reg.run("evaluate", adapter, data=[str(text_file)])
    assert reloaded.metrics["perplexity"] == pytest.approx(adapter.metrics["perplexity"], rel=1e-5)


def test_merge_gives_the_adapted_outputs_as_a_full_variant(adapter_family):
    reg, base, adapter, merged = adapter_family
    assert merged.kind == "full" and merged.operation == "merge" and merged.parents == (adapter.ref,)
    np.testing.assert_allclose(logits(reg.load(merged)), logits(reg.load(adapter)), atol=1e-5)
    assert merged.metrics["merge_max_abs_logit_diff"] <= 1e-5
    assert merged.content_hash != base.content_hash
    graph = reg.lineage(base)
    assert [(e["parent"], e["child"], e["operation"]) for e in graph["edges"]] == [
        (base.ref, adapter.ref, "lora"), (adapter.ref, merged.ref, "merge")]


def test_an_adapter_is_refused_on_other_base_weights(adapter_family):
    reg, _, adapter, merged = adapter_family
    with pytest.raises(UsageError, match="pinned to base weights"):
        reg.load(adapter, base=merged)


def test_merge_and_lora_refuse_what_makes_no_sense(adapter_family, gpt2reg, text_file):
    reg, base, adapter, _ = adapter_family
    home = ["--home", reg.home.path]
    result = gpt2reg("merge", base.ref, *home)
    assert result.exit_code == 2 and "is not an adapter" in result.stderr
    result = gpt2reg("lora", base.ref, "--data", text_file, "--rank", "0", *home)
    assert result.exit_code == 2 and "--rank must be at least 1" in result.stderr
    result = gpt2reg("lora", base.ref, "--data", text_file, "--targets", "mlp", *home)
    assert result.exit_code == 2 and "unknown --targets" in result.stderr
