"""The LoRA factorization: size, exact merge, dropout only while training."""

import numpy as np
import pytest

from backends import keras_gpt2, lora
from backends.configs import get_config

PROBE = np.array([[464, 2068, 7586, 21831, 18045, 625, 262]])


def logits(lm, training=False):
    return np.asarray(lm({"token_ids": PROBE, "padding_mask": np.ones_like(PROBE)}, training=training))


def tiny():
    return keras_gpt2.build({**get_config("tiny"), "dropout": 0.0}, seed=0)


def test_rank_8_on_query_and_value_trains_under_one_percent_of_gpt2():
    lm = keras_gpt2.build(get_config("gpt2"), seed=0)
    lora.enable(lm, rank=8, alpha=16, targets="query,value")
    trainable, total = lora.parameter_counts(lm)
    assert trainable == 12 * 2 * (768 * 8 + 8 * 768)  # the count PEFT gives for the same targets
    assert total == 124_439_808 + trainable
    assert trainable / total < 0.01


@pytest.mark.parametrize("targets", ["query,value", "attention", "all"])
def test_merged_weights_give_the_adapted_outputs(targets):
    adapted = tiny()
    before = logits(adapted)
    lora.enable(adapted, rank=4, alpha=8, targets=targets)
    np.testing.assert_array_equal(logits(adapted), before)  # B starts at zero: the base model exactly
    rng = np.random.default_rng(0)
    for layer in lora._weighted_layers(adapted.backbone):
        if lora.factor_variables(layer):
            _, b = lora.factor_variables(layer)
            b.assign(rng.normal(size=b.shape) * 0.1)
    assert np.abs(logits(adapted) - before).max() > 1e-2
    merged = tiny()
    lora.merge_into(adapted, merged)
    np.testing.assert_allclose(logits(merged), logits(adapted), atol=1e-5)


def test_adapter_dropout_acts_only_in_training():
    lm = tiny()
    lora.enable(lm, rank=4, alpha=8, targets="query,value", dropout=0.5)
    for layer in lora._weighted_layers(lm.backbone):
        if lora.factor_variables(layer):
            _, b = lora.factor_variables(layer)
            b.assign(np.ones(b.shape, "float32"))
    np.testing.assert_array_equal(logits(lm), logits(lm))
    assert np.abs(logits(lm, training=True) - logits(lm)).max() > 1e-3


def test_an_int8_base_keeps_its_kernels_frozen_and_int8():
    lm = tiny()
    lora.enable(lm, rank=4, alpha=8, targets="all", base_quantization="int8")
    trainable = lm.backbone.trainable_weights
    assert trainable and all("lora" in w.path for w in trainable)
    query = next(l for l in lora._weighted_layers(lm.backbone) if l.name == "query")
    assert query.quantization_mode == "int8" and "int8" in str(query._kernel.dtype)


@pytest.mark.parametrize("base_quantization", [None, "int8"])
@pytest.mark.parametrize("targets", ["attention", "all"])
def test_every_decoder_computes_the_adapted_model(targets, base_quantization):
    """The decoders read kernels instead of calling the layers: each must see the update of every
    kind of adapted layer (fused query/key/value, attention output, the feed-forward pair and its GELU)."""
    from backends.decoding import decoder_for

    lm = tiny()
    plain = logits(lm)
    lora.enable(lm, rank=4, alpha=8, targets=targets, base_quantization=base_quantization)
    rng = np.random.default_rng(1)
    for layer in lora._weighted_layers(lm.backbone):
        if lora.factor_variables(layer):
            _, b = lora.factor_variables(layer)
            b.assign(rng.normal(size=b.shape) * 0.1)
    adapted = logits(lm)[0, -1]
    assert np.abs(adapted - plain[0, -1]).max() > 0.05  # the update moved the logits
    runtimes = ["keras", "onnx"] + (["litert"] if base_quantization is None else [])
    for runtime in runtimes:
        decoded = decoder_for(lm, runtime=runtime).start([PROBE[0].tolist()], max_new_tokens=1).logits[0]
        np.testing.assert_allclose(decoded, adapted, atol=1e-4, err_msg=runtime)
