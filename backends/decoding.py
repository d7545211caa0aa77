"""GPT-2 forward passes for token-by-token decoding, compiled once per shape bucket.

`GPT2CausalLM.call_with_cache` can decode, but only with one shared position
for the whole batch, and it reads the weights through Keras's einsum layers.
`CompiledDecoder` computes the same network with:

- per-row positions, so prompts of different lengths in one batch each start
  decoding right after their own last token (no prompt token is replayed, and
  a row's result does not depend on the rows beside it);
- the weights packed once as 2-D matrices (query, key and value fused into
  one, the output embedding stored transposed): measured on the `gpt2` 124M
  configuration at batch 1, reading the Keras variables inside the compiled
  step ran at 14 tok/s, the packed matrices at 24 tok/s;
- compiled prefill and step functions (XLA for models of 100M parameters or
  more), traced once per (batch size, prompt bucket, cache bucket) and reused
  by every later call in that bucket.

Layers that Keras has quantized (int8, int4, float8, GPTQ, AWQ) are not packed:
the step calls the layer itself, so a quantized variant decodes with Keras's
own quantized arithmetic. The packed copy costs the float weights' memory
once more while the decoder is alive.

Example:
    >>> decoder = CompiledDecoder(lm)
    >>> with decoder.lock:
    ...     state = decoder.start([[464, 2068, 7586]], max_new_tokens=8)
    ...     logits, hidden = state.logits, state.hidden      # for the first new token
    ...     logits, hidden = decoder.step(state, tokens=[1180])
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from backends import lora
from backends.configs import GENERATION_RUNTIMES as RUNTIMES
from backends.decode_buckets import CACHE_BUCKET, PROMPT_BUCKET, round_up
from backends.decoder import Decoder
from backends.loaded_model import LoadedModel, unwrap

import tensorflow as tf  # noqa: E402

class _Bucket:
    """The cache of one (batch size, cache length) and the compiled functions that use it.

    The functions close over the cache variables instead of taking them as
    arguments: matching two dozen variable arguments on every call cost about
    3 ms per token, more than all of the token choice. A bucket is reused by
    every later call of its shape (positions a call has not written are never
    attended to, so nothing needs clearing); the decoder's lock keeps two
    generations from sharing one at the same time.
    """

    def __init__(self, decoder: "CompiledDecoder", batch_size: int, cache_length: int, jit_compile: bool):
        shape = [batch_size, cache_length, decoder.num_heads, decoder.head_dim]
        make = lambda: tf.Variable(tf.zeros(shape, decoder.compute_dtype), trainable=False)  # noqa: E731
        self.keys = [make() for _ in decoder._layers]
        self.values = [make() for _ in decoder._layers]
        self.prefill = tf.function(lambda tokens, lengths: decoder._prefill(tokens, lengths, self.keys, self.values),
                                   jit_compile=jit_compile)
        self.step = tf.function(lambda tokens, positions: decoder._step(tokens, positions, self.keys, self.values),
                                jit_compile=jit_compile)
        self.reorder = tf.function(lambda rows: decoder._reorder(rows, self.keys, self.values), jit_compile=jit_compile)


@dataclass
class CompiledState:
    """The positions and latest outputs of one batch being decoded, and its cache."""

    bucket: _Bucket
    positions: np.ndarray  # [batch] the position the next token is written at
    logits: np.ndarray  # [batch, vocabulary] for the next token
    hidden: np.ndarray  # [batch, hidden] final hidden state of the last token
    prompt_hidden: np.ndarray = field(default=None)  # [batch, prompt_bucket, hidden]

    @property
    def batch_size(self) -> int:
        return len(self.positions)

    @property
    def cache_length(self) -> int:
        return int(self.bucket.keys[0].shape[1])


class CompiledDecoder:
    """Prefill and single-token steps over a KerasHub `GPT2CausalLM`'s weights (a `backends.decoder.Decoder`)."""

    runtime = "keras"

    def __init__(self, lm, *, jit_compile: bool = True):
        backbone = unwrap(lm).backbone
        self.num_heads = backbone.num_heads
        self.hidden_dim = backbone.hidden_dim
        self.head_dim = self.hidden_dim // self.num_heads
        self.max_positions = backbone.max_sequence_length
        self.vocabulary_size = backbone.vocabulary_size
        self.compute_dtype = tf.as_dtype(backbone.dtype_policy.compute_dtype)
        self.traces = 0  # how many times a function was traced (and so compiled)

        embedding = backbone.token_embedding
        self._embedding_layer = None
        if _is_quantized(embedding):
            self._embedding_layer = embedding
        else:
            table = np.asarray(embedding.embeddings.numpy())
            self._token_table = tf.Variable(table, trainable=False)
            self._output_projection = tf.Variable(np.ascontiguousarray(table.T), trainable=False)
        self._position_table = tf.Variable(np.asarray(backbone.position_embedding.position_embeddings.numpy()),
                                           trainable=False)
        self._final_norm = _pack_norm(backbone.layer_norm)
        self._layers = [self._pack_block(layer) for layer in backbone.transformer_layers]

        self._jit_compile = jit_compile
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        # One generation at a time per decoder: the buckets' caches are shared.
        self.lock = threading.RLock()

    # -- packing ----------------------------------------------------------

    def _pack_block(self, layer) -> dict:
        attention = layer._self_attention_layer
        projections = (attention._query_dense, attention._key_dense, attention._value_dense)
        block = {
            "attention_norm": _pack_norm(layer._self_attention_layer_norm),
            "feedforward_norm": _pack_norm(layer._feedforward_layer_norm),
            # A LoRA-adapted layer's own activation is linear: it applies GELU after its update.
            "activation": lora.activation(layer._feedforward_intermediate_dense),
        }
        if any(_is_quantized(dense) for dense in projections):
            block["qkv"] = projections  # called as layers
        else:
            kernels = [_dense_matrix(dense, self.hidden_dim) for dense in projections]
            block["qkv"] = (tf.Variable(np.concatenate([k for k, _ in kernels], axis=1), trainable=False),
                            tf.Variable(np.concatenate([b for _, b in kernels]), trainable=False))
        block["out"] = _pack_dense(attention._output_dense, self.hidden_dim)
        block["up"] = _pack_dense(layer._feedforward_intermediate_dense, self.hidden_dim)
        block["down"] = _pack_dense(layer._feedforward_output_dense, layer._feedforward_output_dense.kernel.shape[0])
        return block

    # -- compiled functions -------------------------------------------------

    def _embed(self, tokens, positions):
        if self._embedding_layer is not None:
            x = self._embedding_layer(tokens)
        else:
            x = tf.gather(self._token_table, tokens)
        return tf.cast(x + tf.gather(self._position_table, positions), self.compute_dtype)

    def _logits(self, x):
        if self._embedding_layer is not None:
            return tf.cast(self._embedding_layer(x, reverse=True), tf.float32)
        return tf.cast(tf.matmul(x, tf.cast(self._output_projection, x.dtype)), tf.float32)

    def _qkv(self, block, x):
        """x [..., hidden] -> query, key, value, each [..., heads, head_dim]."""
        packed = block["qkv"]
        if isinstance(packed[0], tf.Variable):
            fused = _matmul(x, packed[0]) + tf.cast(packed[1], x.dtype)
            parts = tf.split(fused, 3, axis=-1)
        else:
            parts = [_call_dense(dense, x) for dense in packed]
        shape = tf.concat([tf.shape(x)[:-1], [self.num_heads, self.head_dim]], axis=0)
        return [tf.reshape(part, shape) for part in parts]

    def _block_tail(self, block, x, attended):
        x = x + _apply_dense(block["out"], attended, heads=self.num_heads)
        h = _norm(block["feedforward_norm"], x)
        up = _apply_dense(block["up"], h)
        if isinstance(block["up"], tuple):  # a Keras layer applies its activation itself
            up = block["activation"](up)
        return x + _apply_dense(block["down"], up)

    def _prefill(self, tokens, lengths, keys, values):
        """tokens [B, P] (right-padded), lengths [B]: fill the cache at positions < P;
        return the logits and hidden state at each row's last prompt token, and every hidden state."""
        self.traces += 1
        batch, prompt_length = tokens.shape
        positions = tf.range(prompt_length)
        x = self._embed(tokens, positions[None, :])
        key_positions = tf.range(prompt_length)
        allowed = (key_positions[None, None, :] <= positions[None, :, None]) & (
            key_positions[None, None, :] < lengths[:, None, None])  # [B, P, P]
        scale = 1.0 / math.sqrt(self.head_dim)
        for block, key_cache, value_cache in zip(self._layers, keys, values):
            h = _norm(block["attention_norm"], x)
            query, key, value = self._qkv(block, h)  # [B, P, H, D]
            key_cache[:, :prompt_length].assign(tf.cast(key, key_cache.dtype))
            value_cache[:, :prompt_length].assign(tf.cast(value, value_cache.dtype))
            scores = tf.einsum("bqhd,bkhd->bhqk", query * tf.cast(scale, query.dtype), key)
            scores = tf.where(allowed[:, None], tf.cast(scores, tf.float32), -1e30)
            weights = tf.cast(tf.nn.softmax(scores, axis=-1), value.dtype)
            attended = tf.einsum("bhqk,bkhd->bqhd", weights, value)
            attended = tf.reshape(attended, [batch, prompt_length, self.hidden_dim])
            x = self._block_tail(block, x, attended)
        hidden = _norm(self._final_norm, x)
        last = tf.gather(hidden, lengths - 1, batch_dims=1)  # [B, hidden]
        return self._logits(last), tf.cast(last, tf.float32), tf.cast(hidden, tf.float32)

    def _step(self, tokens, positions, keys, values):
        """tokens [B] at positions [B]: write their keys and values, return next logits and hidden."""
        self.traces += 1
        cache_length = keys[0].shape[1]
        x = self._embed(tokens, positions)  # [B, hidden]
        rows = tf.range(tf.shape(tokens)[0])
        where = tf.stack([rows, positions], axis=1)
        visible = tf.range(cache_length)[None, :] <= positions[:, None]  # [B, S]
        scale = 1.0 / math.sqrt(self.head_dim)
        for block, key_cache, value_cache in zip(self._layers, keys, values):
            h = _norm(block["attention_norm"], x)
            query, key, value = self._qkv(block, h)  # [B, H, D]
            key_cache.scatter_nd_update(where, tf.cast(key, key_cache.dtype))
            value_cache.scatter_nd_update(where, tf.cast(value, value_cache.dtype))
            scores = tf.einsum("bhd,bshd->bhs", query * tf.cast(scale, query.dtype), key_cache.read_value())
            scores = tf.where(visible[:, None], tf.cast(scores, tf.float32), -1e30)
            weights = tf.cast(tf.nn.softmax(scores, axis=-1), value.dtype)
            attended = tf.einsum("bhs,bshd->bhd", weights, value_cache.read_value())
            x = self._block_tail(block, x, tf.reshape(attended, [-1, self.hidden_dim]))
        hidden = _norm(self._final_norm, x)
        return self._logits(hidden), tf.cast(hidden, tf.float32)

    def _reorder(self, rows, keys, values):
        self.traces += 1
        for cache in (*keys, *values):
            cache.assign(tf.gather(cache, rows))
        return rows

    # -- public -------------------------------------------------------------

    def bucket(self, batch_size: int, cache_length: int) -> _Bucket:
        key = (batch_size, cache_length)
        if key not in self._buckets:
            self._buckets[key] = _Bucket(self, batch_size, cache_length, self._jit_compile)
        return self._buckets[key]

    def cache_length_for(self, prompt_length: int, max_new_tokens: int) -> int:
        return round_up(prompt_length + max_new_tokens, CACHE_BUCKET, self.max_positions)

    def start(self, prompts: list[list[int]], max_new_tokens: int) -> CompiledState:
        """Run the prompts (each non-empty) through the model; ready for the first new token."""
        lengths = np.array([len(p) for p in prompts], dtype="int32")
        longest = int(lengths.max())
        if longest + max_new_tokens > self.max_positions:
            raise ValueError(f"{longest} + {max_new_tokens} tokens exceed the model's {self.max_positions} positions")
        cache_length = self.cache_length_for(longest, max_new_tokens)
        prompt_length = round_up(longest, PROMPT_BUCKET, cache_length)
        tokens = np.zeros((len(prompts), prompt_length), dtype="int32")
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt)] = prompt
        bucket = self.bucket(len(prompts), cache_length)
        logits, hidden, prompt_hidden = bucket.prefill(tf.constant(tokens), tf.constant(lengths))
        return CompiledState(bucket=bucket, positions=lengths.copy(), logits=logits.numpy(),
                           hidden=hidden.numpy(), prompt_hidden=prompt_hidden.numpy())

    def step(self, state: CompiledState, tokens) -> tuple[np.ndarray, np.ndarray]:
        """Feed one token per row; the state's logits and hidden become the next token's."""
        if int(state.positions.max()) >= state.cache_length:
            raise ValueError("the cache is full")
        logits, hidden = state.bucket.step(tf.constant(np.asarray(tokens, dtype="int32")),
                                           tf.constant(state.positions))
        state.positions = state.positions + 1
        state.logits, state.hidden = logits.numpy(), hidden.numpy()
        return state.logits, state.hidden

    def reorder(self, state: CompiledState, rows) -> None:
        """Row i of the cache becomes a copy of row `rows[i]` (beam search's parents)."""
        rows = np.asarray(rows, dtype="int32")
        state.bucket.reorder(tf.constant(rows))
        state.positions = state.positions[rows]
        state.logits, state.hidden = state.logits[rows], state.hidden[rows]
        if state.prompt_hidden is not None:
            state.prompt_hidden = state.prompt_hidden[rows]


