"""Few-shot prompts: templates, shot choice and fitting to the context budget."""

import json

import pytest

from registry import tasks
from registry.errors import UsageError
from registry.prompts import Template, fit_prompt


def words(text):
    return len(text.split())


def test_template_renders_the_question_up_to_the_answer_and_shots_whole():
    template = Template("Q: {question}\nA:{answer}\n")
    assert template.query({"question": "2+2?"}) == "Q: 2+2?\nA:"
    assert template.shot({"question": "1+1?", "answer": " 2"}) == "Q: 1+1?\nA: 2\n"
    with pytest.raises(UsageError, match=r"no value for \{question\}"):
        template.query({"prompt": "x"})
    with pytest.raises(UsageError, match="not a plain field name"):
        Template("{question!r}")


def test_shots_are_dropped_to_fit_and_the_question_is_never_cut():
    template = Template("{prompt}{answer}")
    shots = [{"prompt": f"shot {i} has five words", "answer": " yes"} for i in range(4)]  # 6 words each
    question = {"prompt": "the question is four"}
    everything = fit_prompt(template, question, shots, budget=100, count_tokens=words)
    assert (everything.shots_used, everything.shots_dropped) == (4, 0)
    assert everything.text.endswith("the question is four") and everything.text.count("\n\n") == 4

    fitted = fit_prompt(template, question, shots, budget=17, count_tokens=words)  # 4 + 6 + 6 fits, 4 + 18 does not
    assert (fitted.shots_used, fitted.shots_dropped, fitted.tokens) == (2, 2, 16)
    assert fitted.text == "shot 0 has five words yes\n\nshot 1 has five words yes\n\nthe question is four"

    alone = fit_prompt(template, question, shots, budget=4, count_tokens=words)
    assert (alone.shots_used, alone.text) == (0, "the question is four")
    with pytest.raises(UsageError, match="alone is 4 tokens, more than the 3"):
        fit_prompt(template, question, shots, budget=3, count_tokens=words)


def _task_file(tmp_path, records, name="t.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_shots_never_include_the_question_and_follow_the_seed(tmp_path):
    task = tasks.read_task(_task_file(tmp_path, [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(6)]))
    for index in range(6):
        chosen = tasks.choose_shots(task, index, None, 5, seed=0)
        assert task.examples[index] not in chosen and len(set(e.line for e in chosen)) == 5
    assert tasks.choose_shots(task, 0, None, 2, seed=1) == tasks.choose_shots(task, 0, None, 2, seed=1)
    assert any(tasks.choose_shots(task, i, None, 2, seed=1) != tasks.choose_shots(task, i, None, 2, seed=2)
               for i in range(6))
    with pytest.raises(UsageError, match="--shots 6 needs 6 examples"):
        tasks.choose_shots(task, 0, None, 6, seed=0)


def test_task_kinds_and_their_errors(tmp_path):
    mc = tasks.read_task(_task_file(tmp_path, [{"prompt": "p", "choices": [" a", " b"], "answer": 1}]))
    assert mc.kind == tasks.MULTIPLE_CHOICE and mc.examples[0].answer == " b" and mc.examples[0].label == 1
    last = tasks.read_task(_task_file(tmp_path, [{"text": "the cat sat on the mat"}]))
    assert last.kind == tasks.LAST_WORD and (last.examples[0].prompt, last.examples[0].answer) == ("the cat sat on the", " mat")
    bad = [
        ([{"prompt": "p", "choices": [" a", " b"], "answer": 2}], "line 1: \"answer\" must be the index"),
        ([{"prompt": "p", "answer": "a"}, {"text": "two words"}], "line 2 is a last_word example but line 1"),
        ([{"question": "p"}], "line 1: expected"),
        ([], "holds no examples"),
    ]
    for records, message in bad:
        with pytest.raises(UsageError, match=message):
            tasks.read_task(_task_file(tmp_path, records))
    (tmp_path / "broken.jsonl").write_text('{"prompt": "p", "answer": "a"}\n{"prompt": \n')
    with pytest.raises(UsageError, match="line 2 is not valid JSON"):
        tasks.read_task(str(tmp_path / "broken.jsonl"))
