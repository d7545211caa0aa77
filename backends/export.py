"""Export a KerasHub GPT-2 to the formats deployments use, and run each export back.

Formats (`backends.configs.EXPORT_FORMATS`):

- ``keras``: the KerasHub preset folder itself.
- ``hf``: a Hugging Face transformers folder. KerasHub's `export_to_transformers`
  writes the weights; we drop its untied copy of the output embedding (GPT-2
  ties it to the input embedding, so transformers rebuilds it), complete the
  config (`architectures`, `tie_word_embeddings`, `dtype`) and add
  `tokenizer.json` and `generation_config.json`, which it leaves out.
- ``savedmodel``: a TensorFlow SavedModel with two signatures, ``score``
  (token ids -> logits) and ``generate`` (greedy continuation with the
  key/value cache), callable with `tf.saved_model.load` alone.
- ``tflite``: the ``score`` signature converted by `TFLiteConverter`:
  float32, float16 weights, or dynamic-range int8 weights.
- ``onnx``: the same ``score`` graph written with `onnx.helper` (opset 17; see
  `backends.onnx_graph` for why not tf2onnx), optionally with int8 weights by
  onnxruntime's dynamic quantization.

`open_runtime` loads any export with its own runtime (Keras, TensorFlow,
LiteRT, onnxruntime) behind one `logits(token_ids)` call, so every export can
be checked against the model it came from.

Example:
    >>> from backends import export
    >>> export.export("preset", "onnx", "out/onnx")
    >>> export.open_runtime("out/onnx", "onnx").logits([[464, 2068]]).shape
    (1, 2, 50257)
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from backends import keras_gpt2
from backends.configs import END_OF_TEXT_ID, export_options_problem
from backends.decoding_speed import tokens_per_second
from backends.runtime_sessions import LiteRTSession, OnnxSession
from registry.errors import UsageError

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

FILE_NAMES = {"tflite": "model.tflite", "onnx": "model.onnx"}


def export(preset_dir, fmt: str, out_dir, quantize: str | None = None) -> Path:
    """Write `preset_dir` in format `fmt` into the new folder `out_dir`; returns it."""
    check_format(fmt, quantize)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=False)
    if fmt == "keras":
        shutil.copytree(preset_dir, out_dir, dirs_exist_ok=True)
        return out_dir
    lm = keras_gpt2.load(preset_dir)
    if fmt == "hf":
        _export_hf(lm, out_dir)
    elif fmt == "savedmodel":
        _export_savedmodel(lm, out_dir)
    elif fmt == "tflite":
        with tempfile.TemporaryDirectory(prefix="gpt2reg-savedmodel-") as scratch:
            _export_savedmodel(lm, Path(scratch) / "savedmodel", generation=False)
            (out_dir / FILE_NAMES["tflite"]).write_bytes(_tflite_bytes(Path(scratch) / "savedmodel", quantize))
    elif fmt == "onnx":
        _export_onnx(lm, out_dir / FILE_NAMES["onnx"], quantize)
    return out_dir


def check_format(fmt: str, quantize: str | None) -> None:
    problem = export_options_problem(fmt, quantize)
    if problem:
        raise UsageError(problem)


# ---------------------------------------------------------------- hf


def _export_hf(lm, out_dir: Path) -> None:
    from safetensors.numpy import load_file, save_file

    lm.export_to_transformers(str(out_dir))
    weights_file = out_dir / "model.safetensors"
    tensors = load_file(str(weights_file))
    # KerasHub writes the tied output embedding a second time; transformers ties it back on load.
    tensors.pop("lm_head.weight", None)
    save_file(tensors, str(weights_file), metadata={"format": "pt"})

    config_file = out_dir / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    dtype = next(iter(tensors.values())).dtype.name
    config.update(architectures=["GPT2LMHeadModel"], tie_word_embeddings=True, dtype=dtype,
                  add_cross_attention=False, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
    if config.get("n_inner") == 4 * config["n_embd"]:
        config["n_inner"] = None  # transformers' own way of saying "4 x n_embd"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": END_OF_TEXT_ID, "eos_token_id": END_OF_TEXT_ID}, indent=2), encoding="utf-8")

    merges_file = out_dir / "merges.txt"
    merges = merges_file.read_text(encoding="utf-8")
    if not merges.startswith("#version"):
        merges = "#version: 0.2\n" + merges  # the header every GPT-2 merges.txt carries
        merges_file.write_text(merges, encoding="utf-8")
    vocabulary = json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))
    (out_dir / "tokenizer.json").write_text(json.dumps(_tokenizer_json(vocabulary, merges)), encoding="utf-8")


def _tokenizer_json(vocabulary: dict[str, int], merges: str) -> dict:
    """The `tokenizers` library's GPT-2 tokenizer (byte-level BPE, no prefix space) as JSON."""
    pairs = [line.split(" ") for line in merges.splitlines() if line and not line.startswith("#version")]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": END_OF_TEXT_ID, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {}},
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocabulary, "merges": pairs},
    }


