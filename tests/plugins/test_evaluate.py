"""`evaluate`: perplexity over several files, bits per byte, and tasks, checked by hand on the fixture model."""

import json
import math

import numpy as np
import pytest

from registry import Registry

TEXTS = ("The quick brown fox jumps over the lazy dog.", "Hello world, this is a test of the scorer.")


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def fx_model(imported_home):
    return Registry(imported_home).load("fx")


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _continuation_logprob(lm, context_ids, continuation_ids):
    """By hand: one unpadded forward pass over context + continuation."""
    ids = np.array([context_ids + continuation_ids], dtype="int32")
    logits = np.asarray(lm({"token_ids": ids, "padding_mask": np.ones_like(ids)}), dtype=np.float64)[0]
    logprobs = _log_softmax(logits)
    start = len(context_ids)
    targets = continuation_ids
    chosen = [logprobs[start - 1 + i, t] for i, t in enumerate(targets)]
    greedy = all(int(np.argmax(logits[start - 1 + i])) == t for i, t in enumerate(targets))
    return float(sum(chosen)), greedy


def test_perplexity_over_files_is_token_weighted_with_bits_per_byte(imported_home, tmp_path):
    from backends.tokenizer import encode

    reg = Registry(imported_home)
    files = []
    for index, text in enumerate(TEXTS):
        files.append(tmp_path / f"{index}.txt")
        files[-1].write_text(text, encoding="utf-8")
    singles = [reg.run("evaluate", "fx", data=[str(f)]).output for f in files]
    both = reg.run("evaluate", "fx", data=[str(f) for f in files]).output
    tokens = [len(encode(t)) - 1 for t in TEXTS]
    assert [s["tokens"] for s in singles] == tokens and both["tokens"] == sum(tokens)
    weighted = sum(s["mean_nll"] * n for s, n in zip(singles, tokens)) / sum(tokens)
    assert both["mean_nll"] == pytest.approx(weighted, rel=1e-6)  # float32 logits, batched apart or together
    assert both["perplexity"] == pytest.approx(math.exp(weighted), rel=1e-5)
    # Bits per byte: the same log-likelihood in bits over the bytes of the scored tokens (all but
    # the first of each text; every first token here is one ASCII word).
    scored_bytes = sum(len(t.encode()) - len(t.split(" ")[0]) for t in TEXTS)
    assert both["bits_per_byte"] == pytest.approx(weighted * sum(tokens) / math.log(2) / scored_bytes, rel=1e-6)


def test_multiple_choice_scores_each_choice_by_log_likelihood(imported_home, fx_model, tmp_path):
    from backends.tokenizer import encode

    examples = [
        {"prompt": "The capital of France is", "choices": [" Paris", " London", " a very large dog"], "answer": 0},
        {"prompt": "Two plus two is ", "choices": ["four", "five"], "answer": 1},
        {"prompt": "Colour of the sky:", "choices": [" blue", " green", " red", " made of cheese"], "answer": 3},
    ]
    task = _write(tmp_path, "mc.jsonl", examples)
    # batch_size 2: choices of different lengths share a padded batch.
    result = Registry(imported_home).run("evaluate", "fx", task=task, batch_size=2)
    rows = result.tables["evaluation/mc.json"]
    correct = 0
    for example, row in zip(examples, rows):
        prompt = example["prompt"]
        context = prompt.rstrip(" ")  # a trailing space belongs to the choice's first token
        by_hand = [_continuation_logprob(fx_model, encode(context), encode(prompt[len(context):] + choice))[0]
                   for choice in example["choices"]]
        assert row["logprobs"] == pytest.approx(by_hand, abs=1e-4)
        assert row["prediction"] == int(np.argmax(by_hand))
        correct += row["prediction"] == example["answer"]
    assert result.output["accuracy"] == pytest.approx(correct / len(examples))
    assert result.metrics["mc.accuracy"] == result.output["accuracy"]


def test_last_word_accuracy_is_greedy_agreement_on_the_whole_word(imported_home, fx_model, tmp_path):
    from backends import generation
    from backends.tokenizer import decode, encode

    # One example the model gets right by construction: its own greedy next token, when that is a word.
    prompt = "The meaning of life is"
    greedy = generation.generate(fx_model, [encode(prompt)], max_new_tokens=1)[0].token_ids
    word = decode(greedy)
    texts = ["Hello world, this is a small test", "A cat sat on the mat"]
    if word.startswith(" ") and word[1:].isalpha():
        texts.append(prompt + word)
    task = _write(tmp_path, "lw.jsonl", [{"text": t} for t in texts])
    result = Registry(imported_home).run("evaluate", "fx", task=task)
    hand = []
    for text in texts:
        context, last = text.rsplit(" ", 1)
        hand.append(_continuation_logprob(fx_model, encode(context), encode(" " + last)))
    assert [row["correct"] for row in result.tables["evaluation/lw.json"]] == [g for _, g in hand]
    assert result.output["accuracy"] == pytest.approx(sum(g for _, g in hand) / len(texts))
    tokens = sum(len(encode(" " + t.rsplit(" ", 1)[1])) for t in texts)
    assert result.output["perplexity"] == pytest.approx(math.exp(-sum(lp for lp, _ in hand) / tokens), rel=1e-4)


