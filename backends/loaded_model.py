"""A loaded KerasHub GPT-2 and what this project keeps beside it.

The decoders and compiled scoring functions built from a model's weights, the
folder where onnxruntime and LiteRT graphs are kept, and the settings of a LoRA
adapter all belong to one model. They live here, not as attributes of the
Keras object: Keras tracks what is set on a layer (a dict set there is stored
as a tracked copy) and a model is the users' own object.

Every function in `backends` that needs them takes a `LoadedModel` or a bare
`GPT2CausalLM`. A bare model finds its state again, for as long as it lives,
through a table that holds the model weakly; the state holds no reference to
the model (a compiled function reaches it through a weak reference), so a
model that is no longer used is freed with everything kept for it.

Example:
    >>> from backends import keras_gpt2
    >>> model = LoadedModel(keras_gpt2.load("preset-folder"), runtime_cache="runtimes")
    >>> model.lm.generate("Hello", max_length=20)
    >>> LoadedModel.of(model.lm).runtime_cache       # the same state, found from the model
    'runtimes'
"""

from __future__ import annotations

import weakref
from typing import Any


class _State:
    """What is kept for one model; never a reference to the model itself."""

    def __init__(self):
        self.decoders: dict = {}  # by runtime name, or by the XLA flag for the Keras decoder
        self.compiled: dict[str, Any] = {}  # scoring functions by name
        self.runtime_cache: str | None = None
        self.adapter: dict | None = None  # the LoRA adapter's settings, as saved in adapter.json


_STATES: "weakref.WeakKeyDictionary[Any, _State]" = weakref.WeakKeyDictionary()


class LoadedModel:
    """A KerasHub `GPT2CausalLM` (`lm`) with its decoders, compiled functions, runtime folder and adapter."""

    __slots__ = ("lm", "_state")

    def __init__(self, lm, *, runtime_cache: str | None = None):
        self.lm = lm
        state = _STATES.get(lm)
        if state is None:
            state = _STATES[lm] = _State()
        self._state = state
        if runtime_cache is not None:
            self.runtime_cache = runtime_cache

    @classmethod
    def of(cls, model) -> "LoadedModel":
        """`model` itself if it is a `LoadedModel`, else the wrapper of the bare `GPT2CausalLM`."""
        return model if isinstance(model, cls) else cls(model)

    @property
    def decoders(self) -> dict:
        return self._state.decoders

    @property
    def compiled(self) -> dict[str, Any]:
        return self._state.compiled

    @property
    def runtime_cache(self) -> str | None:
        """Where onnxruntime and LiteRT decoders built from the weights are kept by digest (None: a temporary folder)."""
        return self._state.runtime_cache

    @runtime_cache.setter
    def runtime_cache(self, folder) -> None:
        self._state.runtime_cache = None if folder is None else str(folder)

    @property
    def adapter(self) -> dict | None:
        """The settings of the LoRA adapter enabled on the model, or None."""
        return self._state.adapter

    @adapter.setter
    def adapter(self, settings: dict | None) -> None:
        self._state.adapter = settings

    def forget_compiled(self) -> None:
        """Drop the compiled functions and decoders after the model's layers or weights changed
        (they would read the old ones: a decoder packs the weights it was built from)."""
        self._state.compiled.clear()
        self._state.decoders.clear()


def unwrap(model):
    """The `GPT2CausalLM` of a `LoadedModel`, or `model` itself."""
    return model.lm if isinstance(model, LoadedModel) else model
