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

import re
from pathlib import Path

from registry.artifacts import PRESET_ARTIFACT

GENERATION_PARAMS = {
    "max_new_tokens": ("long", 32),
    "sampler": ("string", "greedy"),  # greedy, beam, top_k, top_p, random or contrastive
    "temperature": ("double", 1.0),
    "top_k": ("long", 0),  # 0: the sampler's own default (top_k: 50; contrastive: 5 candidates)
    "top_p": ("double", 0.9),
    "num_beams": ("long", 4),
    "repetition_penalty": ("double", 1.0),
    "no_repeat_ngram_size": ("long", 0),
    "min_new_tokens": ("long", 0),
    "stop": ("string", ""),
    "seed": ("long", 0),  # served answers are reproducible: the same seed, the same text
    "runtime": ("string", "auto"),  # onnx for float32 and int8 variants (backends.decoding.decoder_for)
}

import warnings

import mlflow.pyfunc


class _GPT2PyFunc:
    """Generates text for a list of prompts (or a DataFrame with a `prompt` column).

    Bad input (an unknown sampler, a prompt too long for the model's context) is
    refused with MLflow's INVALID_PARAMETER_VALUE, which the scoring server
    answers with HTTP 400 and the one-line reason.

    Prompts are tokenized as `gpt2reg generate` tokenizes them: `<|endoftext|>`
    in a prompt is the end-of-text token, unless the server runs with
    GPT2REG_SPECIAL_TOKENS=text, so that callers cannot write a document boundary.
    """

    def load_context(self, context):
        from backends import keras_gpt2
        from backends.tokenizer import special_tokens_rule

        # Prompts follow the server's GPT2REG_SPECIAL_TOKENS, as the CLI does; a bad value stops
        # the model from loading rather than failing every request.
        special_tokens_rule()
        self.lm = keras_gpt2.load(context.artifacts[PRESET_ARTIFACT])

    def predict(self, context, model_input, params=None):
        from backends import generation
        from backends.tokenizer import encode_batch
        from registry.errors import UsageError

        prompts = _prompts(model_input)
        config = _generation_config(params or {})
        try:
            prompt_ids = encode_batch(prompts)
        except UsageError as error:  # the setting changed after loading, in the caller's own process
            _refuse(str(error))
        context_length = self.lm.backbone.max_sequence_length
        for number, ids in enumerate(prompt_ids, 1):
            if len(ids) + config.max_new_tokens > context_length:
                _refuse(f"prompt {number} has {len(ids)} tokens; with max_new_tokens {config.max_new_tokens} it "
                        f"exceeds the model's context of {context_length}: shorten it or lower max_new_tokens")
        return [result.text for result in generation.generate(self.lm, prompt_ids, config)]


with warnings.catch_warnings():
    # Prompts and params are checked in predict(); MLflow's advice to add type hints
    # (printed when the class is made) would only add noise.
    warnings.simplefilter("ignore", UserWarning)

    class GPT2PyFunc(_GPT2PyFunc, mlflow.pyfunc.PythonModel):
        __doc__ = _GPT2PyFunc.__doc__


def _refuse(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _generation_config(params: dict):
    """The same settings, checks and defaults as `gpt2reg generate` (backends.generation.GenerationConfig)."""
    from backends.generation import GenerationConfig

    settings = {key: default for key, (_, default) in GENERATION_PARAMS.items()}
    settings.update({key: value for key, value in params.items() if key in settings and value is not None})
    try:
        config = GenerationConfig(
            max_new_tokens=int(settings["max_new_tokens"]),
            sampler=str(settings["sampler"]),
            temperature=float(settings["temperature"]),
            top_k=int(settings["top_k"]) or None,
            top_p=float(settings["top_p"]),
            num_beams=int(settings["num_beams"]),
            repetition_penalty=float(settings["repetition_penalty"]),
            no_repeat_ngram_size=int(settings["no_repeat_ngram_size"]),
            min_new_tokens=int(settings["min_new_tokens"]),
            stop=(str(settings["stop"]),) if settings["stop"] else (),
            seed=int(settings["seed"]),
            runtime=str(settings["runtime"]),
        )
    except (TypeError, ValueError) as error:
        _refuse(f"a generation parameter has the wrong type ({error})")
    problems = config.problems()
    if problems:
        # The sentences name command-line flags (--max-new-tokens); here they are params (max_new_tokens).
        _refuse(re.sub(r"--([a-z-]+)", lambda flag: flag.group(1).replace("-", "_"), problems[0]))
    return config


def _prompts(model_input) -> list[str]:
    from registry.errors import UsageError
    from registry.prompts import check_text

    if isinstance(model_input, str):
        prompts = [model_input]
    elif hasattr(model_input, "columns"):  # a pandas DataFrame: its `prompt` column, else its only one
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        prompts = model_input[column].tolist()
    else:
        prompts = list(model_input)
    if not prompts:
        _refuse("no prompt given: send a list of prompts or a DataFrame with a `prompt` column")
    try:
        return [check_text(prompt, f"prompt {number}") for number, prompt in enumerate(prompts, 1)]
    except UsageError as error:
        _refuse(str(error))


def signature():
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        # Unnamed, so that a plain list of prompts passes MLflow's schema check; a DataFrame's
        # `prompt` column is picked by name in predict().
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),  # the generated continuation of each prompt
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