def test_generation_task_scores_the_greedy_answer(imported_home, fx_model, tmp_path):
    from backends import generation
    from backends.tokenizer import decode, encode

    prompts = ["Question: what is one plus one?\nAnswer:", "Say hello:"]
    own = [decode(g.token_ids).split("\n")[0]
           for g in generation.generate(fx_model, [encode(p) for p in prompts], max_new_tokens=4)]
    # The first answer is the model's own greedy text (exact match 1); the second can only be wrong.
    task = _write(tmp_path, "gen.jsonl", [{"prompt": prompts[0], "answer": own[0]},
                                           {"prompt": prompts[1], "answer": "zebra crossing"}])
    result = Registry(imported_home).run("evaluate", "fx", task=task, max_new_tokens=4)
    rows = result.tables["evaluation/gen.json"]
    assert [row["prediction"] for row in rows] == own
    expected_em = (1.0 + float(own[1].strip().lower() == "zebra crossing")) / 2
    assert result.output["exact_match"] == pytest.approx(expected_em)
    assert result.output["f1"] >= 0.5 and 0 <= result.output["rouge1"] <= 1 and result.output["bleu"] >= 0


def test_few_shot_prompts_drop_shots_to_fit_and_warn(gpt2reg, imported_home, tmp_path):
    long_answer = " " + "word " * 40  # each shot about 45 tokens: two cannot fit a 128-token context
    examples = [{"prompt": f"Item {i}:", "choices": [long_answer, " no"], "answer": 0} for i in range(4)]
    task = _write(tmp_path, "fit.jsonl", examples)
    result = gpt2reg("evaluate", "fx", "--task", task, "--shots", "3", "--no-log", "--json", "--home", imported_home)
    assert result.exit_code == 0, result
    assert "warning: 4 of 4 prompts kept fewer than 3 shots" in result.stderr
    document = result.json()
    assert document["shots"] == 3 and document["metric_prefix"] == "fit.3shot"
    too_long = _write(tmp_path, "long.jsonl", [{"prompt": "word " * 130, "answer": "x"}])
    refused = gpt2reg("evaluate", "fx", "--task", too_long, "--home", imported_home)
    assert refused.exit_code == 2 and "questions are never cut" in refused.stderr


def test_task_results_reach_mlflow_and_the_lineage_edges(gpt2reg, family_home, tmp_path):
    task = _write(tmp_path, "edge.jsonl", [
        {"prompt": "The capital of France is", "choices": [" Paris", " London"], "answer": 0},
        {"prompt": "Water is", "choices": [" wet", " dry"], "answer": 0},
        {"prompt": "Fire is", "choices": [" cold", " hot"], "answer": 1},
    ])
    for ref in ("base/1", "base-finetune/1"):
        result = gpt2reg("evaluate", ref, "--task", task, "--task-name", "edge_check", "--json", "--home", family_home)
        assert result.exit_code == 0, result
    reg = Registry(family_home)
    parent, child = reg.get("base/1"), reg.get("base-finetune/1")
    edge = next(e for e in reg.lineage(child)["edges"] if e["child"] == child.ref and e["parent"] == parent.ref)
    assert edge["metric_deltas"]["edge_check.accuracy"] == pytest.approx(
        child.metrics["edge_check.accuracy"] - parent.metrics["edge_check.accuracy"])
    run = reg.tracker.get_run(child.run_id)
    assert run.data.metrics["edge_check.accuracy"] == child.metrics["edge_check.accuracy"]
    names = [a.path for a in reg.tracker.client.list_artifacts(child.run_id, "evaluation")]
    assert names == ["evaluation/edge_check.json"]
    table = json.loads(_artifact_text(reg, child, "evaluation/edge_check.json"))
    assert len(table["data"]) == 3


def _artifact_text(reg, variant, path):
    from mlflow.artifacts import download_artifacts

    return open(download_artifacts(run_id=variant.run_id, artifact_path=path, tracking_uri=reg.home.tracking_uri)).read()


def test_generate_builds_its_prompt_with_the_same_template(gpt2reg, imported_home, tmp_path):
    template = tmp_path / "qa.txt"
    template.write_text("Question: {question}\nAnswer:{answer}\n", encoding="utf-8")
    filled = gpt2reg("generate", "fx", "--template", template, "--vars", '[{"question": "2+2?"}, {"question": "Why?"}]',
                     "--max-new-tokens", "4", "--json", "--home", imported_home)
    assert filled.exit_code == 0, filled
    literal = gpt2reg("generate", "fx", "Question: 2+2?\nAnswer:", "Question: Why?\nAnswer:", "--max-new-tokens", "4",
                      "--json", "--home", imported_home)
    assert filled.json()["outputs"] == literal.json()["outputs"]
    missing = gpt2reg("generate", "fx", "--template", template, "--vars", '{"q": "x"}', "--home", imported_home)
    assert missing.exit_code == 2 and "no value for {question}" in missing.stderr
