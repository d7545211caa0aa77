"""After `gpt2reg import`, the CLI reproduces what transformers computed for the fixture."""

import math

import pytest


@pytest.fixture
def imported(gpt2reg, imported_home):
    return lambda *args: gpt2reg(*args, "--home", imported_home)


def test_tokenize_ids_equal_the_reference(gpt2reg, reference):
    for case in reference["cases"]:
        result = gpt2reg("tokenize", case["text"], "--json")
        assert result.exit_code == 0, result
        assert result.json()["token_ids"] == case["token_ids"]
        assert len(result.json()["pieces"]) == len(case["token_ids"])


def test_greedy_generation_equals_the_reference_in_one_batch(imported, reference):
    cases = [c for c in reference["cases"] if "greedy_16" in c]
    result = imported("generate", "fx", *[c["text"] for c in cases], "--sampler", "greedy", "--max-new-tokens", 16, "--json")
    assert result.exit_code == 0, result
    outputs = result.json()["outputs"]
    assert [o["prompt"] for o in outputs] == [c["text"] for c in cases]
    for output, case in zip(outputs, cases):
        assert output["token_ids"] == case["greedy_16"], case["text"]
        assert output["text"] == case["greedy_16_text"]


def test_each_prompt_alone_gives_the_same_greedy_tokens(imported, reference):
    case = reference["cases"][2]
    result = imported("generate", "fx/1", case["text"], "--max-new-tokens", 16, "--json")
    assert result.json()["outputs"][0]["token_ids"] == case["greedy_16"]


def test_evaluate_perplexity_equals_the_reference(imported, reference, tmp_path):
    for index, case in enumerate(c for c in reference["cases"] if "perplexity" in c):
        data = tmp_path / f"case{index}.txt"
        data.write_text(case["text"], encoding="utf-8")
        result = imported("evaluate", "fx", "--data", data, "--json", "--no-log")
        assert result.exit_code == 0, result
        document = result.json()
        assert document["tokens"] == len(case["token_ids"]) - 1
        assert math.isclose(document["perplexity"], case["perplexity"], rel_tol=1e-3)
        assert math.isclose(document["mean_nll"], case["mean_nll"], rel_tol=1e-4)


def test_last_position_logits_match(imported_home, reference):
    import numpy as np

    from registry import Registry

    lm = Registry(imported_home).get("fx").load()
    for case in (c for c in reference["cases"] if "last_logits_first8" in c):
        ids = np.array([case["token_ids"]])
        logits = np.asarray(lm({"token_ids": ids, "padding_mask": np.ones_like(ids)}))[0, -1]
        np.testing.assert_allclose(logits[:8], case["last_logits_first8"], atol=1e-4)
        assert np.argsort(-logits)[:5].tolist() == case["last_logits_top5"]


def test_sliding_window_counts_every_token_once(imported_home, reference):
    from backends import scoring
    from registry import Registry

    lm = Registry(imported_home).get("fx").load()
    long_text = sum((c["token_ids"] for c in reference["cases"]), []) * 3  # longer than the 128-token context
    assert len(long_text) > 128
    for stride in (32, 64, 128):
        spans = scoring.windows(long_text, 128, stride)
        assert sum(targets for _, targets in spans) == len(long_text) - 1
        assert all(len(ids) <= 128 for ids, _ in spans)
    whole = scoring.score(lm, [long_text], stride=128)
    assert whole.tokens == len(long_text) - 1
