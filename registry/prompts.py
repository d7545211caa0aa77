"""Prompt templates and few-shot prompts fitted to a context budget.

A template is text with ``{placeholders}`` naming an example's fields. For
few-shot prompts, ``{answer}`` marks where the answer goes: shots are the
whole template with their answers filled in, and the question is the
template up to ``{answer}``. Shots are joined by a blank line, the question
comes last. When the prompt would not leave room for the answer in the
model's context, shots are dropped (and counted, so the caller can warn);
the question itself is never cut: a question too long on its own is an error.

Example:
    >>> from registry.prompts import Template, fit_prompt
    >>> template = Template("Q: {question}\\nA:{answer}")
    >>> template.query({"question": "2+2?"})
    'Q: 2+2?\\nA:'
    >>> fit_prompt(template, {"question": "3+3?"}, [{"question": "1+1?", "answer": " 2"}],
    ...            budget=100, count_tokens=lambda text: len(text.split())).text
    'Q: 1+1?\\nA: 2\\n\\nQ: 3+3?\\nA:'
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable

from registry.errors import UsageError, shown

SHOT_SEPARATOR = "\n\n"
ANSWER = "answer"
DEFAULT_TEMPLATE = "{prompt}{answer}"
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text, what: str) -> str:
    """`text` if it is Unicode text a model can be given; lone surrogates (what undecodable
    bytes of a command line become) are refused with one line."""
    if not isinstance(text, str):
        raise UsageError(f"{what} must be text, not {type(text).__name__}")
    surrogate = LONE_SURROGATE.search(text)
    if surrogate:
        raise UsageError(f"{what} is not valid UTF-8 text (character {surrogate.start()} is the lone surrogate "
                         f"\\u{ord(surrogate.group(0)):04x}); pass UTF-8 text")
    return text


class Template:
    """A prompt template with ``{field}`` placeholders (``{{`` and ``}}`` for literal braces)."""

    def __init__(self, text: str, source: str = "template"):
        self.text, self.source = check_text(text, source), source
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as error:
            raise UsageError(f"{source}: {error}; write literal braces as {{{{ and }}}}") from None
        self.fields: list[str] = []
        # The question is the template up to the first {answer} placeholder; rebuilt from the parsed
        # pieces, since a literal "{{answer}}" also contains the text "{answer}".
        query, answered = [], False
        for literal, name, spec, conversion in parsed:
            if not answered:
                query.append(literal.replace("{", "{{").replace("}", "}}"))
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                shown_name = ascii(name)[1:-1][:60]  # the template's text: escaped, so the message stays one line
                raise UsageError(f"{source}: placeholder {{{shown_name}}} is not a plain field name such as {{question}}")
            if name not in self.fields:
                self.fields.append(name)
            if name == ANSWER:
                answered = True
            elif not answered:
                query.append("{" + name + "}")
        self._query_text = "".join(query)

    @classmethod
    def from_file(cls, path: str, option: str = "--template") -> "Template":
        from registry.data import read_text_file, regular_file

        file = regular_file(path, option, "template file", "give a text file with {placeholders}")
        return cls(read_text_file(file, "template"), source=f"template {path}")

    @property
    def has_answer(self) -> bool:
        return ANSWER in self.fields

    def _render(self, text: str, values: dict, where: str) -> str:
        missing = [name for name in _fields_of(text) if name not in values]
        if missing:
            available = shown(", ".join(sorted(map(str, values)))) if values else "none"  # the user's keys, escaped
            raise UsageError(f"{self.source}: {where} has no value for {', '.join('{' + m + '}' for m in missing)}; "
                             f"give it (fields available: {available})")
        return text.format(**{k: v for k, v in values.items() if k in _fields_of(text)})

    def query(self, values: dict, where: str = "the prompt") -> str:
        """The template up to ``{answer}``, filled in: what the model is asked."""
        return self._render(self._query_text, values, where)

    def shot(self, values: dict, where: str = "a shot") -> str:
        """The whole template, answer included: a solved example."""
        return self._render(self.text, values, where)


def _fields_of(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


@dataclass(frozen=True)
class FittedPrompt:
    text: str
    shots_used: int
    shots_dropped: int
    tokens: int


def fit_prompt(template: Template, question: dict, shots: list[dict], *, budget: int,
               count_tokens: Callable[[str], int], where: str = "the question") -> FittedPrompt:
    """The few-shot prompt for `question`, with as many of `shots` (in order) as fit in `budget` tokens."""
    if budget < 1:
        raise UsageError(f"{where} leaves no room in the model's context: its answer alone fills all of it; "
                         "shorten the answer (or --max-new-tokens) or use a model with a longer context")
    query = template.query(question, where)
    rendered = [template.shot(shot, f"a shot for {where}") for shot in shots]
    for keep in range(len(rendered), -1, -1):
        text = SHOT_SEPARATOR.join(rendered[:keep] + [query])
        tokens = count_tokens(text)
        if tokens <= budget:
            return FittedPrompt(text, keep, len(rendered) - keep, tokens)
    raise UsageError(
        f"{where} alone is {tokens} tokens, more than the {budget} the context leaves beside its answer; "
        "shorten it or use a model with a longer context (questions are never cut)"
    )