# ---------------------------------------------------------------- savedmodel


def _score_function(lm):
    backbone = lm.backbone
    embeddings = backbone.token_embedding.embeddings

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")])
    def score(token_ids):
        hidden = backbone({"token_ids": token_ids, "padding_mask": tf.ones_like(token_ids)})
        shape = tf.shape(hidden)
        # A 2-D product against the (vocabulary, width) table, transposed in the product:
        # converters then keep one copy of the tied embedding instead of adding a transposed one.
        flat = tf.reshape(hidden, [-1, shape[-1]])
        logits = tf.matmul(flat, tf.cast(embeddings, flat.dtype), transpose_b=True)
        return {"logits": tf.cast(tf.reshape(logits, [shape[0], shape[1], -1]), tf.float32)}

    return score


def _generate_function(lm):
    backbone = lm.backbone

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                                  tf.TensorSpec([], tf.int32, name="max_new_tokens")])
    def generate(token_ids, max_new_tokens):
        # Greedy decoding with KerasHub's key/value cache: the prompt is run once,
        # then one token per step. Returns the new tokens only.
        prompt_length = tf.shape(token_ids)[1]
        batch = tf.shape(token_ids)[0]
        padded = tf.pad(token_ids, [[0, 0], [0, max_new_tokens]])
        hidden, cache = lm._build_cache(padded)
        logits = backbone.token_embedding(hidden[:, prompt_length - 1, :], reverse=True)

        def step(index, padded, logits, cache):
            chosen = tf.cast(tf.argmax(logits, axis=-1), tf.int32)
            where = tf.stack([tf.range(batch), tf.fill([batch], index)], axis=1)
            padded = tf.tensor_scatter_nd_update(padded, where, chosen)
            logits, _, cache = lm.call_with_cache(padded[:, index : index + 1], cache, index)
            return index + 1, padded, logits[:, 0, :], cache

        _, padded, _, _ = tf.while_loop(
            lambda index, *_: index < prompt_length + max_new_tokens, step, (prompt_length, padded, logits, cache)
        )
        return {"token_ids": padded[:, prompt_length:]}

    return generate


def _export_savedmodel(lm, out_dir: Path, generation: bool = True) -> None:
    # A plain tf.Module rather than keras.export.ExportArchive: the archive lists every
    # variable twice (`variables` and `_all_variables`), and the checkpoint then holds
    # two copies of the weights (measured: 26 MB instead of 13 MB for `tiny`).
    module = tf.Module()
    module.model_variables = [variable.value for variable in lm.backbone.weights]
    signatures = {"score": _score_function(lm)}
    if generation:
        signatures["generate"] = _generate_function(lm)
    for name, function in signatures.items():
        setattr(module, name, function)
    tf.saved_model.save(module, str(out_dir), signatures={**signatures, "serving_default": signatures["score"]})


def _tflite_bytes(saved_model: Path, quantize: str | None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["score"])
    if quantize is not None:
        # Dynamic-range quantization: weights stored in int8 (or float16), activations stay float.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


# ---------------------------------------------------------------- onnx


def _export_onnx(lm, path: Path, quantize: str | None) -> None:
    import onnx
    from keras_hub.src.utils.transformers.export.gpt2 import get_gpt2_weights_map

    from backends import onnx_graph

    backbone = lm.backbone
    # KerasHub's own Keras -> Hugging Face weight mapping (the one `hf` exports use).
    tensors = {name: np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)
               for name, value in get_gpt2_weights_map(backbone).items()}
    model = onnx_graph.build(tensors, num_layers=backbone.num_layers, num_heads=backbone.num_heads)
    del tensors
    with tempfile.TemporaryDirectory(prefix="gpt2reg-onnx-") as scratch:
        float_path = Path(scratch) / "model.onnx" if quantize else path
        onnx.save(model, str(float_path))
        del model
        if quantize == "int8":
            import logging

            from onnxruntime.quantization import QuantType, quantize_dynamic

            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # its advice to pre-process is for convolutional models
            try:
                quantize_dynamic(str(float_path), str(path), weight_type=QuantType.QInt8)
            finally:
                root.setLevel(level)


