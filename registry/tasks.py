"""Evaluation tasks from local JSONL files, and the few-shot prompts built for them.

One example a line; the kind is read from the keys and must be the same on
every line:

- multiple choice: ``{"prompt": str, "choices": [str, ...], "answer": int}``;
  each choice is scored as a continuation of the prompt (accuracy);
- generation: ``{"prompt": str, "answer": str}``; the greedy continuation is
  scored by exact match, token F1, BLEU and ROUGE;
- last word (LAMBADA style): ``{"text": str}``; the model must produce the
  text's last word exactly, given everything before it.

Extra keys are kept: a template may use them as ``{placeholders}``.

Example:
    >>> from registry import tasks
    >>> task = tasks.read_task("arithmetic.jsonl")
    >>> task.kind, len(task.examples)
    ('multiple_choice', 40)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from registry.errors import UsageError, shown

MULTIPLE_CHOICE, GENERATION, LAST_WORD = "multiple_choice", "generation", "last_word"
# What MLflow takes in a metric key, less '/': a task name must not add a folder to its table's path.
TASK_NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._ -]{0,98}[A-Za-z0-9_-])?")


def check_task_name(name: str, given_as: str = "--task-name") -> str:
    """A task's name prefixes its metric keys and names its MLflow table file, so it is held to
    model-name rules: no path steps, separators or characters MLflow refuses in a metric key."""
    if not isinstance(name, str) or not TASK_NAME_PATTERN.fullmatch(name) or ".." in name:
        raise UsageError(f"task name {shown(name)} ({given_as}) cannot name metrics: use 1-100 ASCII letters, digits, "
                         "spaces, '.', '_' or '-' without '..'; give --task-name NAME")
    return name


@dataclass(frozen=True)
class Example:
    line: int
    kind: str
    fields: dict  # the JSON object, with "prompt" and "answer" (the answer's text) always present
    choices: tuple[str, ...] = ()
    label: int | None = None  # multiple choice: index of the right choice

    @property
    def prompt(self) -> str:
        return self.fields["prompt"]

    @property
    def answer(self) -> str:
        return self.fields["answer"]


@dataclass(frozen=True)
class Task:
    name: str
    path: str
    kind: str
    examples: list[Example]


def _kind_of(record: dict) -> str | None:
    if "choices" in record:
        return MULTIPLE_CHOICE
    if "prompt" in record and "answer" in record:
        return GENERATION
    if "text" in record and "prompt" not in record:
        return LAST_WORD
    return None


def _example(record: dict, line: int, where: str) -> Example:
    kind = _kind_of(record)
    if kind is None:
        keys = shown(", ".join(sorted(record))) if record else "none"  # keys are the file's text: shown escaped
        raise UsageError(f"{where}: expected {{\"prompt\", \"choices\", \"answer\"}}, {{\"prompt\", \"answer\"}} "
                         f"or {{\"text\"}}; got keys {keys}")
    fields = dict(record)
    if kind == MULTIPLE_CHOICE:
        choices, label = record.get("choices"), record.get("answer")
        if not isinstance(record.get("prompt"), str):
            raise UsageError(f"{where}: \"prompt\" must be a string")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UsageError(f"{where}: \"choices\" must be a list of two or more non-empty strings")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise UsageError(f"{where}: \"answer\" must be the index of the right choice, 0 to {len(choices) - 1}")
        fields["answer"] = choices[label]
        return Example(line, kind, fields, tuple(choices), label)
    if kind == GENERATION:
        if not isinstance(record["prompt"], str) or not isinstance(record["answer"], str):
            raise UsageError(f"{where}: \"prompt\" and \"answer\" must be strings")
        return Example(line, kind, fields)
    text = record["text"]
    if not isinstance(text, str) or " " not in text.strip():
        raise UsageError(f"{where}: \"text\" must be a string of two words or more (the last one is predicted)")
    context, last_word = text.rstrip().rsplit(" ", 1)
    fields.update(prompt=context, answer=" " + last_word)
    return Example(line, kind, fields)


def read_task(path: str, name: str | None = None, option: str = "--task") -> Task:
    """The examples of a JSONL task file, checked line by line."""
    from registry.data import json_line, jsonl_lines, lone_surrogate, read_text_file, regular_file

    file = regular_file(path, option, "task file", "give a JSONL file with one example a line")
    examples: list[Example] = []
    text = read_text_file(file, "task file")
    for number, line in jsonl_lines(text):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        record = json_line(line, where)
        if not isinstance(record, dict):
            raise UsageError(f"{where} is not a JSON object; one object a line")
        surrogate = lone_surrogate(record)
        if surrogate:
            raise UsageError(f"{where} holds the lone surrogate \\u{ord(surrogate):04x}, which is not Unicode text; "
                             "write the character itself or its surrogate pair")
        example = _example(record, number, where)
        if examples and example.kind != examples[0].kind:
            raise UsageError(f"{where} is a {example.kind} example but line {examples[0].line} is "
                             f"{examples[0].kind}; one kind of task per file")
        examples.append(example)
    if not examples:
        raise UsageError(f"task file {path} holds no examples")
    return Task(name=name or file.stem, path=str(path), kind=examples[0].kind, examples=examples)


def choose_shots(task: Task, index: int, pool: Task | None, shots: int, seed: int) -> list[Example]:
    """`shots` examples for question `index`: from `pool` (a train file), else from the task minus the question."""
    if shots == 0:
        return []
    count = len(pool.examples) if pool is not None else len(task.examples) - 1
    if count < shots:
        source = f"--train {pool.path}" if pool is not None else f"{task.path} (besides the question)"
        raise UsageError(f"--shots {shots} needs {shots} examples but {source} has {count}; "
                         "lower --shots or give a larger --train file")
    # Seeded per question: the same --seed gives every question the same shots, run after run.
    # Positions are drawn, not a copy of the other examples made per question, which would make a
    # task of n lines cost n² (`sample` picks the same positions from a range as from a list).
    picks = random.Random(seed * 1_000_003 + index).sample(range(count), shots)
    if pool is not None:
        return [pool.examples[position] for position in picks]
    return [task.examples[position if position < index else position + 1] for position in picks]
