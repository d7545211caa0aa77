"""Property tests over prompts, corpora and task files: never a crash.

Every input is either accepted (a result) or refused with `UsageError`, whose
message is one line. The pure layers (tokenization, prompt checks and
templates, data files and corpora, task files and the prompts built from them)
take thousands of generated inputs: empty, whitespace only, NUL characters,
lone surrogates, invalid UTF-8 and binary files, JSON nested too deep or
holding numbers too long to read, enormous lines, long stop strings. The
whole CLI and SDK path (`tokenize`, `generate`, `evaluate` on the tiny model
of `family_home`, whose context is 128 positions) takes tens, since each
model call costs time; prompts of exactly the context and one token more are
checked by hand.

Examples are derandomized, so every run (and CI) draws the same inputs.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.errors import UsageError

CONTEXT = 128  # positions of the `tiny` configuration


def examples(count: int):
    return settings(max_examples=count, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def refused_in_one_line(error: UsageError) -> None:
    message = str(error)
    assert message and "\n" not in message and "\r" not in message, message


# Every code point, lone surrogates included (what undecodable bytes of a command line become).
ANY_CHARACTER = st.characters(blacklist_categories=())
AWKWARD = ["", " ", "\t\n \r\n", "\x00", "\x00" * 9, "\ud800", "a\udfffb", "\u202e", "\ufeff", "\u2028x\u2029",
           "<|endoftext|>", "{", "}", "{answer}", "{{answer}}", "{prompt}", "\U0001f600" * 3, "e\u0301" * 5]
texts = st.one_of(
    st.text(ANY_CHARACTER, max_size=60),
    st.sampled_from(AWKWARD),
    st.text(st.sampled_from(" \t\n\r\x00\u00a0\u2028\u3000"), max_size=30),
    st.text(st.sampled_from(string.ascii_letters + " {}!:.[]\n\r"), max_size=60),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def _encoded(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes bytes no UTF-8 decoder takes


# -------------------------------------------------------------------- tokenization


@examples(500)
@given(text=texts)
def test_tokenize_round_trips_text_or_refuses_it(text):
    from plugins.tokenize import Tokenize

    try:
        options = Tokenize.validate({"text": text})
    except UsageError as error:
        refused_in_one_line(error)
        assert any("\ud800" <= ch <= "\udfff" for ch in text)
        return
    output = Tokenize().run(None, options).output
    from backends.tokenizer import decode

    assert decode(output["token_ids"]) == text and len(output["pieces"]) == len(output["token_ids"])


token_like = st.one_of(st.integers(-2**70, 2**70), st.integers(0, 50300), st.floats(), st.booleans(), st.none(),
                       st.text(max_size=3))


@examples(400)
@given(ids=st.one_of(st.lists(token_like, max_size=12), st.text(max_size=5), st.integers()))
def test_decoding_any_ids_gives_text_or_refuses(ids):
    from plugins.tokenize import Tokenize

    try:
        options = Tokenize.validate({"token_ids": ids})
    except UsageError as error:
        refused_in_one_line(error)
        return
    output = Tokenize().run(None, options).output
    assert isinstance(output["text"], str) and output["token_ids"] == list(ids)


# -------------------------------------------------------------------- prompts and templates


@examples(300)
@given(prompts=st.lists(texts, max_size=3), stops=st.lists(st.one_of(texts, st.text(max_size=5000)), max_size=3),
       max_new_tokens=st.integers(-2, 200), sampler=st.sampled_from(["greedy", "beam", "top_k", "nucleus"]))
def test_generate_options_are_accepted_or_refused_in_one_line(prompts, stops, max_new_tokens, sampler):
    from plugins.generate import Generate

    try:
        checked = Generate.validate({"prompts": prompts, "stop": stops, "max_new_tokens": max_new_tokens,
                                     "sampler": sampler})
    except UsageError as error:
        refused_in_one_line(error)
        return
    assert checked.prompts == prompts and all(isinstance(p, str) for p in checked.prompts)


@examples(500)
@given(template=texts, values=st.dictionaries(st.one_of(st.sampled_from(["prompt", "question", "answer", "x"]), texts),
                                              texts, max_size=4))
def test_a_template_renders_or_refuses(template, values):
    from registry.prompts import Template

    try:
        parsed = Template(template)
        query, shot = parsed.query(values), parsed.shot(values)
    except UsageError as error:
        refused_in_one_line(error)
        return
    assert isinstance(query, str) and isinstance(shot, str)
    if "answer" in values and parsed.has_answer:
        assert shot.startswith(query)


@examples(300)
@given(question=texts, shots=st.lists(texts, max_size=4), budget=st.integers(-5, 60))
def test_fitted_prompts_stay_within_their_budget(question, shots, budget):
    from backends.tokenizer import encode
    from registry.prompts import Template, fit_prompt

    template = Template("Q: {prompt}\nA:{answer}")
    try:
        fitted = fit_prompt(template, {"prompt": question}, [{"prompt": s, "answer": " yes"} for s in shots],
                            budget=budget, count_tokens=lambda text: len(encode(text)))
    except UsageError as error:
        refused_in_one_line(error)
        return
    assert fitted.tokens == len(encode(fitted.text)) <= budget
    assert fitted.shots_used + fitted.shots_dropped == len(shots)


@examples(200)
@given(content=st.one_of(st.binary(max_size=200), texts.map(_encoded)))
def test_a_template_file_of_any_bytes_is_read_or_refused(tmp_path, content):
    from registry.prompts import Template

    path = tmp_path / "template.txt"
    path.write_bytes(content)
    try:
        Template.from_file(str(path)).query({"prompt": "p"})
    except UsageError as error:
        refused_in_one_line(error)


def test_a_literal_answer_in_braces_is_text_not_the_answer_mark():
    from registry.prompts import Template

    template = Template("{prompt} {{answer}} here:{answer}")
    assert template.query({"prompt": "Q"}) == "Q {answer} here:"
    assert Template("{{answer}}").query({}) == "{answer}"


# -------------------------------------------------------------------- data files and corpora


def _read(tmp_path, content: bytes, suffix: str):
    from registry.data import read_texts, tokenize_documents

    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    try:
        data = read_texts([str(path)])
    except UsageError as error:
        refused_in_one_line(error)
        return None
    assert data.documents and all(isinstance(d, str) and d.strip() for d in data.documents)
    assert len(data.digest) == 16
    assert len(tokenize_documents(data)) == len(data.documents)
    return data


@examples(400)
@given(content=st.one_of(st.binary(max_size=300), texts.map(_encoded)),
       suffix=st.sampled_from([".txt", ".md", ".jsonl"]))
def test_a_data_file_of_any_bytes_is_read_or_refused(tmp_path, content, suffix):
    _read(tmp_path, content, suffix)


jsonl_lines = st.one_of(
    st.builds(lambda value, ascii_only: json.dumps(value, ensure_ascii=ascii_only), json_values, st.booleans()),
    st.builds(lambda text, ascii_only: json.dumps({"text": text}, ensure_ascii=ascii_only), texts, st.booleans()),
    texts,
    st.sampled_from(["[" * 5000, "1" * 5000, '{"text": 1e999999}', '{"text": NaN}', "\ufeff{}", "{}\r"]),
)


@examples(400)
@given(lines=st.lists(jsonl_lines, max_size=5), separator=st.sampled_from(["\n", "\r\n"]))
def test_jsonl_data_of_any_lines_is_read_or_refused(tmp_path, lines, separator):
    _read(tmp_path, _encoded(separator.join(lines)), ".jsonl")


def test_jsonl_strings_may_hold_line_separators_of_their_own():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        record = json.dumps({"text": "one\u2028two\x85three\u2029four"}, ensure_ascii=False)
        data = _read(Path(folder), (record + "\n").encode("utf-8"), ".jsonl")
    assert data.documents == ["one\u2028two\x85three\u2029four"]


def test_one_enormous_line_is_read_and_tokenized(tmp_path):
    line = "lorem ipsum dolor sit amet, " * 150_000  # 4.2 MB, no line break
    assert len(_read(tmp_path, line.encode(), ".txt").documents[0]) == len(line)
    assert _read(tmp_path, (json.dumps({"text": line}) + "\n").encode(), ".jsonl").documents == [line]


@examples(200)
@given(documents=st.lists(st.lists(st.integers(0, 50256), max_size=40), max_size=5), block=st.integers(1, 64))
def test_packing_token_blocks_gives_full_blocks_or_refuses(documents, block):
    from registry.data import pack_blocks

    try:
        blocks = pack_blocks(documents, block, 50256)
    except UsageError as error:
        refused_in_one_line(error)
        return
    assert blocks.shape[1] == block and blocks.shape[0] >= 1


@examples(150)
@given(paragraphs=st.lists(st.text(ANY_CHARACTER.filter(lambda c: not "\ud800" <= c <= "\udfff"), max_size=400),
                           max_size=6))
def test_a_continuation_task_built_from_any_text_reads_back(tmp_path, paragraphs):
    from registry import corpus, tasks

    source = tmp_path / "text.txt"
    source.write_text("\n\n".join(paragraphs), encoding="utf-8")
    built = corpus.write_continuation_task(tmp_path / "task.jsonl", source)
    try:
        task = tasks.read_task(str(built))
    except UsageError as error:
        assert "holds no examples" in str(error)
        return
    assert task.kind == tasks.MULTIPLE_CHOICE
    assert all(example.choices[example.label] in example.choices for example in task.examples)


# -------------------------------------------------------------------- task files and their prompts


task_records = st.one_of(
    st.fixed_dictionaries({"prompt": texts, "choices": st.lists(texts, max_size=5), "answer": st.integers(-2, 6)}),
    st.fixed_dictionaries({"prompt": texts, "answer": texts}),
    st.fixed_dictionaries({"text": texts}),
    st.dictionaries(st.sampled_from(["prompt", "choices", "answer", "text", "extra"]), json_values, max_size=4),
)
task_lines = st.one_of(task_records.map(lambda record: json.dumps(record, ensure_ascii=False)), jsonl_lines)


@examples(300)
@given(lines=st.lists(task_lines, max_size=6), template=st.one_of(st.none(), texts),
       shots=st.integers(0, 3), context_length=st.sampled_from([4, 16, CONTEXT, 1024]),
       max_new_tokens=st.integers(1, 40), limit=st.one_of(st.none(), st.integers(1, 3)))
def test_a_task_file_of_any_lines_gives_fitting_prompts_or_refuses(tmp_path, lines, template, shots,
                                                                   context_length, max_new_tokens, limit):
    from backends.tokenizer import encode
    from plugins.evaluate import _task_requests

    task_file = tmp_path / "task.jsonl"
    task_file.write_bytes(_encoded("\n".join(lines)))
    template_file = None
    if template is not None:
        template_file = tmp_path / "template.txt"
        template_file.write_bytes(_encoded(template))
    try:
        requests = _task_requests(str(task_file), None, shots, None, template_file and str(template_file), 0, limit,
                                  max_new_tokens, context_length)
    except UsageError as error:
        refused_in_one_line(error)
        return
    assert len(requests.prompts) == len(requests.task.examples) >= 1
    assert all(len(encode(prompt)) < context_length for prompt in requests.prompts)


def test_json_the_reader_cannot_hold_is_refused_in_one_line(tmp_path):
    from registry import tasks
    from registry.data import read_texts

    cases = [("[" * 100_000, "nests too deeply"), ('{"text": ' + "7" * 5000 + "}", "number too long"),
             ('{"text": "\\ud800 alone"}', "lone surrogate"), ('{"prompt": "\\udfff", "answer": "x"}', "lone surrogate")]
    for number, (content, problem) in enumerate(cases):
        path = tmp_path / f"bad{number}.jsonl"
        path.write_text(content + "\n", encoding="utf-8")
        readers = [lambda path=path: tasks.read_task(str(path))]
        if number < 3:  # the last case has no "text" field for read_texts to find
            readers.append(lambda path=path: read_texts([str(path)]))
        for read in readers:
            with pytest.raises(UsageError, match=problem) as refused:
                read()
            refused_in_one_line(refused.value)


# -------------------------------------------------------------------- the CLI and SDK on a model


@examples(40)
@given(text=texts)
def test_the_tokenize_command_answers_or_refuses_in_one_line(gpt2reg, text):
    result = gpt2reg("tokenize", "--json", "--", text)
    if result.exit_code == 2:
        assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1, result
        return
    assert result.exit_code == 0, result
    from backends.tokenizer import decode

    assert decode(result.json()["token_ids"]) == text


def _words(count: int) -> str:
    return "a" + " a" * (count - 1)  # exactly `count` GPT-2 tokens


model_prompts = st.one_of(texts, st.integers(100, 140).map(_words))


@examples(12)
@given(prompts=st.lists(model_prompts, min_size=1, max_size=2), stop=st.one_of(st.none(), texts, st.just("x" * 20_000)),
       max_new_tokens=st.integers(1, 3), truncate=st.sampled_from(["none", "left"]))
def test_generate_on_the_model_answers_or_refuses(family_home, prompts, stop, max_new_tokens, truncate):
    from registry import Registry

    reg = Registry(family_home)
    try:
        result = reg.run("generate", "base/1", prompts=prompts, stop=[stop] if stop is not None else [],
                         max_new_tokens=max_new_tokens, truncate=truncate)
    except UsageError as error:
        refused_in_one_line(error)
        return
    finally:
        reg.close()
    outputs = result.output["outputs"]
    assert [o["prompt"] for o in outputs] == prompts
    assert all(len(o["token_ids"]) <= max_new_tokens for o in outputs)


def test_prompts_at_the_context_edge(family_home):
    from registry import Registry

    reg = Registry(family_home)
    fits = reg.run("generate", "base/1", prompts=[_words(CONTEXT - 1)], max_new_tokens=1)
    assert len(fits.output["outputs"][0]["token_ids"]) == 1
    for prompt, new in ((_words(CONTEXT), 1), (_words(CONTEXT + 1), 1), (_words(CONTEXT - 1), 2)):
        with pytest.raises(UsageError, match=f"exceeds the model's context of {CONTEXT}") as refused:
            reg.run("generate", "base/1", prompts=[prompt], max_new_tokens=new)
        refused_in_one_line(refused.value)
    cut = reg.run("generate", "base/1", prompts=[_words(CONTEXT + 1)], max_new_tokens=1, truncate="left")
    assert cut.output["truncated"] == [{"prompt": 0, "dropped_tokens": 2}]
    reg.close()


def test_prompts_and_texts_at_gpt2s_context_of_1024(tmp_path, gpt2reg):
    """GPT-2's own context: 1024 prompt tokens leave no room, 1025 are refused, and a text of
    exactly 1024 or 1025 tokens is scored (the second through the sliding window)."""
    from backends import keras_gpt2
    from backends.configs import get_config

    narrow = {**get_config("tiny"), "max_sequence_length": 1024}  # GPT-2's positions on a tiny body
    keras_gpt2.save(keras_gpt2.build(narrow, seed=0), tmp_path / "preset")
    home = tmp_path / "home"
    assert gpt2reg("import", "long", tmp_path / "preset", "--home", home).exit_code == 0
    fits = gpt2reg("generate", "long", _words(1023), "--max-new-tokens", "1", "--json", "--home", home)
    assert fits.exit_code == 0 and len(fits.json()["outputs"][0]["token_ids"]) == 1, fits
    for count in (1024, 1025):
        refused = gpt2reg("generate", "long", _words(count), "--max-new-tokens", "1", "--home", home)
        assert refused.exit_code == 2 and "exceeds the model's context of 1024" in refused.stderr, refused
        assert refused.stderr.count("\n") == 1
    for count in (1024, 1025):
        text = tmp_path / f"text-{count}.txt"
        text.write_text(_words(count), encoding="utf-8")
        scored = gpt2reg("evaluate", "long", "--data", text, "--json", "--home", home)
        assert scored.exit_code == 0, scored
        assert scored.json()["tokens"] == count - 1  # every token after the first is predicted once


@examples(8)
@given(content=st.one_of(st.binary(max_size=120), texts.map(_encoded),
                         st.sampled_from([_words(CONTEXT).encode(), _words(CONTEXT + 1).encode(), b"a", b"\x00\x00"])),
       suffix=st.sampled_from([".txt", ".jsonl"]))
def test_evaluate_on_the_model_measures_or_refuses(family_home, tmp_path, content, suffix):
    import math

    from registry import Registry

    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    reg = Registry(family_home)
    try:
        result = reg.run("evaluate", "base/1", data=[str(path)])
    except UsageError as error:
        refused_in_one_line(error)
        return
    finally:
        reg.close()
    assert math.isfinite(result.metrics["perplexity"]) and result.metrics["tokens"] >= 1


plain = st.text(st.sampled_from(string.ascii_letters + " \x00\t\n"), min_size=1, max_size=40)
model_task_lines = st.one_of(
    st.builds(lambda prompt, first, second, answer: {"prompt": prompt, "choices": [first, second], "answer": answer},
              st.one_of(plain, texts), plain, st.one_of(plain, texts), st.integers(0, 1)),
    st.fixed_dictionaries({"prompt": st.one_of(plain, texts), "answer": plain}),
    st.builds(lambda words, last: {"text": f"{words} {last}"}, st.one_of(plain, texts), plain),
).map(json.dumps)


@examples(8)
@given(lines=st.one_of(st.lists(model_task_lines, min_size=1, max_size=3), st.lists(task_lines, min_size=1, max_size=2)),
       shots=st.integers(0, 1))
def test_evaluate_a_task_on_the_model_scores_or_refuses(family_home, tmp_path, lines, shots):
    from registry import Registry

    path = tmp_path / "task.jsonl"
    path.write_bytes(_encoded("\n".join(lines)))
    reg = Registry(family_home)
    try:
        result = reg.run("evaluate", "base/1", task=str(path), shots=shots, max_new_tokens=2)
    except UsageError as error:
        refused_in_one_line(error)
        return
    finally:
        reg.close()
    assert result.output["examples"] >= 1
