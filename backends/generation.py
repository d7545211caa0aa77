"""Text generation: every decoding strategy, stop strings and streaming, over a `backends.decoder.Decoder`.

Prompts are token ids with no start token prepended (as Hugging Face does, so
greedy output matches `transformers` token for token). A batch is padded only
to its longest prompt (in buckets of 16) plus the new tokens (in buckets of
64), and each row decodes at its own positions: a prompt gives the same
greedy tokens alone or beside prompts of any length.

The model runs compiled (`backends.decoding`); choosing the next token runs
here, in numpy, one step at a time. That is what KerasHub's samplers cannot
offer, since each runs its whole loop inside one compiled function: a
repetition penalty, n-gram blocking and a minimum length change the logits
between steps, stop strings are matched on the decoded text, and a stream
hands out text as it is produced. The order of the logits processors is
Hugging Face's: repetition penalty, n-gram blocking, minimum length, then
temperature and the top-k / top-p filters.

Example:
    >>> from backends import generation, keras_gpt2
    >>> lm = keras_gpt2.load("preset-folder")
    >>> generation.generate(lm, [[464, 2068]], max_new_tokens=4)[0].token_ids
    [...]
    >>> for event in generation.stream(lm, [[464, 2068]], max_new_tokens=4, sampler="top_p", seed=1):
    ...     print(event.text, end="")
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace

import numpy as np

from backends.configs import END_OF_TEXT_ID
from backends.configs import GENERATION_RUNTIMES as RUNTIMES
from backends.configs import SAMPLERS
from backends.decoder import Decoder
from backends.decoding_speed import tokens_per_second
from backends.logits_processors import (apply_repetition_penalty, banned_by_ngrams, log_softmax, softmax,
                                        top_k_filter, top_p_filter)

CONTRASTIVE_TOP_K = 5  # KerasHub's ContrastiveSampler default


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    sampler: str = "greedy"
    temperature: float = 1.0
    top_k: int | None = None  # top_k sampler: 50; contrastive: 5 candidates
    top_p: float = 0.9
    num_beams: int = 4
    length_penalty: float = 1.0  # beam scores are divided by (new tokens) ** length_penalty
    return_all_beams: bool = False
    penalty_alpha: float = 0.6  # contrastive search's weight of the degeneration penalty
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_at_end_of_text: bool = True
    seed: int | None = None
    xla: bool | None = None  # compile the decoder with XLA; default: for models of 100M parameters or more
    runtime: str = "auto"  # keras, onnx or litert; auto: onnx where it can run the model (backends.decoding)

    def problems(self) -> list[str]:
        """What is wrong with these settings, each as the sentence a user needs."""
        found = []
        if self.sampler not in SAMPLERS:
            found.append(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if self.max_new_tokens < 1:
            found.append(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            found.append(f"--min-new-tokens must be between 0 and --max-new-tokens (got {self.min_new_tokens})")
        if not self.temperature > 0:
            found.append(f"--temperature must be greater than 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            found.append(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.top_k is not None and self.top_k < 1:
            found.append(f"--top-k must be at least 1 (got {self.top_k})")
        if self.num_beams < 1:
            found.append(f"--num-beams must be at least 1 (got {self.num_beams})")
        if not self.repetition_penalty > 0:
            found.append(f"--repetition-penalty must be greater than 0 (got {self.repetition_penalty})")
        if self.no_repeat_ngram_size < 0:
            found.append(f"--no-repeat-ngram-size must be 0 (off) or more (got {self.no_repeat_ngram_size})")
        if not 0 <= self.penalty_alpha <= 1:
            found.append(f"--penalty-alpha must be in [0, 1] (got {self.penalty_alpha})")
        if any(not s for s in self.stop):
            found.append("--stop must not be empty")
        if self.runtime not in RUNTIMES:
            found.append(f"unknown --runtime {self.runtime!r}; choose one of: {', '.join(RUNTIMES)}")
        elif self.xla is not None and self.runtime not in ("auto", "keras"):
            found.append(f"--xla/--no-xla choose how Keras compiles; they do not apply to --runtime {self.runtime}")
        return found

    @property
    def k(self) -> int:
        if self.top_k is not None:
            return self.top_k
        return CONTRASTIVE_TOP_K if self.sampler == "contrastive" else 50


@dataclass
class Generation:
    token_ids: list[int]  # the continuation only
    text: str
    finish_reason: str  # "length", "end_of_text" or "stop"
    beams: list[dict] = field(default_factory=list)  # with return_all_beams: every beam, best first


@dataclass(frozen=True)
class StreamEvent:
    row: int  # which prompt
    text: str  # new text since the last event of this row (may be empty)
    token_id: int | None  # the token just produced (None on a row's closing event)
    finish_reason: str | None = None  # set on the row's last event


def generate(lm, prompts: list[list[int]], config: GenerationConfig | None = None, **settings) -> list[Generation]:
    """Continue each prompt; all prompts decode in one batch.

    `lm`: a loaded KerasHub model (decoded on the config's runtime) or a `backends.decoder.Decoder`.
    """
    return Stream(lm, prompts, config, **settings).results()


def stream(lm, prompts: list[list[int]], config: GenerationConfig | None = None, **settings) -> "Stream":
    """Iterate over `StreamEvent`s as text is produced; the pieces of a row join to exactly the
    text `generate` returns for the same settings and seed."""
    return Stream(lm, prompts, config, **settings)


class Stream:
    """A generation in progress: iterate for events, then `results()` for the outputs."""

    def __init__(self, lm, prompts: list[list[int]], config: GenerationConfig | None = None, **settings):
        self.config = replace(config or GenerationConfig(), **_known(settings))
        problems = self.config.problems()
        if problems:
            raise ValueError(problems[0])
        self._lm, self._prompts = lm, prompts
        self._results: list[Generation] | None = None

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._results is not None:
            raise RuntimeError("this stream has been consumed")
        if self.config.sampler == "beam":
            # A beam's text is settled only at the end: each row comes in one piece.
            self._results = _beam_search(self._lm, self._prompts, self.config)
            for row, result in enumerate(self._results):
                yield StreamEvent(row, result.text, None, result.finish_reason)
            return
        decoding = _Decoding(self._lm, self._prompts, self.config)
        yield from decoding.events()
        self._results = decoding.results()

    def results(self) -> list[Generation]:
        if self._results is None:
            for _ in self:
                pass
        return self._results


def _known(settings: dict) -> dict:
    names = {f.name for f in fields(GenerationConfig)}
    unknown = set(settings) - names
    if unknown:
        raise TypeError(f"unknown generation settings: {', '.join(sorted(unknown))}")
    if isinstance(settings.get("stop"), (list, str)):
        stops = settings["stop"]
        settings["stop"] = (stops,) if isinstance(stops, str) else tuple(stops)
    return settings


def process(logits: np.ndarray, history: list[int], generated: int, config: GenerationConfig) -> np.ndarray:
    """The logits of one row after penalties, blocking and the minimum length (before temperature)."""
    logits = np.array(logits, dtype=np.float32)
    apply_repetition_penalty(logits, history, config.repetition_penalty)
    banned = banned_by_ngrams(history, config.no_repeat_ngram_size)
    if banned:
        logits[list(banned)] = -np.inf
    if generated < config.min_new_tokens:
        logits[END_OF_TEXT_ID] = -np.inf
    return logits


def _draw(probabilities: np.ndarray, rng: np.random.Generator) -> int:
    cumulative = np.cumsum(probabilities, dtype=np.float64)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(index, len(probabilities) - 1)


def choose(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    """The next token of one row from its processed logits."""
    if config.sampler in ("greedy", "beam"):
        return int(np.argmax(logits))
    scaled = logits / np.float32(config.temperature)
    if config.sampler == "top_k":
        scaled = top_k_filter(scaled, config.k)
    elif config.sampler == "top_p":
        scaled = top_p_filter(scaled, config.top_p)
    return _draw(softmax(scaled.astype(np.float64)), rng)


# -- text: stop strings and streaming ---------------------------------------


class _TextTracker:
    """The text of one row's new tokens, as far as it is settled.

    Bytes of a character split across tokens wait for the rest; text that
    could be the start of a stop string waits until it is not (or is).
    """

    def __init__(self, stops: tuple[str, ...]):
        from backends.tokenizer import fast_encoding

        self._encoding = fast_encoding()
        self.stops = stops
        self.raw = bytearray()
        self.token_ends: list[int] = []  # byte offset after each token
        self.text = ""  # decoded complete characters
        self.emitted = 0
        self.stop_at: int | None = None  # character offset where a stop string begins

    def add(self, token_id: int) -> None:
        self.raw += self._encoding.decode_single_token_bytes(token_id)
        self.token_ends.append(len(self.raw))
        before = len(self.text)
        self.text = _complete_utf8(self.raw)
        if self.stops and len(self.text) > before:
            longest = max(len(s) for s in self.stops)
            start = max(0, before - longest + 1)
            found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if found:
                self.stop_at = min(found)

    def settled(self) -> str:
        """New text that no later token can change; marks it emitted."""
        end = len(self.text) if self.stop_at is None else self.stop_at
        if self.stop_at is None and self.stops:
            end -= _held_back(self.text, self.stops)
        piece = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece

    def final(self) -> tuple[str, int]:
        """The whole text (cut before a stop string) and how many tokens lie wholly before the cut."""
        if self.stop_at is None:
            return self.raw.decode("utf-8", errors="replace"), len(self.token_ends)
        text = self.text[: self.stop_at]
        cut = len(text.encode("utf-8"))
        return text, sum(1 for end in self.token_ends if end <= cut)


def _complete_utf8(raw: bytearray) -> str:
    """Decode the bytes up to the last complete character (a split one waits for its next token)."""
    for trim in range(0, min(4, len(raw)) + 1):
        try:
            return bytes(raw[: len(raw) - trim]).decode("utf-8")
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace")


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    held = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:length]):
                held = length
                break
    return held


# -- the decoding loop ------------------------------------------------------


class _Decoding:
    """Greedy, sampling and contrastive decoding of a batch, one token per step."""

    def __init__(self, lm, prompts: list[list[int]], config: GenerationConfig):
        self.config = config
        self.prompts = _unconditional_as_end_of_text(prompts)
        self.decoder: Decoder = decoder_of(lm, config)
        self.histories = [list(p) for p in self.prompts]
        self.generated: list[list[int]] = [[] for _ in self.prompts]
        self.trackers = [_TextTracker(config.stop) for _ in self.prompts]
        self.finish: list[str | None] = [None] * len(self.prompts)
        seed = config.seed
        self.rngs = [np.random.default_rng(None if seed is None else [seed, row]) for row in range(len(self.prompts))]

    def events(self) -> Iterator[StreamEvent]:
        with self.decoder.lock:
            yield from self._events()

    def _events(self) -> Iterator[StreamEvent]:
        config, decoder = self.config, self.decoder
        width = config.k if config.sampler == "contrastive" else 1  # contrastive: k candidate rows per prompt
        rows = [p for p in self.prompts for _ in range(width)]
        state = decoder.start(rows, config.max_new_tokens)
        if config.sampler == "contrastive":
            context = [list(state.prompt_hidden[row * width, : len(p)]) for row, p in enumerate(self.prompts)]
        for step in range(config.max_new_tokens):
            logits = state.logits[::width]
            chosen = []
            for row in range(len(self.prompts)):
                if self.finish[row]:
                    chosen.append(END_OF_TEXT_ID)
                    continue
                processed = process(logits[row], self.histories[row], len(self.generated[row]), config)
                if config.sampler == "contrastive":
                    chosen.append(processed)  # candidates are scored below
                else:
                    chosen.append(choose(processed, config, self.rngs[row]))
            if config.sampler == "contrastive":
                chosen = self._contrastive_step(state, chosen, context, width)
            for row, token in enumerate(chosen):
                if self.finish[row]:
                    continue
                yield from self._accept(row, int(token))
            if all(self.finish):
                return
            if step + 1 < config.max_new_tokens and config.sampler != "contrastive":
                decoder.step(state, chosen)
        for row in range(len(self.prompts)):
            if not self.finish[row]:
                yield self._close(row, "length")

    def _contrastive_step(self, state, processed_rows, context, width) -> list[int]:
        """KerasHub's contrastive search: among the k likeliest tokens, the one that balances its
        probability against its hidden state's largest cosine similarity to the context so far."""
        config, decoder = self.config, self.decoder
        candidates = np.zeros((len(self.prompts), width), dtype="int32")
        probabilities = np.zeros((len(self.prompts), width))
        for row, processed in enumerate(processed_rows):
            if isinstance(processed, np.ndarray):
                scaled = softmax((processed / np.float32(config.temperature)).astype(np.float64))
                top = np.argsort(-scaled, kind="stable")[:width]
                candidates[row], probabilities[row] = top, scaled[top]
            else:
                candidates[row] = END_OF_TEXT_ID
        _, hidden = decoder.step(state, candidates.reshape(-1))
        hidden = hidden.reshape(len(self.prompts), width, -1)
        parents, chosen = [], []
        for row in range(len(self.prompts)):
            past = np.asarray(context[row])
            similarity = _cosine(hidden[row], past).max(axis=1)
            score = (1 - config.penalty_alpha) * probabilities[row] - config.penalty_alpha * similarity
            best = int(np.argmax(score))
            chosen.append(int(candidates[row, best]))
            context[row].append(hidden[row, best])
            parents += [row * width + best] * width
        decoder.reorder(state, parents)
        return chosen

    def _accept(self, row: int, token: int) -> Iterator[StreamEvent]:
        config = self.config
        if token == END_OF_TEXT_ID and config.stop_at_end_of_text:
            yield self._close(row, "end_of_text")
            return
        self.generated[row].append(token)
        self.histories[row].append(token)
        tracker = self.trackers[row]
        tracker.add(token)
        if tracker.stop_at is not None:
            yield self._close(row, "stop", token)
            return
        yield StreamEvent(row, tracker.settled(), token)

    def _close(self, row: int, reason: str, token: int | None = None) -> StreamEvent:
        self.finish[row] = reason
        tracker = self.trackers[row]
        text, _ = tracker.final()
        piece = text[tracker.emitted:]
        tracker.emitted = len(text)
        return StreamEvent(row, piece, token, reason)

    def results(self) -> list[Generation]:
        results = []
        for row, tracker in enumerate(self.trackers):
            text, kept = tracker.final()
            results.append(Generation(self.generated[row][:kept], text, self.finish[row] or "length"))
        return results


def _cosine(candidates: np.ndarray, past: np.ndarray) -> np.ndarray:
    a = candidates / np.maximum(np.linalg.norm(candidates, axis=-1, keepdims=True), 1e-12)
    b = past / np.maximum(np.linalg.norm(past, axis=-1, keepdims=True), 1e-12)
    return a @ b.T


# -- beam search -------------------------------------------------------------


def decoder_of(model, config: GenerationConfig) -> Decoder:
    """`model` itself when it is a `Decoder` (as `RunContext.decoding` gives one, maybe without
    TensorFlow); else the decoder of a loaded Keras model for the config's runtime."""
    if isinstance(model, Decoder):
        return model
    from backends.decoding import decoder_for

    return decoder_for(model, config.xla, config.runtime)


def _beam_search(lm, prompts: list[list[int]], config: GenerationConfig) -> list[Generation]:
    decoder = decoder_of(lm, config)
    with decoder.lock:
        return _beam_search_locked(decoder, _unconditional_as_end_of_text(prompts), config)


def _beam_search_locked(decoder: Decoder, prompts: list[list[int]], config: GenerationConfig) -> list[Generation]:
    """Beam search with Hugging Face's scoring: a finished beam's score is its log-probability
    divided by (its new tokens) ** length_penalty; the search ends when no running beam can beat
    the worst of `num_beams` finished ones, or at `max_new_tokens`."""
    beams = config.num_beams
    state = decoder.start([p for p in prompts for _ in range(beams)], config.max_new_tokens)
    running = [[[] for _ in range(beams)] for _ in prompts]  # new tokens of each live beam
    scores = np.tile([0.0] + [-np.inf] * (beams - 1), (len(prompts), 1))  # only beam 0 starts
    finished: list[list[tuple[float, list[int], str]]] = [[] for _ in prompts]
    done = [False] * len(prompts)

    def normalized(score: float, length: int) -> float:
        return score / (max(length, 1) ** config.length_penalty)

    def add_finished(prompt: int, score: float, tokens: list[int], reason: str) -> None:
        finished[prompt].append((normalized(score, len(tokens)), tokens, reason))
        finished[prompt].sort(key=lambda item: -item[0])
        del finished[prompt][beams:]

    for step in range(config.max_new_tokens):
        parents, next_tokens = [], []
        for prompt in range(len(prompts)):
            base = prompt * beams
            if done[prompt]:
                parents += [base + b for b in range(beams)]
                next_tokens += [END_OF_TEXT_ID] * beams
                continue
            candidates = np.full((beams, state.logits.shape[1]), -np.inf)
            for b in range(beams):
                if np.isfinite(scores[prompt, b]):
                    history = prompts[prompt] + running[prompt][b]
                    processed = process(state.logits[base + b], history, len(running[prompt][b]), config)
                    candidates[b] = scores[prompt, b] + log_softmax(processed.astype(np.float64))
            flat = candidates.reshape(-1)
            order = np.argsort(-flat, kind="stable")[: 2 * beams]
            new_beams = []
            for rank, index in enumerate(order):
                if not np.isfinite(flat[index]):
                    break
                b, token = divmod(int(index), candidates.shape[1])
                tokens = running[prompt][b] + [token]
                if token == END_OF_TEXT_ID and config.stop_at_end_of_text:
                    if rank < beams:  # as Hugging Face: only a candidate among the best may finish
                        add_finished(prompt, float(flat[index]), running[prompt][b], "end_of_text")
                    continue
                if config.stop and _stop_cut(tokens, config.stop) is not None:
                    if rank < beams:
                        add_finished(prompt, float(flat[index]), tokens, "stop")
                    continue
                new_beams.append((float(flat[index]), b, token, tokens))
                if len(new_beams) == beams:
                    break
            while len(new_beams) < beams:  # fewer live candidates than beams
                new_beams.append((-np.inf, 0, END_OF_TEXT_ID, running[prompt][0]))
            for slot, (score, b, token, tokens) in enumerate(new_beams):
                scores[prompt, slot] = score
                running[prompt][slot] = tokens
                parents.append(base + b)
                next_tokens.append(token)
            best_running = max(s for s, *_ in new_beams)
            if len(finished[prompt]) == beams and (
                not np.isfinite(best_running)
                or normalized(best_running, step + 1) <= finished[prompt][-1][0]
            ):
                done[prompt] = True
        if all(done):
            break
        decoder.reorder(state, parents)
        if step + 1 < config.max_new_tokens:
            decoder.step(state, next_tokens)
    for prompt in range(len(prompts)):
        if not done[prompt]:
            for b in range(beams):
                if np.isfinite(scores[prompt, b]):
                    add_finished(prompt, float(scores[prompt, b]), running[prompt][b], "length")
    return [_beam_result(hypotheses, config) for hypotheses in finished]


def _stop_cut(tokens: list[int], stops: tuple[str, ...]) -> tuple[str, int] | None:
    """The text cut before the first stop string and the tokens wholly before it; None without a match.
    The same matcher as streaming, so a beam stops exactly where a sampled row would."""
    tracker = _TextTracker(stops)
    for token in tokens:
        tracker.add(token)
        if tracker.stop_at is not None:
            return tracker.final()
    return None


def _unconditional_as_end_of_text(prompts: list[list[int]]) -> list[list[int]]:
    """An empty prompt means "unconditional": start from end-of-text, as GPT-2 was trained."""
    return [list(p) if len(p) else [END_OF_TEXT_ID] for p in prompts]


def _beam_result(hypotheses, config: GenerationConfig) -> Generation:
    from backends.tokenizer import decode

    described = []
    for score, tokens, reason in hypotheses:
        cut = _stop_cut(tokens, config.stop) if config.stop else None
        text, kept = cut if cut is not None else (decode(tokens), len(tokens))
        described.append({"token_ids": tokens[:kept], "text": text, "score": score, "finish_reason": reason})
    if not described:
        return Generation([], "", "end_of_text")
    best = described[0]
    return Generation(best["token_ids"], best["text"], best["finish_reason"],
                      described if config.return_all_beams else [])


def greedy_tokens_per_second(lm, prompt_ids: list[int], new_tokens: int = 32) -> float:
    """Batch-1 greedy decoding speed as `generate` decodes (`backends.decoding_speed`: one warm-up
    call traces the step first)."""

    def greedy(prompt: list[int], count: int) -> list[int]:
        return generate(lm, [prompt], max_new_tokens=count, sampler="greedy")[0].token_ids

    return tokens_per_second(greedy, prompt_ids, new_tokens)
