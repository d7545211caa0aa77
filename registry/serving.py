"""The MLflow pyfunc flavour of a variant, for `mlflow.pyfunc.load_model` and `mlflow models serve`.

The model is logged "from code" (this module's `GPT2PyFunc` is set by
`registry/pyfunc_entry.py`), so loading it unpickles nothing.

Example:
    >>> import mlflow
    >>> model = mlflow.pyfunc.load_model("models:/quickstart/2")
    >>> model.predict(["The meaning of"], params={"max_new_tokens": 8})
    ['...']
"""

from __future__ import annotations

from pathlib import Path

from registry.artifacts import PRESET_ARTIFACT

GENERATION_PARAMS = {
    "max_new_tokens": ("long", 32),
    "sampler": ("string", "greedy"),
    "temperature": ("double", 1.0),
    "top_k": ("long", 50),
    "top_p": ("double", 0.9),
    "num_beams": ("long", 4),
    "repetition_penalty": ("double", 1.0),
    "no_repeat_ngram_size": ("long", 0),
    "min_new_tokens": ("long", 0),
    "stop": ("string", ""),
    "seed": ("long", 0),
    "runtime": ("string", "auto"),  # onnx for float32 and int8 variants (backends.decoding.decoder_for)
}

import warnings

import mlflow.pyfunc


class _GPT2PyFunc:
    """Generates text for a list of prompts (or a DataFrame with a `prompt` column)."""

    def load_context(self, context):
        from backends import keras_gpt2

        self.lm = keras_gpt2.load(context.artifacts[PRESET_ARTIFACT])

    def predict(self, context, model_input, params=None):
        from backends import generation
        from backends.tokenizer import encode

        prompts = _prompts(model_input)
        settings = {key: default for key, (_, default) in GENERATION_PARAMS.items()}
        settings.update({k: v for k, v in (params or {}).items() if k in settings and v is not None})
        results = generation.generate(
            self.lm,
            [encode(p) for p in prompts],
            max_new_tokens=int(settings["max_new_tokens"]),
            sampler=str(settings["sampler"]),
            temperature=float(settings["temperature"]),
            top_k=int(settings["top_k"]),
            top_p=float(settings["top_p"]),
            num_beams=int(settings["num_beams"]),
            repetition_penalty=float(settings["repetition_penalty"]),
            no_repeat_ngram_size=int(settings["no_repeat_ngram_size"]),
            min_new_tokens=int(settings["min_new_tokens"]),
            stop=(str(settings["stop"]),) if settings["stop"] else (),
            seed=int(settings["seed"]),
            runtime=str(settings["runtime"]),
        )
        return [r.text for r in results]


with warnings.catch_warnings():
    # Prompts and params are checked in predict(); MLflow's advice to add type hints
    # (printed when the class is made) would only add noise.
    warnings.simplefilter("ignore", UserWarning)

    class GPT2PyFunc(_GPT2PyFunc, mlflow.pyfunc.PythonModel):
        __doc__ = _GPT2PyFunc.__doc__


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(p) for p in model_input[column].tolist()]
    return [str(p) for p in model_input]


def signature():
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),  # a list of prompts, or a one-column DataFrame
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(name, dtype, default) for name, (dtype, default) in GENERATION_PARAMS.items()]),
    )


def save_pyfunc(preset_dir: Path, destination: Path) -> None:
    """Write an MLflow pyfunc model folder that carries the preset as its artifact."""
    import mlflow.pyfunc

    from registry import __version__

    mlflow.pyfunc.save_model(
        path=str(destination),
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={PRESET_ARTIFACT: str(preset_dir)},
        signature=signature(),
        # Explicit requirements: inferring them would import the model in a subprocess.
        pip_requirements=[f"gpt2-registry=={__version__}"],
    )
