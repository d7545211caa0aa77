"""Decoding through runtimes with real int8 kernels: onnxruntime or LiteRT.

Keras's `int8` mode stores int8 weights but, on CPU, decodes slower than
float32 (SPEC section 9). `RuntimeDecoder` decodes a KerasHub GPT-2 through a
graph written for one runtime instead, with the same interface as
`backends.decoding.CompiledDecoder` (`backends.decoder.Decoder`, so every
sampler of `backends.generation` runs on it unchanged):

- the graph (`backends.onnx_graph.build_decoder`) takes T new tokens, their
  per-row positions and an attention bias, and the key/value cache of every
  layer; it returns the logits at each row's last token and the hidden
  states, and writes the new keys and values into the cache where it lies
  (LiteRT's graph returns them, and they are written in here);
- the cache lives here, as numpy arrays of a fixed number of slots (a
  multiple of CACHE_BUCKET), handed to the runtime without copying. The prompt fills
  slots 0..P-1 (P: the longest prompt rounded up to PROMPT_BUCKET) and the
  n-th new token slot P+n for every row; a row's unused slots are masked
  out by the attention bias, so a row decodes the same in any batch;
- a float32 variant runs in float32; an int8 variant runs with int8
  weights: onnxruntime's dynamic quantization (int8 weights per output
  channel, activations quantized per call), whose per-channel scales are
  those Keras's int8 mode already chose, so the weights are the variant's own.

Example:
    >>> decoder = RuntimeDecoder.build(lm, "onnx", cache_dir="runtimes")
    >>> state = decoder.start([[464, 2068, 7586]], max_new_tokens=8)
    >>> logits, hidden = decoder.step(state, tokens=[1180])
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backends.decode_buckets import CACHE_BUCKET, PROMPT_BUCKET, round_up
from backends.decoder import Decoder
from backends.runtime_sessions import LiteRTSession, OnnxSession, cpu_threads
from registry.errors import UsageError

BLOCKED = np.float32(-1e9)  # the attention bias of a slot a token may not see
GRAPH_BYTES_IN_ONE_FILE = 1_800_000_000  # below protobuf's 2 GB limit on one message


@dataclass
class ModelTensors:
    """A backbone's weights as a runtime graph needs them, in the Hugging Face GPT-2 layout.

    `tensors`: every weight as float32. `int8`: for an int8 variant, each int8
    matrix (Keras's own values) as `(values [inputs, outputs] int8, scale
    [outputs] float32)` with weight = values * scale, under its Hugging Face
    name (the output projection, from the tied embedding, as
    `transformer.lm_head.weight`); the float tensor beside it is the same
    weight dequantized. `low_rank`: the LoRA update of an int8 matrix, as
    `(A [inputs, r], B [r, outputs])` with update = x·A·B, kept apart as Keras
    computes it (the update of a float matrix is folded into its tensor, as
    `merge` would write it). `precision`: ``float32`` or ``int8``.
    """

    tensors: dict[str, np.ndarray]
    int8: dict[str, tuple[np.ndarray, np.ndarray]]
    low_rank: dict[str, tuple[np.ndarray, np.ndarray]]
    precision: str
    # Where float32 tensors lie, unchanged, in the variant's weight file (`weight_files` fills it):
    # a graph written from them reads them there instead of holding a second copy. Not in the digest.
    weights_file: Path | None = None
    spans: dict[str, list] = field(default_factory=dict)

    def digest(self, runtime: str) -> str:
        """A short digest of every weight the graph holds and what it is built for (the graph file's name)."""
        return _digest({**self.tensors,
                        **{f"{name}.int8": values for name, (values, _) in self.int8.items()},
                        **{f"{name}.lora_{part}": factor for name, factors in self.low_rank.items()
                           for part, factor in zip("ab", factors)}},
                       self.precision, runtime)


def model_tensors(backbone) -> ModelTensors:
    """The weights the backbone really computes with (LoRA updates included), for a runtime graph.

    Other quantization modes than int8 have no runtime kernel here.
    """
    from backends import lora

    width = backbone.hidden_dim
    modes = {getattr(layer, "quantization_mode", None) for layer in backbone._flatten_layers(include_self=False)}
    modes.discard(None)
    if modes - {"int8"}:
        raise UsageError(f"the onnx and litert runtimes decode float32 and int8 variants, not "
                         f"{', '.join(sorted(modes - {'int8'}))}; use --runtime keras")
    if backbone.dtype_policy.compute_dtype != "float32":
        raise UsageError(f"the onnx and litert runtimes decode float32 and int8 variants, not "
                         f"{backbone.dtype_policy.compute_dtype}; use --runtime keras")
    precision = "int8" if modes else "float32"
    tensors: dict[str, np.ndarray] = {}
    int8: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    low_rank: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def matrix(dense, inputs: int) -> tuple[np.ndarray, tuple | None]:
        """The kernel as [inputs, outputs] float32, and (int8 values, per-output scale) when int8."""
        if getattr(dense, "quantization_mode", None) != "int8":
            kernel = lora.folded_kernel(dense, np.asarray(dense.kernel, dtype=np.float32))
            return kernel.reshape(inputs, -1), None
        scale = dense.kernel_scale
        if hasattr(dense, "_adjust_scale_for_dequant"):  # EinsumDense: the scale's axes follow the equation
            scale = dense._adjust_scale_for_dequant(scale)
        values = np.asarray(dense._kernel, dtype=np.int8).reshape(inputs, -1)
        # Keras stores value = round(weight * scale), one scale per output.
        column_scale = (1.0 / np.asarray(scale, dtype=np.float32)).reshape(-1)
        if column_scale.size == 1:
            column_scale = np.full(values.shape[1], column_scale[0], np.float32)
        return values.astype(np.float32) * column_scale, (values, column_scale)

    def put(name: str, denses, inputs: int) -> None:
        parts = [matrix(dense, inputs) for dense in denses]
        tensors[f"{name}.weight"] = np.concatenate([weight for weight, _ in parts], axis=1)
        tensors[f"{name}.bias"] = np.concatenate([np.asarray(d.bias, dtype=np.float32).reshape(-1) for d in denses])
        if parts[0][1] is not None:
            int8[f"{name}.weight"] = (np.concatenate([q for _, (q, _) in parts], axis=1),
                                      np.concatenate([c for _, (_, c) in parts]))
            update = fused_low_rank([lora.factors(dense) for dense in denses], [w.shape[1] for w, _ in parts])
            if update is not None:
                low_rank[f"{name}.weight"] = update

    embedding = backbone.token_embedding
    if getattr(embedding, "quantization_mode", None) == "int8":
        values = np.asarray(embedding.embeddings, dtype=np.int8)  # [vocabulary, width], one scale per row
        row_scale = 1.0 / np.asarray(embedding.embeddings_scale, dtype=np.float32).reshape(-1)
        tensors["transformer.wte.weight"] = values.astype(np.float32) * row_scale[:, None]
        int8["transformer.lm_head.weight"] = (values.T, row_scale)
    else:
        tensors["transformer.wte.weight"] = np.asarray(embedding.embeddings, dtype=np.float32)
    tensors["transformer.wpe.weight"] = np.asarray(backbone.position_embedding.position_embeddings, dtype=np.float32)
    tensors["transformer.ln_f.weight"] = np.asarray(backbone.layer_norm.gamma, dtype=np.float32)
    tensors["transformer.ln_f.bias"] = np.asarray(backbone.layer_norm.beta, dtype=np.float32)
    for index, layer in enumerate(backbone.transformer_layers):
        prefix = f"transformer.h.{index}"
        attention = layer._self_attention_layer
        put(f"{prefix}.attn.c_attn", (attention._query_dense, attention._key_dense, attention._value_dense), width)
        put(f"{prefix}.attn.c_proj", (attention._output_dense,), width)
        for name, norm in (("ln_1", layer._self_attention_layer_norm), ("ln_2", layer._feedforward_layer_norm)):
            tensors[f"{prefix}.{name}.weight"] = np.asarray(norm.gamma, dtype=np.float32)
            tensors[f"{prefix}.{name}.bias"] = np.asarray(norm.beta, dtype=np.float32)
        put(f"{prefix}.mlp.c_fc", (layer._feedforward_intermediate_dense,), width)
        put(f"{prefix}.mlp.c_proj", (layer._feedforward_output_dense,), layer._feedforward_output_dense.kernel.shape[0])
    return ModelTensors(tensors, int8, low_rank, precision)


def fused_low_rank(factors: list, widths: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """One (A, B) for matrices side by side (query, key and value as one product): A's columns
    and B's rows are those of each adapted matrix in turn, B placed under that matrix's columns."""
    if all(pair is None for pair in factors):
        return None
    inputs = next(a.shape[0] for a, _ in filter(None, factors))
    rank = sum(a.shape[1] for a, _ in filter(None, factors))
    a_all = np.zeros((inputs, rank), np.float32)
    b_all = np.zeros((rank, sum(widths)), np.float32)
    row = column = 0
    for pair, width in zip(factors, widths):
        if pair is not None:
            a, b = pair
            a_all[:, row:row + a.shape[1]] = a
            b_all[row:row + a.shape[1], column:column + width] = b
            row += a.shape[1]
        column += width
    return a_all, b_all


# -- runtimes ------------------------------------------------------------------


class _OnnxSession(OnnxSession):
    """An onnxruntime session of the decoder graph, on every core this process may use."""

    suffix = ".onnx"
    cache_in_place = True  # the graph writes new keys and values into the cache ([B, heads, slots, head_dim] both)

    def __init__(self, path: Path):
        super().__init__(path, threads=cpu_threads())

    @staticmethod
    def write(weights: ModelTensors, num_layers: int, num_heads: int, path: Path, digest: str) -> None:
        import onnx

        from backends import onnx_graph

        linked = _linked_weights(weights, path.parent, digest)
        model = onnx_graph.build_decoder(weights.tensors, num_layers=num_layers, num_heads=num_heads,
                                         int8=weights.int8, low_rank=weights.low_rank,
                                         external=weights.spans if linked else None, external_file=linked)
        if sum(len(tensor.raw_data) for tensor in model.graph.initializer) < GRAPH_BYTES_IN_ONE_FILE:
            onnx.save(model, str(path))
            return
        # Past protobuf's 2 GB (`gpt2-large` in float32 with no weight file to read from): the
        # weights go to a file beside the graph, named by the digest, as the graph names it.
        beside = path.parent / f"decoder-{digest}.weights"
        beside.unlink(missing_ok=True)  # left by a write that did not finish: onnx will not overwrite it
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=beside.name, size_threshold=1024)


def _linked_weights(weights: ModelTensors, folder: Path, digest: str) -> str | None:
    """The name, in `folder`, of a hard link to the variant's weight file for the graph to read its
    tensors from (onnxruntime reads external data only from inside the graph's folder); None when
    there is nothing to read there or no link can be made (another file system): the graph then
    holds its weights. The name carries the tensors' places, so a graph always finds its own layout."""
    if not weights.spans or weights.weights_file is None:
        return None
    layout = hashlib.sha256(repr(sorted((name, [(s.offset, s.length) for s in spans])
                                        for name, spans in weights.spans.items())).encode()).hexdigest()[:12]
    name = f"weights-{digest}-{layout}.h5"
    link = folder / name
    if link.is_file():
        return name
    partial = folder / f".{name}.{os.getpid()}.partial"
    try:
        os.link(weights.weights_file, partial)
        os.replace(partial, link)
    except OSError:
        partial.unlink(missing_ok=True)
        return None
    return name


class _LiteRTSession(LiteRTSession):
    """A LiteRT (TFLite) interpreter of the same decoder, converted from a TensorFlow function.

    The weights go through the converter's dynamic-range quantization when
    the variant is int8 (int8 weights per output channel, chosen again by the
    converter from the dequantized values; activations quantized at run
    time by XNNPACK), and stay float32 otherwise.
    """

    suffix = ".tflite"
    cache_in_place = False  # the graph returns new keys ([B, heads, head_dim, T]) and values ([B, heads, T, head_dim])

    def __init__(self, path: Path):
        super().__init__(path, "decode", threads=cpu_threads())

    @staticmethod
    def write(weights: ModelTensors, num_layers: int, num_heads: int, path: Path, digest: str) -> None:
        import tensorflow as tf

        module = tf.Module()
        module.decode = _tf_decoder(weights.tensors, num_layers, num_heads, low_rank=weights.low_rank)
        with tempfile.TemporaryDirectory(prefix="gpt2reg-litert-") as scratch:
            tf.saved_model.save(module, scratch, signatures={"decode": module.decode})
            converter = tf.lite.TFLiteConverter.from_saved_model(scratch, signature_keys=["decode"])
            if weights.int8:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            path.write_bytes(converter.convert())


def _tf_decoder(tensors: dict[str, np.ndarray], num_layers: int, num_heads: int, epsilon: float = 1e-5,
                low_rank: dict[str, tuple[np.ndarray, np.ndarray]] | None = None):
    """`backends.onnx_graph.build_decoder`'s graph as a TensorFlow function (same inputs and outputs).

    `low_rank`: LoRA updates added to their matrix's product (see `ModelTensors`).
    """
    import math

    import tensorflow as tf

    constant = {name: tf.constant(value) for name, value in tensors.items()}
    table = constant["transformer.wte.weight"]
    output_projection = tf.constant(np.ascontiguousarray(tensors["transformer.wte.weight"].T))
    width = tensors["transformer.wte.weight"].shape[1]
    head_dim = width // num_heads

    def norm(x, prefix):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + epsilon) * constant[f"{prefix}.weight"] + constant[f"{prefix}.bias"]

    updates = {name: (tf.constant(a), tf.constant(b)) for name, (a, b) in (low_rank or {}).items()}

    def dense(x, prefix):
        y = tf.matmul(x, constant[f"{prefix}.weight"]) + constant[f"{prefix}.bias"]
        if f"{prefix}.weight" in updates:
            a, b = updates[f"{prefix}.weight"]
            y = y + tf.matmul(tf.matmul(x, a), b)
        return y

    signature = [tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                 tf.TensorSpec([None, None], tf.int32, name="positions"),
                 tf.TensorSpec([None, 1], tf.int64, name="last_index"),
                 tf.TensorSpec([None, 1, None, None], tf.float32, name="attention_bias")]
    for index in range(num_layers):
        signature += [tf.TensorSpec([None, num_heads, head_dim, None], tf.float32, name=f"past_key_{index}"),
                      tf.TensorSpec([None, num_heads, None, head_dim], tf.float32, name=f"past_value_{index}")]

    @tf.function(input_signature=signature)
    def decode(token_ids, positions, last_index, attention_bias, *cache):
        batch, new = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        x = tf.gather(table, token_ids) + tf.gather(constant["transformer.wpe.weight"], positions)
        outputs = {}
        for index in range(num_layers):
            prefix = f"transformer.h.{index}"
            past_key, past_value = cache[2 * index], cache[2 * index + 1]
            flat = tf.reshape(norm(x, f"{prefix}.ln_1"), [-1, width])
            qkv = tf.reshape(dense(flat, f"{prefix}.attn.c_attn"), [batch, new, 3, num_heads, head_dim])
            query = tf.transpose(qkv[:, :, 0], [0, 2, 1, 3]) * (1.0 / math.sqrt(head_dim))
            key = tf.transpose(qkv[:, :, 1], [0, 2, 3, 1])
            value = tf.transpose(qkv[:, :, 2], [0, 2, 1, 3])
            outputs[f"new_key_{index}"], outputs[f"new_value_{index}"] = key, value
            scores = tf.concat([tf.matmul(query, past_key), tf.matmul(query, key)], axis=-1) + attention_bias
            weights = tf.nn.softmax(scores, axis=-1)
            slots = tf.shape(past_key)[3]
            attended = tf.matmul(weights[..., :slots], past_value) + tf.matmul(weights[..., slots:], value)
            attended = tf.reshape(tf.transpose(attended, [0, 2, 1, 3]), [-1, width])
            x = x + tf.reshape(dense(attended, f"{prefix}.attn.c_proj"), [batch, new, width])
            h = dense(tf.reshape(norm(x, f"{prefix}.ln_2"), [-1, width]), f"{prefix}.mlp.c_fc")
            h = tf.nn.gelu(h, approximate=True)
            x = x + tf.reshape(dense(h, f"{prefix}.mlp.c_proj"), [batch, new, width])
        hidden = norm(x, "transformer.ln_f")
        last = tf.gather_nd(hidden, last_index, batch_dims=1)
        outputs["logits"] = tf.matmul(last, output_projection)
        outputs["hidden"] = hidden
        return outputs

    return decode


SESSIONS = {"onnx": _OnnxSession, "litert": _LiteRTSession}


# -- the decoder -----------------------------------------------------------------


@dataclass
class RuntimeState:
    """One batch being decoded: its cache, which slots each row may see, and its latest outputs."""

    keys: list[np.ndarray]  # per layer [B, heads, slots, head_dim] ([B, heads, head_dim, slots] for LiteRT)
    values: list[np.ndarray]  # per layer [B, heads, slots, head_dim]
    visible: np.ndarray  # [B, slots] bool
    positions: np.ndarray  # [B] the position the next token takes
    next_slot: int
    logits: np.ndarray = field(default=None)
    hidden: np.ndarray = field(default=None)
    prompt_hidden: np.ndarray = field(default=None)
    binding: object = field(default=None)  # the cache bound to an onnxruntime session, for a graph that writes it in place

    @property
    def batch_size(self) -> int:
        return len(self.positions)

    @property
    def cache_length(self) -> int:
        return self.visible.shape[1]


class RuntimeDecoder:
    """Prefill and single-token steps through a runtime session (a `backends.decoder.Decoder`; see the module docstring)."""

    def __init__(self, session, *, num_layers: int, num_heads: int, hidden_dim: int, max_positions: int,
                 runtime: str, precision: str, digest: str | None = None):
        self.session = session
        self.digest = digest  # of the weights in the graph (its file's name)
        self.num_layers, self.num_heads = num_layers, num_heads
        self.head_dim = hidden_dim // num_heads
        self.max_positions = max_positions
        self.runtime, self.precision = runtime, precision
        self.cache_in_place = session.cache_in_place
        self.lock = threading.RLock()

    @classmethod
    def build(cls, lm, runtime: str, cache_dir: str | os.PathLike | None = None) -> "RuntimeDecoder":
        """The decoder of `lm` for `runtime`; the graph file is kept in `cache_dir` by the weights' digest."""
        backbone = lm.backbone
        shape = {"num_layers": backbone.num_layers, "num_heads": backbone.num_heads,
                 "hidden_dim": backbone.hidden_dim, "max_sequence_length": backbone.max_sequence_length}
        return cls.from_tensors(model_tensors(backbone), shape, runtime, cache_dir)

    @classmethod
    def from_tensors(cls, weights: ModelTensors, shape: dict, runtime: str,
                     cache_dir: str | os.PathLike | None = None) -> "RuntimeDecoder":
        """The decoder of `weights`, for a model of `shape` (a backbone config)."""
        if runtime not in SESSIONS:
            raise UsageError(f"unknown runtime {runtime!r}; choose one of: {', '.join(SESSIONS)}")
        precision = weights.precision
        kind = SESSIONS[runtime]
        digest = weights.digest(runtime)
        folder = runtime_folder(cache_dir)
        path = folder / f"decoder-{digest}{kind.suffix}"
        session = cls._open_kept(path, kind)
        if session is None:
            folder.mkdir(parents=True, exist_ok=True)
            # Written under a temporary name and renamed: a crash leaves no half-written graph behind.
            partial = folder / f".{path.name}.{os.getpid()}.partial"
            try:
                kind.write(weights, shape["num_layers"], shape["num_heads"], partial, digest=digest)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
            session = kind(path)
        del weights
        return cls(session, num_layers=shape["num_layers"], num_heads=shape["num_heads"],
                   hidden_dim=shape["hidden_dim"], max_positions=shape["max_sequence_length"],
                   runtime=runtime, precision=precision, digest=digest)

    @classmethod
    def from_kept_graph(cls, digest: str, precision: str, shape: dict, runtime: str,
                        cache_dir: str | os.PathLike | None = None) -> "RuntimeDecoder | None":
        """The decoder of a graph already kept under `digest`, without reading any weights; None
        when there is none (or it cannot be opened)."""
        if runtime not in SESSIONS:
            raise UsageError(f"unknown runtime {runtime!r}; choose one of: {', '.join(SESSIONS)}")
        kind = SESSIONS[runtime]
        session = cls._open_kept(runtime_folder(cache_dir) / f"decoder-{digest}{kind.suffix}", kind)
        if session is None:
            return None
        return cls(session, num_layers=shape["num_layers"], num_heads=shape["num_heads"],
                   hidden_dim=shape["hidden_dim"], max_positions=shape["max_sequence_length"],
                   runtime=runtime, precision=precision, digest=digest)

    @staticmethod
    def _open_kept(path: Path, kind):
        if not path.is_file():
            return None
        try:
            return kind(path)
        except Exception:  # a damaged file (the name vouches for the weights, not the bytes): rebuilt
            path.unlink(missing_ok=True)
            return None

    def _run(self, tokens: np.ndarray, positions: np.ndarray, last_index: np.ndarray, visible: np.ndarray,
             state: RuntimeState) -> dict[str, np.ndarray]:
        """One call of the graph on T new tokens, which take the next T slots of every row.

        `visible`: [B, T, slots seen] bool, which slots each new token may attend to: the
        cache's slots before the new ones, then the new tokens themselves.
        """
        width = tokens.shape[1]
        inputs = {"token_ids": tokens, "positions": positions, "last_index": last_index}
        if self.cache_in_place:
            if state.binding is None:
                cache = {}
                for index in range(self.num_layers):
                    cache[f"past_key_{index}"], cache[f"past_value_{index}"] = state.keys[index], state.values[index]
                state.binding = self.session.bind_in_place(
                    cache, {name: name.replace("past_", "present_") for name in cache}, ["logits", "hidden"])
            # The bias covers the slots filled so far and the new ones (GroupQueryAttention's layout).
            total = state.next_slot + width
            inputs["attention_bias"] = np.where(visible, np.float32(0), BLOCKED)[:, None]
            inputs["slots_used"] = np.full(len(tokens), total - 1, np.int32)
            inputs["total_slots"] = np.array(total, np.int32)
            outputs = state.binding.run(inputs)
        else:
            for index in range(self.num_layers):
                inputs[f"past_key_{index}"] = state.keys[index]
                inputs[f"past_value_{index}"] = state.values[index]
            # The bias covers every slot of the cache, then the new tokens.
            seen = np.zeros((len(tokens), width, state.cache_length + width), bool)
            seen[:, :, :state.next_slot] = visible[:, :, :state.next_slot]
            seen[:, :, state.cache_length:] = visible[:, :, state.next_slot:]
            inputs["attention_bias"] = np.where(seen, np.float32(0), BLOCKED)[:, None]
            outputs = self.session.run(inputs)
            slots = slice(state.next_slot, state.next_slot + width)
            for index in range(self.num_layers):
                state.keys[index][..., slots] = outputs[f"new_key_{index}"]
                state.values[index][:, :, slots] = outputs[f"new_value_{index}"]
        state.next_slot += width
        return outputs

    def cache_length_for(self, prompt_length: int, max_new_tokens: int) -> int:
        return round_up(prompt_length + max_new_tokens, CACHE_BUCKET)

    def start(self, prompts: list[list[int]], max_new_tokens: int) -> RuntimeState:
        """Run the prompts (each non-empty) through the model; ready for the first new token."""
        lengths = np.array([len(p) for p in prompts], dtype="int64")
        longest = int(lengths.max())
        if longest + max_new_tokens > self.max_positions:
            raise ValueError(f"{longest} + {max_new_tokens} tokens exceed the model's {self.max_positions} positions")
        prompt_length = round_up(longest, PROMPT_BUCKET)
        slots = self.cache_length_for(prompt_length, max_new_tokens)
        batch = len(prompts)
        tokens = np.zeros((batch, prompt_length), dtype="int32")
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt)] = prompt
        positions = np.minimum(np.arange(prompt_length, dtype="int32"), self.max_positions - 1)
        positions = np.broadcast_to(positions, (batch, prompt_length)).copy()
        key_shape = (batch, self.num_heads, slots, self.head_dim)
        if not self.cache_in_place:
            key_shape = (batch, self.num_heads, self.head_dim, slots)
        state = RuntimeState(
            keys=[np.zeros(key_shape, np.float32) for _ in range(self.num_layers)],
            values=[np.zeros((batch, self.num_heads, slots, self.head_dim), np.float32) for _ in range(self.num_layers)],
            visible=np.zeros((batch, slots), bool), positions=lengths.astype("int32"), next_slot=0,
        )
        # Each prompt token sees the prompt tokens before it (itself included); none of the cache yet.
        causal = np.tril(np.ones((prompt_length, prompt_length), bool))
        allowed = causal[None] & (np.arange(prompt_length)[None, None, :] < lengths[:, None, None])
        outputs = self._run(tokens, positions, (lengths - 1)[:, None], allowed, state)
        state.visible[:, :prompt_length] = np.arange(prompt_length)[None, :] < lengths[:, None]
        state.logits = outputs["logits"]
        state.prompt_hidden = outputs["hidden"]
        state.hidden = outputs["hidden"][np.arange(batch), lengths - 1]
        return state

    def step(self, state: RuntimeState, tokens) -> tuple[np.ndarray, np.ndarray]:
        """Feed one token per row; the state's logits and hidden become the next token's."""
        if state.next_slot >= state.cache_length:
            raise ValueError("the cache is full")
        batch = state.batch_size
        tokens = np.asarray(tokens, dtype="int32").reshape(batch, 1)
        slot = state.next_slot
        visible = np.ones((batch, 1, slot + 1), bool)  # the slots filled so far, as far as the row uses them, and itself
        visible[:, 0, :slot] = state.visible[:, :slot]
        outputs = self._run(tokens, state.positions.reshape(batch, 1), np.zeros((batch, 1), "int64"), visible, state)
        state.visible[:, slot] = True
        state.positions = state.positions + 1
        state.logits, state.hidden = outputs["logits"], outputs["hidden"][:, 0]
        return state.logits, state.hidden

    def reorder(self, state: RuntimeState, rows) -> None:
        """Row i of the cache becomes a copy of row `rows[i]` (beam search's parents)."""
        rows = np.asarray(rows, dtype="int64")
        state.keys = [np.ascontiguousarray(keys[rows]) for keys in state.keys]
        state.values = [np.ascontiguousarray(values[rows]) for values in state.values]
        state.binding = None  # bound to the arrays just replaced
        state.visible = state.visible[rows]
        state.positions = state.positions[rows]
        state.logits, state.hidden = state.logits[rows], state.hidden[rows]
        if state.prompt_hidden is not None:
            state.prompt_hidden = state.prompt_hidden[rows]


def runtime_folder(cache_dir: str | os.PathLike | None) -> Path:
    """Where runtime graphs are kept: `cache_dir`, or a folder of this user's in the temporary directory."""
    return Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir(), f"gpt2reg-runtimes-{os.getuid()}")


def next_token_log_probs(decoder: Decoder, ids: list[int]) -> np.ndarray:
    """log p(ids[i] | ids[:i]) for i = 1..n-1, one decoding step per token (teacher forcing).

    Works with any decoder of `backends.decoding.decoder_for`; it scores a text
    through the cache exactly as generation uses it.
    """
    from backends.logits_processors import log_softmax

    with decoder.lock:
        state = decoder.start([list(ids[:1])], max_new_tokens=len(ids) - 1)
        scores = []
        for index in range(1, len(ids)):
            scores.append(log_softmax(state.logits[0].astype(np.float64))[ids[index]])
            if index + 1 < len(ids):
                decoder.step(state, [ids[index]])
        return np.asarray(scores)


def _digest(tensors: dict[str, np.ndarray], precision: str, runtime: str) -> str:
    """A short digest of the weights and what the graph is built for (the cache key of a graph file)."""
    from backends import onnx_graph

    digest = hashlib.sha256(f"{runtime}:{precision}:{GRAPH_VERSION}:{onnx_graph.DECODER_OPSET}".encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()[:16]


GRAPH_VERSION = 4  # raise when the graphs change, so kept files of an older layout are not reused
