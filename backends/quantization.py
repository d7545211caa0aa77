"""Keras-native quantization of a KerasHub GPT-2.

Weight-only modes go through `Model.quantize` on the backbone (KerasHub's
tokenizer layer cannot be quantized before first use): `int8`, `int4`,
`float8`, and the calibrated `gptq` and `awq`. `float16` and `bfloat16` are
dtype policies: the weights are stored in that type and computed in it.

Example:
    >>> from backends import keras_gpt2, quantization
    >>> lm = quantization.quantize("base-preset", "int8")
    >>> keras_gpt2.save(lm, "int8-preset")
"""

from __future__ import annotations

import numpy as np

from backends import keras_gpt2
from backends.configs import QUANTIZATION_CALIBRATED as CALIBRATED
from backends.configs import QUANTIZATION_DTYPES as DTYPE_MODES
from backends.configs import QUANTIZATION_MODES as MODES
from registry.errors import UsageError


def quantize(preset_dir, mode: str, calibration: list[list[int]] | None = None):
    """Load `preset_dir` and quantize it to `mode`; returns the quantized `GPT2CausalLM`."""
    if mode not in MODES:
        raise UsageError(f"unknown --mode {mode!r}; choose one of: {', '.join(MODES)}")
    if mode in DTYPE_MODES:
        return keras_gpt2.load(preset_dir, dtype=mode)
    import warnings

    # Keras warns once per layer type it leaves alone (LayerNormalization, Dropout, ...):
    # a dozen lines about layers that hold no weights to quantize.
    warnings.filterwarnings("ignore", message=r"Layer \w+ does not have a `quantize` method implemented")
    lm = keras_gpt2.load(preset_dir)
    if mode in CALIBRATED:
        if not calibration:
            raise UsageError(f"--mode {mode} needs --calibration PATH (text to calibrate on)")
        quantize_backbone(lm.backbone, mode, config=_calibration_config(lm, mode, calibration))
        for layer in lm.backbone._flatten_layers(include_self=False):
            if getattr(layer, "quantization_mode", None) in CALIBRATED:
                _save_every_variable(layer)
    else:
        quantize_backbone(lm.backbone, mode)
    return lm


def quantize_backbone(backbone, mode: str, config=None) -> None:
    """`backbone.quantize(mode)`, without two costs Keras adds around it.

    Keras runs a full `gc.collect()` for every variable a layer drops while it
    quantizes (`Layer.__delattr__`); with TensorFlow and MLflow loaded that is
    about 0.4 s a call, 5.5 s of the 16 s an int4 `quantize` of the 2-layer
    fixture took. Objects that exist before quantizing are frozen out of those
    collections (they are not garbage), so each one walks only what quantizing
    made. GPTQ and AWQ also draw a Keras progress bar on stdout: the command's
    output is ours, so it is captured.
    """
    import contextlib
    import gc
    import io

    gc.freeze()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            backbone.quantize(mode, config=config)
    finally:
        gc.unfreeze()


def _calibration_config(lm, mode: str, calibration: list[list[int]]):
    import keras

    samples = np.asarray(calibration, dtype="int32")
    config = keras.quantizers.GPTQConfig if mode == "gptq" else keras.quantizers.AWQConfig
    # The tokenizer is not used on token ids, but Keras requires one. The backbone alone is
    # quantized (KerasHub's tokenizer layer cannot be), so the layer structure that
    # `GPT2CausalLM` describes is passed in.
    return config(
        dataset=samples, tokenizer=lm.preprocessor.tokenizer, num_samples=len(samples),
        sequence_length=samples.shape[1], quantization_layer_structure=lm.get_quantization_layer_structure(mode),
    )


def _save_every_variable(layer) -> None:
    """Save all of a GPTQ/AWQ layer's variables, in the order its loader reads them.

    Keras 3.15 leaves `kernel_zero` out when saving a gptq or awq layer but
    expects it when loading ("expected 6 variables, but received 5"), so such
    a model could be saved and never loaded again. The layer becomes its class's
    version that saves them all (the same object and weights).
    """
    layer.__class__ = _saving_every_variable(type(layer))


_SAVING_CLASSES: dict[type, type] = {}


def _saving_every_variable(base: type) -> type:
    if base in _SAVING_CLASSES:
        return _SAVING_CLASSES[base]

    class SavesEveryVariable(base):
        def save_own_variables(self, store):
            index = 0
            for name in self.variable_serialization_spec[self.quantization_mode]:
                if name == "bias" and self.bias is None:
                    continue
                if name != "kernel" and not hasattr(self, name):
                    continue
                store[str(index)] = self._kernel if name == "kernel" else getattr(self, name)
                index += 1

    SavesEveryVariable.__name__ = SavesEveryVariable.__qualname__ = base.__name__  # saved configs name the class
    _SAVING_CLASSES[base] = SavesEveryVariable
    return SavesEveryVariable
