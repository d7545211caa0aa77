"""Build, save, load and import KerasHub GPT-2 models.

A model on disk is always a KerasHub preset folder (`config.json`,
`model.weights.h5`, `tokenizer.json`, `assets/`, `metadata.json`), so
`keras_hub.models.GPT2CausalLM.from_preset(folder)` loads any variant.

Example:
    >>> from backends import keras_gpt2
    >>> lm = keras_gpt2.build(keras_gpt2.get_config("tiny"), seed=0)
    >>> keras_gpt2.save(lm, "/tmp/tiny-preset")
    >>> keras_gpt2.load("/tmp/tiny-preset").backbone.num_layers
    2
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from backends import checkpoint_shapes, model_files
from backends.configs import BACKBONE_CONFIG_KEYS, GPT2_VOCABULARY_SIZE, get_config  # noqa: F401  (re-export)
from registry.errors import NotFoundError, UsageError

import keras  # noqa: E402
import keras_hub  # noqa: E402



def build(config: dict, seed: int = 0, dtype: str | None = None) -> "keras_hub.models.GPT2CausalLM":
    """A freshly initialised GPT-2 with the real BPE tokenizer (`dtype`: a Keras dtype policy)."""
    from backends.tokenizer import keras_tokenizer

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(**{k: config[k] for k in BACKBONE_CONFIG_KEYS}, dtype=dtype)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=keras_tokenizer(), sequence_length=config["max_sequence_length"]
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


def load(preset_dir: str | os.PathLike, dtype: str | None = None) -> "keras_hub.models.GPT2CausalLM":
    """Load a preset folder into a `GPT2CausalLM` ready to generate (`dtype`: a Keras dtype policy)."""
    preset_dir = str(preset_dir)
    if not Path(preset_dir, "config.json").is_file():
        raise NotFoundError(f"{preset_dir} is not a model folder (no config.json)")
    # A registered variant's files can be edited after registration: check them on every load.
    model_files.check_model_folder(preset_dir)
    overrides = {"dtype": dtype} if dtype else {}
    config = json.loads(Path(preset_dir, "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") == "gpt2":  # a Hugging Face folder (an `hf` export)
        overrides.update(_hf_overrides(Path(preset_dir), config))
    elif _is_plain_causal_lm_preset(Path(preset_dir)):
        return _load_with_shared_tokenizer(Path(preset_dir), overrides)
    lm = keras_hub.models.GPT2CausalLM.from_preset(preset_dir, **overrides)
    _fit_preprocessor_to_context(lm)
    return lm


def save(lm, preset_dir: str | os.PathLike) -> None:
    """Save `lm` as a preset; a model trained under a mixed policy is saved as float32."""
    lm.save_to_preset(str(preset_dir))
    if lm.backbone.dtype_policy.name.startswith("mixed_"):
        # The variables are float32 under a mixed policy: only the recorded policy changes.
        config_file = Path(preset_dir, "config.json")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["config"]["dtype"] = keras.dtype_policies.serialize(keras.DTypePolicy("float32"))
        config_file.write_text(json.dumps(config, indent=4), encoding="utf-8")


def backbone_config(lm) -> dict:
    config = lm.backbone.get_config()
    return {key: config[key] for key in BACKBONE_CONFIG_KEYS}


def parameter_count(lm) -> int:
    return int(lm.backbone.count_params())


def _is_plain_causal_lm_preset(preset_dir: Path) -> bool:
    """A float preset as `save` writes it: a GPT2CausalLM with KerasHub's default preprocessor
    settings, no task weights, and the standard tokenizer."""
    from backends.tokenizer import is_standard_tokenizer

    try:
        task = json.loads((preset_dir / "task.json").read_text(encoding="utf-8"))
        preprocessor = json.loads((preset_dir / "preprocessor.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    settings = preprocessor.get("config", {})
    backbone_dtype = task.get("config", {}).get("backbone", {}).get("config", {}).get("dtype")
    return (
        task.get("class_name") == "GPT2CausalLM"
        # Quantized presets (a DTypePolicyMap) load only through from_preset's own path.
        and isinstance(backbone_dtype, dict) and backbone_dtype.get("class_name") == "DTypePolicy"
        and preprocessor.get("class_name") == "GPT2CausalLMPreprocessor"
        and settings.get("add_start_token") is True and settings.get("add_end_token") is True
        and not (preset_dir / "task.weights.h5").exists()
        and is_standard_tokenizer(preset_dir)
    )


def _load_with_shared_tokenizer(preset_dir: Path, overrides: dict) -> "keras_hub.models.GPT2CausalLM":
    """What `GPT2CausalLM.from_preset` builds, but over the process's one tokenizer: from_preset
    rebuilds the tokenizer's lookup tables from its files on every load (about a second)."""
    from backends.tokenizer import keras_tokenizer

    backbone = keras_hub.models.GPT2Backbone.from_preset(str(preset_dir), **overrides)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=keras_tokenizer(), sequence_length=backbone.max_sequence_length
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


def _fit_preprocessor_to_context(lm) -> None:
    # KerasHub's GPT-2 preprocessor defaults to 1024 positions; a model with a
    # shorter context would fail on `generate()` unless the two agree.
    if lm.preprocessor is not None:
        lm.preprocessor.sequence_length = lm.backbone.max_sequence_length


# ---------------------------------------------------------------- import


