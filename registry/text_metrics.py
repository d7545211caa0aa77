"""Scores of generated text against reference answers.

Exact match and token F1 follow the SQuAD evaluation script (lower case, no
punctuation, no articles, single spaces); BLEU is sacrebleu's corpus BLEU
(0-100, its default tokenizer and exponential smoothing); ROUGE-1, ROUGE-2
and ROUGE-L are rouge-score's F-measures averaged over examples (0-1).

Example:
    >>> from registry import text_metrics
    >>> text_metrics.token_f1("The cat sat", "a cat sat down")
    0.8
    >>> text_metrics.generation_scores(["the cat"], ["The cat!"])["exact_match"]
    1.0
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, punctuation and articles removed, spaces collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(answer))


def token_f1(prediction: str, answer: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not predicted or not expected:
        return float(predicted == expected)  # both empty: a match; one empty: nothing in common
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def bleu(predictions: list[str], answers: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [answers]).score)


def rouge(predictions: list[str], answers: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=False)
    totals = dict.fromkeys(kinds, 0.0)
    for prediction, answer in zip(predictions, answers):
        scores = scorer.score(answer, prediction)  # rouge-score takes (target, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    count = max(len(predictions), 1)
    return {kind: total / count for kind, total in totals.items()}


def generation_scores(predictions: list[str], answers: list[str]) -> dict[str, float]:
    """Exact match, token F1, BLEU and ROUGE of `predictions` against `answers` (same order)."""
    if len(predictions) != len(answers):
        raise ValueError("one prediction per answer")
    count = max(len(predictions), 1)
    return {
        "exact_match": sum(map(exact_match, predictions, answers)) / count,
        "f1": sum(map(token_f1, predictions, answers)) / count,
        "bleu": bleu(predictions, answers),
        **rouge(predictions, answers),
    }