# ---------------------------------------------------------------- running exports back


class Runtime:
    """An export loaded by its own runtime: `logits(token_ids)` for a (1, T) batch."""

    format: str

    def logits(self, token_ids) -> np.ndarray:
        raise NotImplementedError

    def greedy(self, token_ids: list[int], new_tokens: int) -> list[int]:
        """Greedy continuation by rerunning the whole sequence per token (these runtimes keep no cache)."""
        sequence = list(token_ids)
        for _ in range(new_tokens):
            sequence.append(int(np.argmax(self.logits([sequence])[0, -1])))
        return sequence[len(token_ids):]


class _KerasRuntime(Runtime):
    def __init__(self, folder, fmt):
        self.format = fmt
        self.lm = keras_gpt2.load(folder)

    def logits(self, token_ids):
        return keras_logits(self.lm, token_ids)

    def greedy(self, token_ids, new_tokens):
        from backends import generation

        return generation.generate(self.lm, [list(token_ids)], max_new_tokens=new_tokens,
                                   stop_at_end_of_text=False)[0].token_ids


def keras_logits(lm, token_ids) -> np.ndarray:
    """Logits of a `GPT2CausalLM` for a batch of equal-length sequences, as float32 numpy."""
    ids = np.asarray(token_ids, dtype="int32")
    logits = lm({"token_ids": ids, "padding_mask": np.ones_like(ids)}, training=False)
    return np.asarray(keras.ops.convert_to_numpy(logits), dtype=np.float32)


class _SavedModelRuntime(Runtime):
    format = "savedmodel"

    def __init__(self, folder):
        self.model = tf.saved_model.load(str(folder))

    def logits(self, token_ids):
        return self.model.signatures["score"](token_ids=tf.constant(np.asarray(token_ids, dtype="int32")))["logits"].numpy()

    def greedy(self, token_ids, new_tokens):
        result = self.model.signatures["generate"](token_ids=tf.constant([list(token_ids)], dtype=tf.int32),
                                                   max_new_tokens=tf.constant(new_tokens, dtype=tf.int32))
        return result["token_ids"].numpy()[0].tolist()


class _LiteRTRuntime(Runtime):
    format = "tflite"

    def __init__(self, folder):
        self.session = LiteRTSession(Path(folder) / FILE_NAMES["tflite"], "score")

    def logits(self, token_ids):
        return self.session.run({"token_ids": np.asarray(token_ids, dtype="int32")})["logits"]


class _OnnxRuntime(Runtime):
    format = "onnx"

    def __init__(self, folder):
        self.session = OnnxSession(Path(folder) / FILE_NAMES["onnx"])

    def logits(self, token_ids):
        return self.session.run({"token_ids": np.asarray(token_ids, dtype="int32")}, ["logits"])["logits"]


def open_runtime(folder, fmt: str) -> Runtime:
    check_format(fmt, None)
    if fmt in ("keras", "hf"):
        return _KerasRuntime(folder, fmt)
    return {"savedmodel": _SavedModelRuntime, "tflite": _LiteRTRuntime, "onnx": _OnnxRuntime}[fmt](folder)


def runtime_perplexity(runtime: Runtime, documents: list[list[int]], context: int) -> float:
    """Perplexity as `backends.scoring` defines it (same windows), one window at a time."""
    from backends.scoring import windows

    total, counted = 0.0, 0
    for ids in documents:
        for window, targets in windows(ids, context, context // 2):
            logits = runtime.logits([window])[0].astype(np.float64)
            log_probs = logits - logits.max(-1, keepdims=True)
            log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
            positions = np.arange(len(window) - 1 - targets, len(window) - 1)
            total -= float(log_probs[positions, np.asarray(window)[positions + 1]].sum())
            counted += targets
    return math.exp(total / counted) if counted else float("nan")


def greedy_tokens_per_second(runtime: Runtime, prompt: list[int], new_tokens: int) -> float:
    """Batch-1 greedy speed of an export, timed as a Keras model's is (`backends.decoding_speed`)."""
    return tokens_per_second(runtime.greedy, prompt, new_tokens)
