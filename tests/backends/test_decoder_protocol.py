"""Both decoders offer exactly what `backends.decoder.Decoder` and `DecodeState` name.

`isinstance` with a runtime-checkable protocol only sees that a member exists;
the signatures are compared here too, so a renamed method or argument fails.
"""

from __future__ import annotations

import inspect

import pytest

from backends.decoder import DecodeState, Decoder

PROMPT = [464, 2068, 7586]


def _methods(protocol) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(value) for name, value in vars(protocol).items()
            if inspect.isfunction(value) and not name.startswith("_")}


def _properties(protocol) -> set[str]:
    return {name for name, value in vars(protocol).items() if isinstance(value, property)}


def _data(protocol) -> set[str]:
    return set(protocol.__annotations__)


def problems(protocol, cls, instance) -> list[str]:
    """Where `cls` (and a built `instance` of it) differs from `protocol`."""
    found = []
    for name, wanted in _methods(protocol).items():
        member = inspect.getattr_static(cls, name, None)
        if not inspect.isfunction(member):
            found.append(f"{cls.__name__}.{name} is not a method")
            continue
        have = list(inspect.signature(member).parameters.values())
        want = list(wanted.parameters.values())
        if [(p.name, p.kind) for p in have[:len(want)]] != [(p.name, p.kind) for p in want]:
            found.append(f"{cls.__name__}.{name}{inspect.signature(member)} does not take {name}{wanted}")
        elif any(p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                 for p in have[len(want):]):
            found.append(f"{cls.__name__}.{name}{inspect.signature(member)} requires more than {name}{wanted}")
    for name in _properties(protocol):
        if not isinstance(inspect.getattr_static(cls, name, None), property):
            found.append(f"{cls.__name__}.{name} is not a property")
    for name in _data(protocol):
        if not hasattr(instance, name):
            found.append(f"{cls.__name__} has no {name}")
    return found


@pytest.fixture(scope="module")
def decoders(lm, tmp_path_factory):
    from backends.decoding import CompiledDecoder
    from backends.fast_decoding import RuntimeDecoder

    return [CompiledDecoder(lm, jit_compile=False), RuntimeDecoder.build(lm, "onnx", tmp_path_factory.mktemp("graphs"))]


def test_the_protocols_name_what_generation_uses():
    assert set(_methods(Decoder)) == {"start", "step", "reorder", "cache_length_for"}
    assert _data(Decoder) == {"lock", "max_positions", "runtime"}
    assert _data(DecodeState) == {"logits", "hidden", "prompt_hidden", "positions"}
    assert _properties(DecodeState) == {"batch_size", "cache_length"}


def test_both_decoders_and_their_states_implement_the_protocols(decoders):
    for decoder in decoders:
        assert isinstance(decoder, Decoder)
        assert problems(Decoder, type(decoder), decoder) == []
        with decoder.lock:
            state = decoder.start([PROMPT], max_new_tokens=2)
            assert isinstance(state, DecodeState)
            assert problems(DecodeState, type(state), state) == []
            logits, hidden = decoder.step(state, [int(state.logits[0].argmax())])
            assert logits.shape[0] == hidden.shape[0] == state.batch_size == 1
            assert state.cache_length >= decoder.cache_length_for(len(PROMPT), 2) >= len(PROMPT) + 2


def test_a_renamed_method_or_argument_is_reported(decoders):
    decoder = decoders[0]

    class Renamed(type(decoder)):
        reorder = None

        def reorder_rows(self, state, rows):
            pass

        def step(self, state, token_ids):
            pass

    found = problems(Decoder, Renamed, decoder)
    assert any("Renamed.reorder is not a method" in problem for problem in found)
    assert any("Renamed.step" in problem for problem in found)
