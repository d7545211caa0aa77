"""GPT-2 architectures as plain data (no TensorFlow import).

The keys are the arguments of `keras_hub.models.GPT2Backbone`. The official
shapes are those OpenAI released; `tiny` is ours, for tests and the quickstart.
"""

from __future__ import annotations

GPT2_VOCABULARY_SIZE = 50257
END_OF_TEXT_ID = 50256
BACKBONE_CONFIG_KEYS = (
    "vocabulary_size",
    "num_layers",
    "num_heads",
    "hidden_dim",
    "intermediate_dim",
    "dropout",
    "max_sequence_length",
)

# --precision names and the Keras dtype policies they select.
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}

# `quantize --mode` names: Keras weight quantization modes (the last two calibrated), then dtypes.
QUANTIZATION_WEIGHT_MODES = ("int8", "int4", "float8", "gptq", "awq")
QUANTIZATION_CALIBRATED = ("gptq", "awq")
QUANTIZATION_DTYPES = ("float16", "bfloat16")
QUANTIZATION_MODES = QUANTIZATION_WEIGHT_MODES + QUANTIZATION_DTYPES

# Where generation decodes (backends.decoding.decoder_for): auto picks onnx where it can.
GENERATION_RUNTIMES = ("auto", "keras", "onnx", "litert")
SAMPLERS = ("greedy", "beam", "top_k", "top_p", "random", "contrastive")  # decoding strategies of `generate`

# LoRA target sets, by the names of KerasHub's GPT-2 layers.
LORA_TARGETS = {
    "query,value": ("query", "value"),
    "attention": ("query", "key", "value", "attention_output"),
    "all": ("query", "key", "value", "attention_output", "feedforward_intermediate_dense", "feedforward_output_dense"),
}


def _shape(num_layers: int, hidden_dim: int, num_heads: int, max_sequence_length: int = 1024) -> dict:
    return {
        "vocabulary_size": GPT2_VOCABULARY_SIZE,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "hidden_dim": hidden_dim,
        "intermediate_dim": 4 * hidden_dim,
        "dropout": 0.1,
        "max_sequence_length": max_sequence_length,
    }


CONFIGS: dict[str, dict] = {
    # Same shape as the Hugging Face fixture: 2 layers, 64 wide, 128 positions.
    "tiny": _shape(num_layers=2, hidden_dim=64, num_heads=4, max_sequence_length=128),
    "gpt2": _shape(num_layers=12, hidden_dim=768, num_heads=12),
    "gpt2-medium": _shape(num_layers=24, hidden_dim=1024, num_heads=16),
    "gpt2-large": _shape(num_layers=36, hidden_dim=1280, num_heads=20),
    "gpt2-xl": _shape(num_layers=48, hidden_dim=1600, num_heads=25),
}


def parameter_count(config: dict) -> int:
    """Parameters of a GPT-2 with tied input and output embeddings.

    >>> parameter_count(CONFIGS["gpt2"])
    124439808
    """
    d = config["hidden_dim"]
    ff = config["intermediate_dim"]
    per_layer = (
        2 * 2 * d  # two layer norms
        + 4 * d * d + 4 * d  # query, key, value and output projections
        + 2 * d * ff + ff + d  # the feed-forward pair
    )
    embeddings = (config["vocabulary_size"] + config["max_sequence_length"]) * d
    return embeddings + config["num_layers"] * per_layer + 2 * d


def get_config(name: str) -> dict:
    from registry.errors import UsageError

    try:
        return dict(CONFIGS[name])
    except KeyError:
        raise UsageError(
            f"unknown configuration {name!r}; choose one of: {', '.join(CONFIGS)}"
        ) from None

# `gpt2reg export --format`: the formats, and the weight types `--quantize` may ask of each.
EXPORT_FORMATS = ("keras", "hf", "savedmodel", "tflite", "onnx")
EXPORT_QUANTIZATION = {"tflite": ("float16", "int8"), "onnx": ("int8",)}


def export_options_problem(fmt: str, quantize: str | None) -> str | None:
    """What is wrong with `--format fmt --quantize quantize`, or None."""
    if fmt not in EXPORT_FORMATS:
        return f"unknown --format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}"
    allowed = EXPORT_QUANTIZATION.get(fmt, ())
    if quantize is not None and quantize not in allowed:
        if not allowed:
            return f"--quantize does not apply to --format {fmt}; it applies to tflite and onnx"
        return f"--format {fmt} takes --quantize {' or '.join(allowed)}, not {quantize!r}"
    return None
