"""The onnxruntime and LiteRT decoders: same tokens as Keras in float32, a close int8 copy, a sound cache."""

import numpy as np
import pytest

from backends import generation, keras_gpt2
from backends.decoding import decoder_for, resolve_runtime
from backends.fast_decoding import RuntimeDecoder, next_token_log_probs


def keras_log_probs(lm, ids):
    batch = np.array([ids], dtype="int32")
    logits = np.asarray(lm({"token_ids": batch, "padding_mask": np.ones_like(batch)}), dtype=np.float64)[0, :-1]
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return log_probs[np.arange(len(ids) - 1), ids[1:]]


@pytest.mark.parametrize("runtime", ["onnx", "litert"])
def test_a_text_decoded_token_by_token_scores_as_one_forward_pass(lm, runtime, tmp_path):
    """Every step reads the cache the steps before it wrote: 100 steps, past one prompt bucket and
    one cache bucket, give the log-probabilities of a single full forward pass."""
    ids = list(np.random.default_rng(0).integers(0, 50256, size=100))
    decoder = RuntimeDecoder.build(lm, runtime, tmp_path)
    np.testing.assert_allclose(next_token_log_probs(decoder, ids), keras_log_probs(lm, ids), atol=1e-4)


def test_the_graph_is_built_once_per_weights_and_a_damaged_copy_is_rebuilt(lm, tmp_path, cases):
    RuntimeDecoder.build(lm, "onnx", tmp_path)
    (graph,) = tmp_path.glob("decoder-*.onnx")
    built = graph.stat().st_mtime_ns
    RuntimeDecoder.build(lm, "onnx", tmp_path)
    assert graph.stat().st_mtime_ns == built  # reused, not written again
    graph.write_bytes(graph.read_bytes()[:1000])  # a truncated file
    decoder = RuntimeDecoder.build(lm, "onnx", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [graph.name]  # rebuilt in place, nothing partial left
    state = decoder.start([cases[0]["token_ids"]], max_new_tokens=1)
    assert int(state.logits[0].argmax()) == cases[0]["greedy_16"][0]


def test_a_graph_too_large_for_one_file_keeps_its_weights_beside_it(lm, tmp_path, cases, monkeypatch):
    """Past protobuf's 2 GB (`gpt2-large` in float32) the weights go to a file beside the graph;
    here the limit is lowered so that a tiny model crosses it."""
    from backends import fast_decoding

    monkeypatch.setattr(fast_decoding, "GRAPH_BYTES_IN_ONE_FILE", 10_000)
    decoder = RuntimeDecoder.build(lm, "onnx", tmp_path)
    graph, weights = tmp_path / f"decoder-{decoder.digest}.onnx", tmp_path / f"decoder-{decoder.digest}.weights"
    assert sorted(tmp_path.iterdir()) == [graph, weights]
    assert graph.stat().st_size < 100_000 < weights.stat().st_size  # the graph holds no weights
    built = graph.stat().st_mtime_ns
    kept = RuntimeDecoder.build(lm, "onnx", tmp_path)
    assert graph.stat().st_mtime_ns == built  # opened as kept, its weights read from beside it
    state = kept.start([cases[0]["token_ids"]], max_new_tokens=16)
    tokens = [int(state.logits[0].argmax())]
    while len(tokens) < 16:
        logits, _ = kept.step(state, tokens[-1:])
        tokens.append(int(logits[0].argmax()))
    assert tokens == cases[0]["greedy_16"]  # transformers' greedy tokens


def test_auto_picks_onnx_for_float32_and_int8_and_keras_for_the_rest(fixture_dir, lm):
    assert resolve_runtime(lm) == "onnx"
    assert resolve_runtime(lm, xla=False) == "keras"  # an XLA choice is a Keras setting
    int8 = keras_gpt2.load(fixture_dir)
    int8.backbone.quantize("int8")
    int4 = keras_gpt2.load(fixture_dir)
    int4.backbone.quantize("int4")
    assert resolve_runtime(int8) == "onnx" and resolve_runtime(int4) == "keras"
    assert resolve_runtime(keras_gpt2.load(fixture_dir, dtype="bfloat16")) == "keras"
    from registry.errors import UsageError

    with pytest.raises(UsageError, match="use --runtime keras"):
        decoder_for(int4, runtime="onnx")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_file):
    """A tiny model trained on the embedded corpus sample, with held-out text of 127 tokens."""
    from backends.tokenizer import encode
    from registry import Registry

    home = tmp_path_factory.mktemp("fast-decoding")
    text = text_file.read_text(encoding="utf-8")
    split = int(len(text) * 0.9)
    (home / "train.txt").write_text(text[:split], encoding="utf-8")
    reg = Registry(home / "home")
    variant = reg.run("finetune", reg.create("base", config="tiny", seed=0), data=[str(home / "train.txt")],
                      steps=40, batch_size=8, seq_len=32, lr=3e-3)
    return variant.load(), encode(text[split:])[:127]


def test_int8_through_onnxruntime_stays_within_2_percent_of_float32_perplexity(trained, cases):
    float_lm, held_out = trained
    int8_lm = keras_gpt2.build(keras_gpt2.get_config("tiny"))
    int8_lm.backbone.set_weights(float_lm.backbone.get_weights())
    int8_lm.backbone.quantize("int8")
    decoder = decoder_for(int8_lm, runtime="onnx")
    assert decoder.precision == "int8"
    float_perplexity = np.exp(-keras_log_probs(float_lm, held_out).mean())
    int8_perplexity = np.exp(-next_token_log_probs(decoder, held_out).mean())
    assert float_perplexity < 5000  # trained: far below the vocabulary's 50,257
    assert int8_perplexity <= 1.02 * float_perplexity
    # Greedy tokens of the int8 path against float32, over the fixture prompts.
    prompts = [case["token_ids"] for case in cases]
    floats = generation.generate(float_lm, prompts, max_new_tokens=16, stop_at_end_of_text=False, runtime="keras")
    int8s = generation.generate(int8_lm, prompts, max_new_tokens=16, stop_at_end_of_text=False, runtime="onnx")
    agreement = np.mean([a == b for f, i in zip(floats, int8s) for a, b in zip(f.token_ids, i.token_ids)])
    print(f"int8 perplexity {int8_perplexity:.3f} against float32 {float_perplexity:.3f}; "
          f"greedy agreement {agreement:.1%}")
    assert agreement >= 0.5


def test_an_int8_batch_gives_each_prompt_what_it_gives_alone(trained, cases):
    float_lm, _ = trained
    int8_lm = keras_gpt2.build(keras_gpt2.get_config("tiny"))
    int8_lm.backbone.set_weights(float_lm.backbone.get_weights())
    int8_lm.backbone.quantize("int8")
    prompts = [case["token_ids"] for case in cases]
    together = generation.generate(int8_lm, prompts, max_new_tokens=12, stop_at_end_of_text=False, runtime="onnx")
    for prompt, result in zip(prompts, together):
        alone = generation.generate(int8_lm, [prompt], max_new_tokens=12, stop_at_end_of_text=False, runtime="onnx")
        assert alone[0].token_ids == result.token_ids
