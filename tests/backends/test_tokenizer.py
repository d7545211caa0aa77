import os
import re
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from backends.tokenizer import decode, encode, encode_batch, keras_tokenizer, pieces, rule_digest
from registry.errors import UsageError

RULE = "GPT2REG_SPECIAL_TOKENS"


def test_ids_match_the_reference_for_every_case(reference):
    for case in reference["cases"]:
        assert encode(case["text"]) == case["token_ids"], case["text"]


def _has_whitespace_run(text):
    return re.search(r"\s\s", text) is not None


def test_keras_hub_tokenizer_gives_the_same_ids(reference):
    tokenizer = keras_tokenizer()
    for case in reference["cases"]:
        if _has_whitespace_run(case["text"]):
            continue  # see the test below
        assert np.asarray(tokenizer(case["text"])).tolist() == case["token_ids"]


def test_whitespace_runs_follow_openai_not_keras_hub(reference):
    # KerasHub's BPE splits runs of whitespace differently from OpenAI's pattern
    # (which transformers and tiktoken follow); our ids follow the reference.
    case = next(c for c in reference["cases"] if "\n\n" in c["text"])
    assert encode(case["text"]) == case["token_ids"]
    assert np.asarray(keras_tokenizer_cached()(case["text"])).tolist() != case["token_ids"]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80).filter(lambda t: not _has_whitespace_run(t)))
def test_tiktoken_and_keras_hub_agree_and_round_trip(text):
    ids = encode(text)
    assert decode(ids) == text
    assert np.asarray(keras_tokenizer_cached()(text)).tolist() == ids


_cached = []


def keras_tokenizer_cached():
    if not _cached:
        _cached.append(keras_tokenizer())
    return _cached[0]


def test_pieces_join_back_to_ascii_text():
    text = "Hello world, it's 2026."
    assert "".join(pieces(encode(text))) == text


# Pieces that tokenizers get wrong most often: special-token text whole and in part, whitespace
# runs of every kind, scripts outside Latin, emoji sequences and combining marks.
TRICKY_PIECES = [
    "<|endoftext|>", "<|endoftext", "endoftext|>", "<|", "|>", "<|endoftext|><|endoftext|>", "<<|endoftext|>>",
    " ", "  ", "   ", "\n", "\n\n", "\t", " \t\n ", "\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", "\u200b",
    "東京", "日本語のテキスト", "مرحبا بالعالم", "שלום", "Привет", "नमस्ते", "🙂", "👨\u200d👩\u200d👧", "🇫🇷",
    "e\u0301", "\u0301", "a\u0308\u0323", "'s", "'ll", "'RE", "123", "3.14", " world", "Hello",
]
tricky_text = st.lists(st.one_of(st.sampled_from(TRICKY_PIECES), st.text(max_size=10)), max_size=16).map("".join)


@settings(max_examples=300, deadline=None)
@given(tricky_text)
def test_ids_equal_hugging_face_on_any_text(hf_tokenizer, hf_tokenizer_as_text, text):
    default, as_text = hf_tokenizer, hf_tokenizer_as_text
    with mock.patch.dict(os.environ, {RULE: "special"}):
        assert encode(text) == default.encode(text).ids
        assert decode(encode(text)) == text
    with mock.patch.dict(os.environ, {RULE: "text"}):
        assert encode(text) == as_text.encode(text).ids
        assert decode(encode(text)) == text


def test_special_token_text_is_the_end_of_text_token_by_default(hf_tokenizer):
    default = hf_tokenizer
    text = "Hello<|endoftext|>  world\n\n<|endoftext|>"
    assert encode(text) == default.encode(text).ids == [15496, 50256, 220, 995, 628, 50256]
    assert pieces(encode(text))[1] == "<|endoftext|>"
    assert encode_batch([text, "<|endoftext"]) == [encode(text), default.encode("<|endoftext").ids]


def test_the_text_rule_reads_special_token_text_as_characters(monkeypatch, hf_tokenizer_as_text):
    as_text = hf_tokenizer_as_text
    monkeypatch.setenv(RULE, "text")
    text = "Hello<|endoftext|>  world"
    assert encode(text) == as_text.encode(text).ids == [15496, 27, 91, 437, 1659, 5239, 91, 29, 220, 995]
    assert encode_batch([text]) == [encode(text)]
    assert 50256 not in encode("<|endoftext|>")


@pytest.mark.parametrize("value", ["Text", "SPECIAL", "none", "1", " text", "text\n"])
def test_an_unknown_rule_is_refused_naming_the_variable_and_the_choices(monkeypatch, value):
    monkeypatch.setenv(RULE, value)
    for call in (lambda: encode("Hello"), lambda: encode_batch(["Hello"])):
        with pytest.raises(UsageError) as refused:
            call()
        message = str(refused.value)
        assert RULE in message and ascii(value) in message and "'special'" in message and "'text'" in message
        assert "\n" not in message


def test_the_digest_salt_changes_with_the_rule_only_where_the_text_spells_a_special_token(monkeypatch):
    plain, quoting = ["no separators here"], ["one<|endoftext|>two"]
    by_rule = {}
    for rule in ("special", "text"):
        monkeypatch.setenv(RULE, rule)
        by_rule[rule] = (rule_digest(plain), rule_digest(quoting))
    assert by_rule["special"][0] == by_rule["text"][0] == b""  # the same ids under both rules
    assert by_rule["special"][1] != by_rule["text"][1]