# Measured on this project's CPUs: XLA runs the `gpt2` (124M) step at 22 tok/s
# against about 13 in graph mode, but costs `tiny` 4.7 s of first call against
# 0.65 s, for a speed no one waits on. Same threshold as fine-tuning.
XLA_FROM_PARAMETERS = 100_000_000


def decoder_for(model, xla: bool | None = None, runtime: str = "auto") -> Decoder:
    """The model's decoder for `runtime`, built on first use and kept with the model.

    `model`: a `backends.loaded_model.LoadedModel` or a bare `GPT2CausalLM`
    (whose decoders are kept for as long as it lives, the same as its wrapper's).
    `runtime`: ``keras`` (`CompiledDecoder`), ``onnx`` or ``litert``
    (`backends.fast_decoding.RuntimeDecoder`, for float32 and int8 variants),
    or ``auto``: onnxruntime where it can run the variant and `xla` is not
    set, Keras otherwise. Measured with `bench/run.py` on the `gpt2` (124M)
    configuration, 2 CPU cores, greedy, batch 1 (batch 8): onnxruntime decodes
    float32 at 31 tok/s (151) against 22 (49) for the XLA-compiled Keras
    decoder, and int8 at 60 (158); LiteRT int8 at 65 (111), after a first call
    ten times longer. Keras's own int8 arithmetic decodes slower than float32.
    `xla`: compile the Keras decoder with XLA; by default for models of
    XLA_FROM_PARAMETERS or more.
    """
    loaded = LoadedModel.of(model)
    lm = loaded.lm
    runtime = resolve_runtime(lm, xla, runtime)
    decoders = loaded.decoders
    if runtime != "keras":
        if runtime not in decoders:
            from backends.fast_decoding import RuntimeDecoder

            decoders[runtime] = RuntimeDecoder.build(lm, runtime, loaded.runtime_cache)
        return decoders[runtime]
    if xla is None:
        xla = lm.backbone.count_params() >= XLA_FROM_PARAMETERS
    if xla not in decoders:
        decoders[xla] = CompiledDecoder(lm, jit_compile=xla)
    return decoders[xla]


