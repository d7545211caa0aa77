"""One tokenization rule on every path a user takes, equal to Hugging Face's GPT-2 tokenizer.

`<|endoftext|>` written in a text is token 50256 by default, as transformers'
GPT2TokenizerFast gives it; GPT2REG_SPECIAL_TOKENS=text reads it as plain
characters, as transformers does with split_special_tokens=True.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from registry import Registry

RULE = "GPT2REG_SPECIAL_TOKENS"
END_OF_TEXT_ID = 50256
SEPARATED = "The first document ends here.<|endoftext|>The second one follows,  after its separator.\n\n<|endoftext|>"


@pytest.fixture(scope="module")
def fx_model(imported_home):
    return Registry(imported_home).load("fx")


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result
    return lines[0]


@pytest.mark.parametrize("text", [
    "Hello<|endoftext|>  world",
    "a<|endoftext|>b",
    "<|endoftext|><|endoftext|>\n\n",
    "<|endoftext",
    "  <|  endoftext|>\t\t",
    "東京 <|endoftext|> مرحبا 🙂 e\u0301",
])
def test_tokenize_gives_hugging_faces_ids_and_decodes_back(gpt2reg, hf_tokenizer, text):
    result = gpt2reg("tokenize", text, "--json")
    assert result.exit_code == 0, result
    document = result.json()
    assert document["token_ids"] == hf_tokenizer.encode(text).ids
    assert document["special_tokens"] == "special"
    decoded = gpt2reg("tokenize", " ".join(map(str, document["token_ids"])), "--decode", "--json")
    assert decoded.exit_code == 0, decoded
    assert decoded.json()["text"] == text


def test_the_text_rule_gives_the_plain_ids(gpt2reg, hf_tokenizer_as_text, monkeypatch):
    monkeypatch.setenv(RULE, "text")
    result = gpt2reg("tokenize", "Hello<|endoftext|>  world", "--json")
    assert result.exit_code == 0, result
    assert result.json()["token_ids"] == [15496, 27, 91, 437, 1659, 5239, 91, 29, 220, 995]
    assert result.json()["token_ids"] == hf_tokenizer_as_text.encode("Hello<|endoftext|>  world").ids
    assert result.json()["special_tokens"] == "text"


@pytest.mark.parametrize("value", ["plain", "Special", "0"])
def test_an_unknown_rule_exits_2_with_one_line(gpt2reg, monkeypatch, value):
    monkeypatch.setenv(RULE, value)
    result = gpt2reg("tokenize", "Hello", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    line = _one_error_line(result)
    assert line.startswith(f"error: {RULE}='{value}'") and "'special'" in line and "'text'" in line


def test_generate_continues_the_ids_hugging_face_gives(gpt2reg, imported_home, fx_model, hf_tokenizer):
    prompt = "Hello<|endoftext|>  world"
    ids = hf_tokenizer.encode(prompt).ids
    assert END_OF_TEXT_ID in ids
    expected = []
    for _ in range(4):  # greedy by hand: one unpadded forward pass per token
        tokens = np.array([ids + expected], dtype="int32")
        logits = np.asarray(fx_model({"token_ids": tokens, "padding_mask": np.ones_like(tokens)}))[0, -1]
        expected.append(int(np.argmax(logits)))
    result = gpt2reg("generate", "fx", prompt, "--max-new-tokens", "4", "--ignore-end-of-text", "--json",
                     "--home", imported_home)
    assert result.exit_code == 0, result
    assert result.json()["outputs"][0]["token_ids"] == expected


def test_generate_measures_a_prompt_by_the_rule(gpt2reg, imported_home, hf_tokenizer, hf_tokenizer_as_text, monkeypatch):
    # Too long for the fixture's 128 positions under either rule; the refusal gives the count.
    prompt = "<|endoftext|>" * 200
    refused = gpt2reg("generate", "fx", prompt, "--home", imported_home)
    assert refused.exit_code == 2
    assert f"prompt of {len(hf_tokenizer.encode(prompt).ids)} tokens" in _one_error_line(refused)
    monkeypatch.setenv(RULE, "text")
    refused = gpt2reg("generate", "fx", prompt, "--home", imported_home)
    assert refused.exit_code == 2
    assert f"prompt of {len(hf_tokenizer_as_text.encode(prompt).ids)} tokens" in _one_error_line(refused)


def test_evaluate_scores_the_ids_hugging_face_gives(gpt2reg, imported_home, fx_model, hf_tokenizer, hf_tokenizer_as_text, monkeypatch,
                                                    tmp_path):
    data = tmp_path / "separated.txt"
    data.write_text(SEPARATED, encoding="utf-8")
    ids = hf_tokenizer.encode(SEPARATED).ids
    assert ids.count(END_OF_TEXT_ID) == 2 and len(ids) < 128
    # SPEC 5: tokens 2..n given their prefix, nothing prepended.
    tokens = np.array([ids], dtype="int32")
    logits = np.asarray(fx_model({"token_ids": tokens, "padding_mask": np.ones_like(tokens)}), dtype=np.float64)[0]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    mean_nll = -np.mean([logprobs[i - 1, ids[i]] for i in range(1, len(ids))])

    result = gpt2reg("evaluate", "fx", "--data", data, "--no-log", "--json", "--home", imported_home)
    assert result.exit_code == 0, result
    scored = result.json()
    assert scored["tokens"] == len(ids) - 1
    assert scored["mean_nll"] == pytest.approx(mean_nll, rel=1e-4)

    monkeypatch.setenv(RULE, "text")
    as_text = gpt2reg("evaluate", "fx", "--data", data, "--no-log", "--json", "--home", imported_home)
    assert as_text.exit_code == 0, as_text
    assert as_text.json()["tokens"] == len(hf_tokenizer_as_text.encode(SEPARATED).ids) - 1
    # The same file under the other rule is other data: its digest must not match.
    assert as_text.json()["data_digest"] != scored["data_digest"]
    assert Registry(imported_home).run("evaluate", "fx", data=[str(data)]).settings["special_tokens"] == "text"


def test_task_prompts_are_measured_by_the_rule(gpt2reg, imported_home, hf_tokenizer, hf_tokenizer_as_text, monkeypatch, tmp_path):
    prompt = "Q<|endoftext|>" * 100
    task = tmp_path / "long.jsonl"
    task.write_text(json.dumps({"prompt": prompt, "answer": "x"}) + "\n", encoding="utf-8")
    refused = gpt2reg("evaluate", "fx", "--task", task, "--no-log", "--home", imported_home)
    assert refused.exit_code == 2
    assert f"alone is {len(hf_tokenizer.encode(prompt).ids)} tokens" in _one_error_line(refused)
    monkeypatch.setenv(RULE, "text")
    refused = gpt2reg("evaluate", "fx", "--task", task, "--no-log", "--home", imported_home)
    assert refused.exit_code == 2
    assert f"alone is {len(hf_tokenizer_as_text.encode(prompt).ids)} tokens" in _one_error_line(refused)


def test_training_data_follows_the_rule_and_its_digest_tells_them_apart(hf_tokenizer, hf_tokenizer_as_text, monkeypatch, tmp_path):
    from registry.data import read_texts, tokenize_documents

    separated, plain = tmp_path / "separated.txt", tmp_path / "plain.txt"
    separated.write_text(SEPARATED, encoding="utf-8")
    plain.write_text("Nothing here spells a special token.", encoding="utf-8")
    by_rule = {}
    for rule in ("special", "text"):
        monkeypatch.setenv(RULE, rule)
        data = read_texts([str(separated)])
        by_rule[rule] = (tokenize_documents(data), data.digest, read_texts([str(plain)]).digest)
    assert by_rule["special"][0] == [hf_tokenizer.encode(SEPARATED).ids]
    assert by_rule["text"][0] == [hf_tokenizer_as_text.encode(SEPARATED).ids]
    assert by_rule["special"][1] != by_rule["text"][1]
    assert by_rule["special"][2] == by_rule["text"][2]  # the same ids under both rules: the same data


def test_finetune_trains_on_the_ids_hugging_face_gives_and_records_the_rule(imported_home, hf_tokenizer, hf_tokenizer_as_text, tmp_path):
    data = tmp_path / "separated.txt"
    data.write_text(SEPARATED * 8, encoding="utf-8")
    reg = Registry(imported_home)
    variant = reg.run("finetune", "fx", name="fx-separators", data=[str(data)], steps=1, batch_size=1, seq_len=16,
                      val_split=0, checkpoint_every=0)
    settings = next(e for e in reg.lineage(variant)["edges"] if e["child"] == variant.ref)["settings"]
    assert settings["special_tokens"] == "special"
    # Each document is followed by one end-of-text token, then cut into blocks of seq_len + 1.
    assert settings["train_blocks"] == (len(hf_tokenizer.encode(SEPARATED * 8).ids) + 1) // 17
    assert settings["train_blocks"] != (len(hf_tokenizer_as_text.encode(SEPARATED * 8).ids) + 1) // 17


def test_a_served_model_reads_prompts_by_the_servers_rule(imported_home, hf_tokenizer, hf_tokenizer_as_text,
                                                          monkeypatch):
    from mlflow.exceptions import MlflowException

    from registry.artifacts import PRESET_ARTIFACT
    from registry.errors import UsageError
    from registry.serving import GPT2PyFunc

    served = GPT2PyFunc()
    served.load_context(SimpleNamespace(artifacts={PRESET_ARTIFACT: str(Registry(imported_home).preset_path("fx"))}))
    prompt = "<|endoftext|>" * 200  # too long under either rule: the refusal gives the count
    with pytest.raises(MlflowException, match=f"prompt 1 has {len(hf_tokenizer.encode(prompt).ids)} tokens"):
        served.predict(None, [prompt])
    monkeypatch.setenv(RULE, "text")
    with pytest.raises(MlflowException, match=f"prompt 1 has {len(hf_tokenizer_as_text.encode(prompt).ids)} tokens"):
        served.predict(None, [prompt])
    monkeypatch.setenv(RULE, "plain")
    with pytest.raises(UsageError, match=RULE):
        GPT2PyFunc().load_context(SimpleNamespace(artifacts={}))  # refused before any file is read
