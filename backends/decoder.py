"""The interface every decoder offers `backends.generation`: start a batch, step it, reorder its rows.

Two decoders implement it: `backends.decoding.CompiledDecoder` (the model's
own Keras arithmetic, compiled) and `backends.fast_decoding.RuntimeDecoder`
(a graph run by onnxruntime or LiteRT). `backends.decoding.decoder_for`
picks one; generation, beam search and teacher-forced scoring then use
nothing but what `Decoder` and `DecodeState` name, so a sampler written once
runs on either.

The protocols are structural: a decoder does not inherit from `Decoder`, it
has its members (tests/backends/test_decoder_protocol.py checks both).

Example:
    >>> decoder: Decoder = decoder_for(lm)
    >>> with decoder.lock:
    ...     state = decoder.start([[464, 2068, 7586]], max_new_tokens=8)
    ...     logits, hidden = decoder.step(state, [int(state.logits[0].argmax())])
"""

from __future__ import annotations

from typing import Any, ContextManager, Protocol, runtime_checkable


@runtime_checkable
class DecodeState(Protocol):
    """One batch being decoded, as generation reads it; only its decoder changes it."""

    logits: Any  # numpy [batch, vocabulary]: the scores of each row's next token
    hidden: Any  # numpy [batch, hidden]: the final hidden state of each row's last token
    prompt_hidden: Any  # numpy [batch, prompt slots, hidden]: the prompt's final hidden states
    positions: Any  # numpy [batch]: the position each row's next token takes

    @property
    def batch_size(self) -> int:
        """The number of rows."""

    @property
    def cache_length(self) -> int:
        """The number of key/value slots of each row's cache."""


@runtime_checkable
class Decoder(Protocol):
    """Prefill and single-token steps of one model, over a key/value cache per batch."""

    lock: ContextManager  # held for a whole generation: a decoder's caches may be shared between batches
    max_positions: int  # the model's context length: a prompt and its new tokens fit in it
    runtime: str  # what runs the model: keras, onnx or litert

    def cache_length_for(self, prompt_length: int, max_new_tokens: int) -> int:
        """The cache slots a batch gets for prompts of `prompt_length` and `max_new_tokens` more."""

    def start(self, prompts: list[list[int]], max_new_tokens: int) -> DecodeState:
        """Run the prompts (each non-empty) through the model; the state is ready for the first new token."""

    def step(self, state: DecodeState, tokens) -> tuple[Any, Any]:
        """Feed one token per row; returns (and stores in `state`) the next token's logits and hidden states."""

    def reorder(self, state: DecodeState, rows) -> None:
        """Row i of the state becomes a copy of row `rows[i]` (beam search's parents)."""
