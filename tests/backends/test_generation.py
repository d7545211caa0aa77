"""Generation: logits processors against numpy references, every sampler on the fixture model,
stop strings and streaming, batches equal to single prompts, and compiled buckets reused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends import generation
from backends.configs import END_OF_TEXT_ID
from backends.generation import GenerationConfig

VOCAB = 50257


# -- references, written the slow obvious way ---------------------------------


def reference_repetition_penalty(logits, seen, penalty):
    out = list(logits)
    for token in set(seen):
        out[token] = out[token] / penalty if out[token] > 0 else out[token] * penalty
    return np.array(out, dtype=np.float32)


def reference_banned(history, size):
    """Tokens t such that history + [t] ends with an n-gram that already occurs in history."""
    banned = set()
    for token in range(max(history) + 2):
        extended = history + [token]
        last = tuple(extended[-size:])
        earlier = {tuple(history[i:i + size]) for i in range(len(history) - size + 1)}
        if len(extended) >= size and last in earlier:
            banned.add(token)
    return banned


def reference_top_p_set(logits, p):
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = sorted(range(len(logits)), key=lambda i: (-probabilities[i], i))
    total, kept = 0.0, []
    for index in order:
        kept.append(index)
        total += probabilities[index]
        if total >= p:
            break
    return set(kept)


def test_repetition_penalty_matches_the_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=200).astype(np.float32)
    seen = [3, 3, 17, 150, 199, 0]
    got = generation.apply_repetition_penalty(logits.copy(), seen, 1.3)
    np.testing.assert_allclose(got, reference_repetition_penalty(logits, seen, 1.3), rtol=1e-6)
    # Positive logits shrink, negative ones grow more negative: a seen token always loses probability.
    assert all(got[t] < logits[t] for t in set(seen))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(history=st.lists(st.integers(0, 6), min_size=1, max_size=25), size=st.integers(1, 4))
def test_ngram_blocking_matches_the_reference(history, size):
    assert generation.banned_by_ngrams(history, size) == reference_banned(history, size)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(logits=st.lists(st.floats(-8, 8, allow_nan=False), min_size=2, max_size=40), p=st.floats(0.05, 0.999))
def test_top_p_keeps_the_smallest_set_that_reaches_p(logits, p):
    logits = np.array(logits, dtype=np.float32)
    kept = set(np.flatnonzero(np.isfinite(generation.top_p_filter(logits.copy(), p))))
    assert kept == reference_top_p_set(logits.astype(np.float64), p)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(logits=st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=5, max_size=60, unique=True),
       k=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_top_k_never_emits_a_token_outside_the_top_k(logits, k, seed):
    logits = np.array(logits, dtype=np.float32)
    # A token tied with the k-th largest logit counts as top k (as in Hugging Face's filter).
    top = set(np.flatnonzero(logits >= np.sort(logits)[-k]))
    config = GenerationConfig(sampler="top_k", top_k=k, temperature=1.7)
    rng = np.random.default_rng(seed)
    assert {generation.choose(logits, config, rng) for _ in range(30)} <= top


def test_minimum_length_refuses_end_of_text_until_reached():
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[END_OF_TEXT_ID] = 10.0
    config = GenerationConfig(min_new_tokens=3)
    assert generation.process(logits, [1, 2], 2, config)[END_OF_TEXT_ID] == -np.inf
    assert generation.process(logits, [1, 2], 3, config)[END_OF_TEXT_ID] == 10.0


# -- stop strings and streamed text, on real tokens ---------------------------

WORDS = [" the", " cat", " sat", "\n", " on", " mat", ".", " é", "té", " 日本", "語", "!", " stop", "ping"]


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=20),
       stops=st.lists(st.sampled_from(["\n", " sat on", "stop", "t.", "語!", "é"]), min_size=1, max_size=3))
def test_stop_strings_never_appear_and_streamed_pieces_join_to_the_text(words, stops):
    from backends.tokenizer import encode

    tracker = generation._TextTracker(tuple(stops))
    streamed = []
    for token in encode("".join(words)):
        tracker.add(token)
        if tracker.stop_at is not None:
            break
        streamed.append(tracker.settled())
    text, kept = tracker.final()
    streamed.append(text[tracker.emitted:])
    assert not any(stop in text for stop in stops)
    assert "".join(streamed) == text
    full = "".join(words)
    first = min((i for i in (full.find(s) for s in stops) if i >= 0), default=None)
    assert text == (full if first is None else full[:first])


# -- on the fixture model ------------------------------------------------------


def sequence_log_probability(lm, prompt, new):
    ids = np.array([prompt + new], dtype="int32")
    logits = np.asarray(lm({"token_ids": ids, "padding_mask": np.ones_like(ids)}), dtype=np.float64)[0]
    rows = logits[len(prompt) - 1: len(prompt) - 1 + len(new)]
    rows = rows - rows.max(axis=1, keepdims=True)
    return float(sum(row[t] - np.log(np.exp(row).sum()) for row, t in zip(rows, new)))


@pytest.mark.parametrize("runtime", [dict(xla=False), dict(xla=True), dict(runtime="onnx"), dict(runtime="litert")],
                         ids=["keras-graph", "keras-xla", "onnx", "litert"])
def test_greedy_and_one_beam_equal_the_reference_in_one_batch(lm, cases, runtime):
    prompts = [case["token_ids"] for case in cases]
    greedy = generation.generate(lm, prompts, max_new_tokens=16, stop_at_end_of_text=False, **runtime)
    beam = generation.generate(lm, prompts, max_new_tokens=16, sampler="beam", num_beams=1, stop_at_end_of_text=False,
                               **runtime)
    for case, g, b in zip(cases, greedy, beam):
        assert g.token_ids == case["greedy_16"]
        assert b.token_ids == case["greedy_16"]


def test_beam_search_scores_are_true_log_probabilities_and_beat_greedy(lm, cases):
    prompt = cases[1]["token_ids"]
    result = generation.generate(lm, [prompt], max_new_tokens=8, sampler="beam", num_beams=4, length_penalty=0.0,
                                 return_all_beams=True, stop_at_end_of_text=False)[0]
    assert len(result.beams) == 4
    assert [b["score"] for b in result.beams] == sorted((b["score"] for b in result.beams), reverse=True)
    for beam in result.beams:
        assert beam["score"] == pytest.approx(sequence_log_probability(lm, prompt, beam["token_ids"]), abs=1e-3)
    greedy = generation.generate(lm, [prompt], max_new_tokens=8, stop_at_end_of_text=False)[0].token_ids
    assert result.beams[0]["score"] >= sequence_log_probability(lm, prompt, greedy) - 1e-4
    assert result.token_ids == result.beams[0]["token_ids"]


def test_contrastive_search_follows_its_definition(lm, cases):
    """Each step: among the k likeliest tokens, maximise (1 - a) p - a max cos(h, context), with the
    hidden states from full forward passes (the slow way)."""
    prompt, k, alpha = cases[2]["token_ids"], 3, 0.6
    ids = list(prompt)
    for _ in range(5):
        logits = np.asarray(lm({"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)))}),
                            dtype=np.float64)[0, -1]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best, best_score = None, -np.inf
        for candidate in np.argsort(-p)[:k]:
            seq = np.array([ids + [int(candidate)]])
            hidden = np.asarray(lm.backbone({"token_ids": seq, "padding_mask": np.ones_like(seq)}), dtype=np.float64)[0]
            past, new = hidden[:-1], hidden[-1]
            similarity = (past @ new) / (np.linalg.norm(past, axis=1) * np.linalg.norm(new))
            score = (1 - alpha) * p[candidate] - alpha * similarity.max()
            if score > best_score:
                best, best_score = int(candidate), score
        ids.append(best)
    ours = generation.generate(lm, [prompt], max_new_tokens=5, sampler="contrastive", top_k=k, penalty_alpha=alpha,
                               stop_at_end_of_text=False)[0]
    assert ours.token_ids == ids[len(prompt):]


def test_repetition_controls_shape_the_output(lm, cases):
    prompt = cases[0]["token_ids"]
    plain = generation.generate(lm, [prompt], max_new_tokens=24, stop_at_end_of_text=False)[0].token_ids
    blocked = generation.generate(lm, [prompt], max_new_tokens=24, no_repeat_ngram_size=2,
                                  stop_at_end_of_text=False)[0].token_ids
    whole = prompt + blocked
    bigrams = [tuple(whole[i:i + 2]) for i in range(len(whole) - 1)]
    assert len(bigrams) == len(set(bigrams))
    penalised = generation.generate(lm, [prompt], max_new_tokens=24, repetition_penalty=1e6,
                                    stop_at_end_of_text=False)[0].token_ids
    # The fixture's greedy text repeats itself; an overwhelming penalty leaves no token used twice
    # while unseen tokens with positive logits remain.
    assert len(set(plain)) < len(plain)
    assert len(set(penalised)) == len(penalised)


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                                  HealthCheck.function_scoped_fixture])
@given(prompts=st.lists(st.lists(st.integers(0, VOCAB - 2), min_size=1, max_size=30), min_size=2, max_size=4))
def test_a_batch_gives_each_prompt_what_it_gives_alone(lm, prompts):
    batch = generation.generate(lm, prompts, max_new_tokens=6, stop_at_end_of_text=False)
    for prompt, together in zip(prompts, batch):
        alone = generation.generate(lm, [prompt], max_new_tokens=6, stop_at_end_of_text=False)[0]
        assert together.token_ids == alone.token_ids


def test_seeds_streaming_and_stop_strings(lm, cases):
    prompts = [case["token_ids"] for case in cases[:3]]
    settings_ = dict(max_new_tokens=12, sampler="top_p", top_p=0.95, seed=11, stop_at_end_of_text=False)
    first = generation.generate(lm, prompts, **settings_)
    again = generation.generate(lm, prompts, **settings_)
    other = generation.generate(lm, prompts, **{**settings_, "seed": 12})
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in other]

    pieces: dict[int, list[str]] = {}
    closing = {}
    for event in generation.stream(lm, prompts, **settings_):
        pieces.setdefault(event.row, []).append(event.text)
        if event.finish_reason:
            closing[event.row] = event.finish_reason
    assert ["".join(pieces[row]) for row in range(len(prompts))] == [r.text for r in first]
    assert closing == {row: "length" for row in range(len(prompts))}

    # Stop at a string the unconstrained output contains (spanning tokens), and leave it out.
    text = first[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    stopped = generation.generate(lm, prompts[:1], **settings_, stop=[stop])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == text[: text.find(stop)]
    assert stop not in stopped.text


def test_calls_in_the_same_bucket_reuse_the_compiled_functions(lm, cases):
    from backends.decoding import decoder_for

    decoder = decoder_for(lm, xla=True)
    generation.generate(lm, [cases[0]["token_ids"]], max_new_tokens=5, xla=True)
    traced = decoder.traces
    # Another prompt length and budget that round to the same buckets: nothing is traced again.
    generation.generate(lm, [cases[1]["token_ids"][:3]], max_new_tokens=9, xla=True)
    generation.generate(lm, [cases[0]["token_ids"]], max_new_tokens=5, sampler="top_k", seed=1, xla=True)
    assert decoder.traces == traced


def test_a_keras_quantized_model_decodes_with_its_own_arithmetic(fixture_dir, cases):
    from backends import keras_gpt2
    from backends.decoding import CompiledDecoder

    quantized = keras_gpt2.load(fixture_dir)
    quantized.backbone.quantize("int8")
    prompt = cases[0]["token_ids"]
    ids = np.array([prompt], dtype="int32")
    expected = np.asarray(quantized({"token_ids": ids, "padding_mask": np.ones_like(ids)}))[0, -1]
    state = CompiledDecoder(quantized).start([prompt], max_new_tokens=1)
    np.testing.assert_allclose(state.logits[0], expected, atol=1e-3)