def import_model(source: str, dest_dir: str | os.PathLike) -> dict:
    """Copy a model from `source` into a preset at `dest_dir`.

    `source` is a KerasHub preset folder, a Hugging Face checkpoint folder, a
    KerasHub preset name or an `hf://org/repo` handle (the last two need the
    network). Returns a description of what was imported.
    """
    path = Path(source).expanduser()
    if path.exists():
        model_files.check_import_source(path)
        kind, overrides = _check_local_checkpoint(path)
        try:
            lm = keras_hub.models.GPT2CausalLM.from_preset(str(path.resolve()), **overrides)
        except Exception as error:  # safetensors, h5py and Keras each raise their own types
            first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise UsageError(f"cannot load the checkpoint in {path}: {first_line}; the files are damaged or incomplete") from None
    elif model_files.looks_like_path(source):
        raise NotFoundError(f"{source} does not exist; give a checkpoint folder, a KerasHub preset name or hf://org/repo")
    else:
        return _import_from_hub(source, dest_dir)
    _fit_preprocessor_to_context(lm)
    if lm.backbone.vocabulary_size != GPT2_VOCABULARY_SIZE:
        raise UsageError(
            f"{source} has a vocabulary of {lm.backbone.vocabulary_size} tokens; "
            f"gpt2-registry handles GPT-2 checkpoints with the {GPT2_VOCABULARY_SIZE}-token BPE"
        )
    save(lm, dest_dir)
    return {"source": str(source), "source_format": kind}


def _import_from_hub(source: str, dest_dir: str | os.PathLike) -> dict:
    """Download the checkpoint into a temporary folder, then import that folder as any local one:
    the same file checks, the same loader, nothing read from the hub straight into Keras."""
    from backends import hub_sources

    kind = "hf-hub" if source.startswith(hub_sources.HF_SCHEME) else "keras-hub-preset"
    kaggle_handle = None if kind == "hf-hub" else _kaggle_handle(source)
    with hub_sources.downloaded(source, kaggle_handle) as (folder, provenance):
        try:
            description = import_model(str(folder), dest_dir)
        except UsageError as error:
            # The message names the temporary folder, which is gone once this returns: name the source.
            raise type(error)(str(error).replace(str(folder), source)) from None
    return {**description, "source": source, "source_format": kind, "source_layout": description["source_format"],
            **provenance}


def _kaggle_handle(preset_name: str) -> str:
    """The Kaggle handle of one of KerasHub's built-in GPT-2 presets."""
    presets = keras_hub.models.GPT2Backbone.presets
    if preset_name not in presets:
        raise NotFoundError(
            f"{preset_name!r} is not one of KerasHub's GPT-2 presets ({', '.join(sorted(presets))}); "
            "give one of those, hf://org/repo or a checkpoint folder"
        )
    return presets[preset_name]["kaggle_handle"]


# Hugging Face GPT-2 settings that KerasHub's GPT-2 computes with fixed values.
_HF_FIXED_SETTINGS = {
    "layer_norm_epsilon": (1e-5,),
    "activation_function": ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"),  # KerasHub: tanh-approximated GELU
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "add_cross_attention": (False,),
}


def _hf_overrides(path: Path, config: dict) -> dict:
    """Backbone arguments KerasHub's converter leaves out; refuse settings it cannot compute."""
    for key, accepted in _HF_FIXED_SETTINGS.items():
        if key in config and config[key] not in accepted:
            raise UsageError(
                f"{path} sets {key}={config[key]!r}; KerasHub's GPT-2 supports only {', '.join(map(repr, accepted))}"
            )
    overrides = {}
    if config.get("n_inner") is not None:
        overrides["intermediate_dim"] = int(config["n_inner"])
    return overrides


def _check_local_checkpoint(path: Path) -> tuple[str, dict]:
    if not path.is_dir():
        raise UsageError(f"{path} is a file; give the checkpoint folder that holds config.json")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{path} is not a checkpoint folder (no config.json); give a KerasHub preset or Hugging Face GPT-2 folder")
    config = checkpoint_shapes.read_json_file(config_file)
    if not isinstance(config, dict):
        raise UsageError(f"{config_file} is not a JSON object; the checkpoint is damaged")
    if "registered_name" in config:
        if "GPT2" not in str(config.get("registered_name")):
            raise UsageError(f"{path} holds a {config['registered_name']} preset, not GPT-2")
        if not (path / "model.weights.h5").is_file():
            raise UsageError(f"{path} has no model.weights.h5; the preset is incomplete")
        checkpoint_shapes.check_keras_preset(path, config.get("config") if isinstance(config.get("config"), dict) else {})
        return "keras-preset", {}
    if config.get("model_type") == "gpt2":
        missing = [name for name in ("model.safetensors", "vocab.json", "merges.txt") if not (path / name).is_file()]
        if missing:
            hint = " (pickled pytorch_model.bin is refused: convert it to safetensors)" if (path / "pytorch_model.bin").exists() else ""
            raise UsageError(f"{path} lacks {', '.join(missing)}{hint}; a Hugging Face GPT-2 folder needs config.json, model.safetensors, vocab.json and merges.txt")
        # Before Keras builds anything: a config claiming more than the weights hold would allocate it all.
        checkpoint_shapes.check_hf_checkpoint(path, config)
        return "hf-checkpoint", _hf_overrides(path, config)
    raise UsageError(
        f"{path} is not a GPT-2 checkpoint (config.json names model_type {config.get('model_type')!r})"
    )