def resolve_runtime(model, xla: bool | None = None, runtime: str = "auto") -> str:
    """The runtime `decoder_for` uses for these settings (``auto`` made concrete)."""
    if runtime not in RUNTIMES:
        from registry.errors import UsageError

        raise UsageError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "onnx" if xla is None and runtime_can_decode(model) else "keras"
    return runtime


def runtime_can_decode(model) -> bool:
    """Whether the onnx and litert runtimes decode this model as Keras would: float32 or int8
    weights, float32 arithmetic, no update of Keras's own `enable_lora` on an int8 kernel
    (this project's LoRA factors are read by `fast_decoding.model_tensors`)."""
    backbone = unwrap(model).backbone
    if backbone.dtype_policy.compute_dtype != "float32":
        return False
    for layer in backbone._flatten_layers(include_self=False):
        mode = getattr(layer, "quantization_mode", None)
        if mode not in (None, "int8"):
            return False
        if mode == "int8" and getattr(layer, "lora_enabled", False):
            return False  # an int8 kernel's LoRA update is applied apart from it
    return True


# -- helpers ----------------------------------------------------------------


def _is_quantized(layer) -> bool:
    return getattr(layer, "quantization_mode", None) is not None


def _dense_matrix(dense, input_dim: int) -> tuple[np.ndarray, np.ndarray]:
    # `kernel` folds in the update of Keras's own `enable_lora`; `folded_kernel` adds ours,
    # which the layer keeps apart from its kernel (a quantized layer calls itself instead).
    kernel = lora.folded_kernel(dense, np.asarray(dense.kernel.numpy())).reshape(input_dim, -1)
    bias = np.asarray(dense.bias.numpy()).reshape(-1) if dense.bias is not None else np.zeros(kernel.shape[1], kernel.dtype)
    return kernel, bias


