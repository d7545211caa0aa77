"""An adapter generates as itself: through the CLI, the SDK's run and stream, and evaluate's generation tasks.

Its merged variant holds base + (alpha / r) · A·B, so for a float base the adapter's
tokens equal the merged variant's on every runtime and sampler, and differ from the
base's (the adapter is trained until it moves greedy tokens, and that is asserted).
"""

import json

import numpy as np
import pytest

from registry import Registry

PROMPT = "The registry"
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def family(tmp_path_factory, fixture_dir, text_file):
    reg = Registry(tmp_path_factory.mktemp("lora-decoding-home"))
    base = reg.import_("base", str(fixture_dir))
    adapter = reg.run("lora", base, name="ad", data=[str(text_file)], rank=4, steps=8, batch_size=4, seq_len=32,
                      lr=0.05)
    merged = reg.run("merge", adapter, name="merged")
    return reg, base, adapter, merged


def full_forward_greedy(lm, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens by running the whole sequence through the Keras model at each step (no decoder, no cache):
    the function `evaluate` scores, so the reference for what the variant computes."""
    ids = list(prompt_ids)
    for _ in range(new_tokens):
        batch = np.array([ids])
        logits = np.asarray(lm({"token_ids": batch, "padding_mask": np.ones_like(batch)}))
        ids.append(int(np.argmax(logits[0, -1])))
    return ids[len(prompt_ids):]


def cli_tokens(gpt2reg, reg, ref, *options) -> list[int]:
    result = gpt2reg("generate", ref, PROMPT, "--max-new-tokens", NEW_TOKENS, "--json", "--home", reg.home.path,
                     *options)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["outputs"][0]["token_ids"]


def test_the_adapter_moved_the_greedy_tokens(family):
    from backends.tokenizer import encode

    reg, base, adapter, merged = family
    ids = encode(PROMPT)
    adapted = full_forward_greedy(reg.load(adapter), ids, NEW_TOKENS)
    assert adapted != full_forward_greedy(reg.load(base), ids, NEW_TOKENS)
    assert adapted == full_forward_greedy(reg.load(merged), ids, NEW_TOKENS)


@pytest.mark.parametrize("runtime", ["keras", "onnx", "litert", "auto"])
def test_cli_generate_decodes_an_adapter_as_its_merged_variant(gpt2reg, family, runtime):
    from backends.tokenizer import encode

    reg, base, adapter, merged = family
    adapted = cli_tokens(gpt2reg, reg, adapter.ref, "--runtime", runtime)
    assert adapted == cli_tokens(gpt2reg, reg, merged.ref, "--runtime", runtime)
    assert adapted != cli_tokens(gpt2reg, reg, base.ref, "--runtime", runtime)
    assert adapted == full_forward_greedy(reg.load(adapter), encode(PROMPT), NEW_TOKENS)


@pytest.mark.parametrize("sampler, options", [
    ("beam", {"num_beams": 3}),
    ("contrastive", {"top_k": 4}),
    ("top_k", {"top_k": 20, "seed": 3}),
    ("top_p", {"top_p": 0.8, "seed": 3}),
    ("random", {"temperature": 0.7, "seed": 3}),
])
def test_every_sampler_decodes_the_adapter(family, sampler, options):
    reg, base, adapter, merged = family

    def texts(variant, runtime):
        result = reg.run("generate", variant, prompts=[PROMPT, "A model"], max_new_tokens=NEW_TOKENS, sampler=sampler,
                         runtime=runtime, **options)
        return [output["token_ids"] for output in result.output["outputs"]]

    for runtime in ("keras", "onnx"):
        assert texts(adapter, runtime) == texts(merged, runtime), runtime
    if sampler in ("beam", "contrastive"):  # deterministic: the base's choice differs where its logits do
        assert texts(adapter, "onnx") != texts(base, "onnx")


def test_streaming_an_adapter_yields_its_merged_text(family):
    reg, base, adapter, merged = family
    streamed = "".join(event.text for event in reg.stream(adapter, PROMPT, max_new_tokens=NEW_TOKENS))
    merged_text = reg.run("generate", merged, prompts=[PROMPT], max_new_tokens=NEW_TOKENS).output["outputs"][0]["text"]
    base_text = reg.run("generate", base, prompts=[PROMPT], max_new_tokens=NEW_TOKENS).output["outputs"][0]["text"]
    assert streamed == merged_text != base_text


def test_a_generation_task_scores_what_the_adapter_generates(gpt2reg, family, tmp_path):
    reg, base, adapter, merged = family
    answer = reg.run("generate", merged, prompts=[PROMPT], max_new_tokens=4).output["outputs"][0]["text"]
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"prompt": PROMPT, "answer": answer}) + "\n", encoding="utf-8")

    def exact_match(ref):
        result = gpt2reg("evaluate", ref, "--task", task, "--max-new-tokens", 4, "--json", "--no-log",
                         "--home", reg.home.path)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["exact_match"]

    assert exact_match(adapter.ref) == exact_match(merged.ref) == 1.0
    assert exact_match(base.ref) == 0.0


def test_an_adapter_over_an_int8_base_is_recorded_reloaded_and_decoded_as_trained(gpt2reg, family, text_file,
                                                                                 tmp_path):
    """Trained over int8 weights, the adapter is reloaded and decodes over them: the int8 products plus its update."""
    from backends import keras_gpt2
    from backends.decoding import decoder_for
    from backends.tokenizer import encode

    reg, base, _, _ = family
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(text_file.read_text()[:1000])  # short: Keras int8 scoring is slow on a CPU
    adapter = reg.run("lora", base, name="ad-int8", data=[str(text_file)], val_data=[str(held_out)], rank=4, steps=8,
                      batch_size=4, seq_len=32, lr=0.05, quantize_base="int8", dropout=0.1)
    edge = reg.lineage(adapter)["edges"][0]
    assert edge["settings"]["quantize_base"] == "int8" and edge["settings"]["dropout"] == 0.1
    reloaded = reg.load(adapter)
    quantized = [layer for layer in reloaded.backbone._flatten_layers() if getattr(layer, "quantization_mode", None)]
    assert quantized and all(layer.quantization_mode == "int8" for layer in quantized)
    # The recorded perplexity is what the reloaded int8 base + adapter gives.
    again = reg.run("evaluate", adapter, data=[str(held_out)], runtime="keras")
    assert again.metrics["perplexity"] == pytest.approx(adapter.metrics["perplexity"], rel=1e-4)
    # onnxruntime's int8 products (activations quantized per call) differ from Keras's by a little.
    light = reg.run("evaluate", adapter, data=[str(held_out)], runtime="onnx")
    assert light.metrics["perplexity"] == pytest.approx(adapter.metrics["perplexity"], rel=1e-3)

    ids = encode(PROMPT)
    expected = full_forward_greedy(reloaded, ids, NEW_TOKENS)
    int8_base = keras_gpt2.load(reg.preset_path(base))
    int8_base.backbone.quantize("int8")
    assert expected != full_forward_greedy(int8_base, ids, NEW_TOKENS)
    # onnxruntime's int8 products agree with Keras's to float rounding, so the tokens are the same.
    for runtime in ("keras", "onnx"):
        assert cli_tokens(gpt2reg, reg, adapter.ref, "--runtime", runtime) == expected, runtime
    # LiteRT chooses its own int8 weights (a close copy): its logits are near the adapter's, far from the base's.
    lm = reloaded
    batch = np.array([ids])
    keras_logits = np.asarray(lm({"token_ids": batch, "padding_mask": np.ones_like(batch)}))[0, -1]
    base_logits = np.asarray(int8_base({"token_ids": batch, "padding_mask": np.ones_like(batch)}))[0, -1]
    litert_logits = decoder_for(lm, runtime="litert").start([ids], max_new_tokens=1).logits[0]
    assert np.abs(litert_logits - keras_logits).max() < 0.5 * np.abs(base_logits - keras_logits).max()
