"""Text scores against values computed by hand."""

import math

import pytest

from registry import text_metrics


def test_exact_match_uses_squad_normalization():
    assert text_metrics.exact_match("The Cat!", "cat") == 1.0
    assert text_metrics.exact_match("  a   cat ", "the cat") == 1.0
    assert text_metrics.exact_match("cats", "cat") == 0.0


def test_token_f1_by_hand():
    # prediction: cat sat ; answer: cat sat down -> common 2, precision 2/2, recall 2/3
    assert text_metrics.token_f1("The cat sat", "a cat sat down") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert text_metrics.token_f1("dog", "cat") == 0.0
    assert text_metrics.token_f1("", "") == 1.0
    assert text_metrics.token_f1("", "cat") == 0.0


def test_bleu_by_hand():
    # n-gram precisions of "the cat sat on the mat" against "the cat is on the mat":
    # 5/6, 3/5, 1/4, and 0/3 for 4-grams, which exponential smoothing turns into 1/(2*3);
    # equal lengths, so no brevity penalty.
    expected = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1 / 6)) / 4)
    assert text_metrics.bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(expected, abs=1e-6)
    assert text_metrics.bleu(["the cat is on the mat"], ["the cat is on the mat"]) == pytest.approx(100.0)


def test_rouge_by_hand():
    scores = text_metrics.rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    assert scores["rouge1"] == pytest.approx(5 / 6)  # the, the, cat, on, mat of six words each side
    assert scores["rouge2"] == pytest.approx(3 / 5)  # "the cat", "on the", "the mat" of five bigrams
    assert scores["rougeL"] == pytest.approx(5 / 6)  # longest common subsequence: the cat on the mat


def test_generation_scores_average_over_examples():
    scores = text_metrics.generation_scores(["Paris", "blue sky"], ["paris", "the sky"])
    assert scores["exact_match"] == 0.5
    assert scores["f1"] == pytest.approx((1.0 + 2 * 0.5 * 1.0 / 1.5) / 2)  # "blue sky" vs "sky": P 1/2, R 1
    assert scores["rouge1"] == pytest.approx((1.0 + 2 * 0.5 * 0.5 / 1.0) / 2)  # rouge keeps "the": P 1/2, R 1/2