def _pack_dense(dense, input_dim: int):
    if _is_quantized(dense):
        return dense
    kernel, bias = _dense_matrix(dense, input_dim)
    return tf.Variable(kernel, trainable=False), tf.Variable(bias, trainable=False)


def _matmul(x, kernel):
    kernel = tf.cast(kernel, x.dtype)
    if x.shape.rank == 2:
        return tf.matmul(x, kernel)
    return tf.einsum("...i,io->...o", x, kernel)


def _call_dense(dense, x, heads: int | None = None):
    """Call a quantized Keras layer on its own arithmetic; x [..., features] -> [..., outputs].

    Keras's einsum layers expect a sequence axis, and the attention output layer
    expects its input split into heads.
    """
    single = x.shape.rank == 2
    shaped = x[:, None] if single else x
    if heads is not None:
        shaped = tf.reshape(shaped, tf.concat([tf.shape(shaped)[:-1], [heads, -1]], axis=0))
    y = dense(shaped)
    y = tf.reshape(y, tf.concat([tf.shape(shaped)[:2], [-1]], axis=0))
    return y[:, 0] if single else y


def _apply_dense(packed, x, heads: int | None = None):
    if isinstance(packed, tuple):
        kernel, bias = packed
        return _matmul(x, kernel) + tf.cast(bias, x.dtype)
    return _call_dense(packed, x, heads)


def _pack_norm(layer) -> tuple:
    return (tf.Variable(np.asarray(layer.gamma.numpy()), trainable=False),
            tf.Variable(np.asarray(layer.beta.numpy()), trainable=False), float(layer.epsilon))


def _norm(packed, x):
    gamma, beta, epsilon = packed
    values = tf.cast(x, tf.float32)
    mean, variance = tf.nn.moments(values, axes=[-1], keepdims=True)
    normed = (values - mean) * tf.math.rsqrt(variance + epsilon) * tf.cast(gamma, tf.float32) + tf.cast(beta, tf.float32)
    return tf.cast(normed, x.dtype)
