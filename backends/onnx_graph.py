"""GPT-2 as ONNX graphs, written from its weights with `onnx.helper`.

Why not tf2onnx (the converter behind `keras.Model.export(format="onnx")`):
converting the 124M `gpt2` configuration with it ran out of 24 GB of memory
(measured: killed at 24.4 GB resident after 151 s) for a model of 500 MB.
GPT-2 is a short list of standard ONNX operators, so the graphs are written
here directly from the Hugging Face tensor layout (the same tensors an `hf`
export holds): it takes seconds and about twice the weights in memory, and
every graph is checked against Keras before it is used.

Two graphs:

- `build`: input `token_ids` int32 [batch, length], output `logits` float32
  [batch, length, vocabulary]; causal attention over the whole sequence, no
  padding (the same contract as the SavedModel's `score` signature).
- `build_decoder`: one decoding call with a key/value cache that the caller
  keeps and the graph writes into (see `backends.fast_decoding`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OPSET = 17  # LayerNormalization is a standard operator from 17 on
DECODER_OPSET = 20  # and Gelu (with the tanh approximation GPT-2 uses) from 20


@dataclass(frozen=True)
class FileSpan:
    """Where the bytes of one float32 tensor lie in a file beside the graph (ONNX external data)."""

    offset: int
    length: int
    shape: tuple[int, ...]


class _Writer:
    """Nodes and initializers of one graph, with GPT-2's building blocks."""

    def __init__(self, tensors: dict[str, np.ndarray], epsilon: float, opset: int = OPSET, int8: dict | None = None,
                 low_rank: dict | None = None, external: dict[str, list[FileSpan]] | None = None,
                 external_file: str | None = None):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.tensors = tensors
        # Tensors read from `external_file` where they lie, by name: parts side by side on the last axis.
        self.external, self.external_file = (external or {}), external_file
        self.made: dict[str, str] = {}  # external tensors already in the graph, and tensors made from them
        self.int8 = int8 or {}
        self.low_rank = low_rank or {}
        self.contrib = False  # uses operators of onnxruntime's com.microsoft domain (`op` sets it)
        self.epsilon = epsilon
        self.opset = opset
        self.nodes, self.initializers = [], []
        self._counter = iter(range(1_000_000))

    def weight(self, name: str, array=None) -> str:
        if array is None and name in self.made:
            return self.made[name]
        if array is None and f"transformer.{name}" in self.external:
            self.made[name] = self._external(name, self.external[f"transformer.{name}"])
            return self.made[name]
        value = self.tensors[f"transformer.{name}"] if array is None else array
        # np.asarray, not np.ascontiguousarray: the latter turns a scalar into shape (1,).
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, order="C"), name))
        return name

    def _external(self, name: str, spans: list[FileSpan]) -> str:
        """An initializer that reads its bytes from the external file (several: joined by a Concat,
        which onnxruntime folds once when the session loads)."""
        from onnx import TensorProto

        parts = []
        for number, span in enumerate(spans):
            tensor = TensorProto(name=name if len(spans) == 1 else f"{name}.part{number}", data_type=TensorProto.FLOAT,
                                 dims=list(span.shape), data_location=TensorProto.EXTERNAL)
            for key, value in (("location", self.external_file), ("offset", str(span.offset)),
                               ("length", str(span.length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            self.initializers.append(tensor)
            parts.append(tensor.name)
        return parts[0] if len(parts) == 1 else self.op("Concat", *parts, axis=-1)

    def constant(self, values, dtype) -> str:
        return self.weight(f"const_{next(self._counter)}", np.asarray(values, dtype=dtype))

    def op(self, op_type: str, *inputs: str, outputs: list[str] | None = None, **attributes) -> str:
        outputs = outputs or [f"{op_type.lower()}_{next(self._counter)}"]
        self.contrib = self.contrib or attributes.get("domain") == "com.microsoft"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outputs, **attributes))
        return outputs[0]

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op("LayerNormalization", x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias"),
                       axis=-1, epsilon=self.epsilon)

    def matmul(self, x: str, name: str, output: str | None = None, bias: str | None = None) -> str:
        """x times the [inputs, outputs] weight `name` (plus `bias`): int8 when the writer holds int8 values for it,
        plus x·A·B when it holds a LoRA update (A, B) for it."""
        if name in self.low_rank:
            a, b = self.low_rank[name]
            update = self.op("MatMul", self.op("MatMul", x, self.weight(f"{name}.lora_a", a)),
                             self.weight(f"{name}.lora_b", b))
            return self.op("Add", self._product(x, name, None, bias), update, outputs=[output] if output else None)
        return self._product(x, name, output, bias)

    def _product(self, x: str, name: str, output: str | None, bias: str | None) -> str:
        outputs = [output] if output else None
        if name not in self.int8:
            if bias is None:
                return self.op("MatMul", x, self.weight(name), outputs=outputs)
            return self.op("Add", self.op("MatMul", x, self.weight(name)), self.weight(bias), outputs=outputs)
        values, scale = self.int8[name]
        inputs, columns = values.shape
        block = _block_size(inputs)
        blocks = inputs // block
        # MatMulNBits's layout: [outputs, blocks, block] unsigned, zero point 2**(bits-1) = 128
        # (so a stored 128 is a weight of 0), one scale per block: here the column's own scale
        # in every block of the column, which keeps the int8 values exactly as given.
        stored = (values.T.astype(np.int16) + 128).astype(np.uint8).reshape(columns, blocks, block)
        scales = np.repeat(scale.astype(np.float32)[:, None], blocks, axis=1).reshape(-1)
        extra = ["", "", self.weight(bias)] if bias else []  # no zero points, no group index, then the bias
        return self.op("MatMulNBits", x, self.weight(f"{name}.int8", stored), self.weight(f"{name}.scale", scales),
                       *extra, outputs=outputs, domain="com.microsoft", K=inputs, N=columns, bits=8, block_size=block,
                       accuracy_level=4)

    def dense(self, x: str, prefix: str) -> str:
        return self.matmul(x, f"{prefix}.weight", bias=f"{prefix}.bias")

    def skip_layer_norm(self, x: str, residual: str, prefix: str) -> tuple[str, str]:
        """LayerNorm(residual + x) and residual + x, in one onnxruntime operator."""
        total = f"residual_{next(self._counter)}"
        normed = self.op("SkipLayerNormalization", x, residual, self.weight(f"{prefix}.weight"),
                         self.weight(f"{prefix}.bias"), outputs=[f"skipnorm_{next(self._counter)}", "", "", total],
                         domain="com.microsoft", epsilon=self.epsilon)
        return normed, total

    def feedforward(self, x: str, prefix: str) -> str:
        """x plus the block's feed-forward part."""
        h = self.dense(self.layer_norm(x, f"{prefix}.ln_2"), f"{prefix}.mlp.c_fc")
        if self.opset >= 20:  # one fused operator instead of six
            return self.op("Add", x, self.dense(self.op("Gelu", h, approximate="tanh"), f"{prefix}.mlp.c_proj"))
        # GELU, tanh approximation (GPT-2's "gelu_new"): 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3))).
        dtype = np.float32
        cube = self.op("Mul", self.op("Mul", h, h), h)
        inner = self.op("Mul", self.constant(math.sqrt(2.0 / math.pi), dtype),
                        self.op("Add", h, self.op("Mul", self.constant(0.044715, dtype), cube)))
        h = self.op("Mul", self.op("Mul", self.constant(0.5, dtype), h),
                    self.op("Add", self.constant(1.0, dtype), self.op("Tanh", inner)))
        return self.op("Add", x, self.dense(h, f"{prefix}.mlp.c_proj"))

    def model(self, inputs, outputs):
        graph = self.helper.make_graph(self.nodes, "gpt2", inputs, outputs, self.initializers)
        opsets = [self.helper.make_opsetid("", self.opset)]
        if self.contrib:
            opsets.append(self.helper.make_opsetid("com.microsoft", 1))
        return self.helper.make_model(graph, opset_imports=opsets, producer_name="gpt2-registry")


def _block_size(inputs: int) -> int:
    """The largest power of two, at most 256, that divides `inputs` (MatMulNBits needs at least 16)."""
    block = 256
    while inputs % block:
        block //= 2
    if block < 16:
        raise ValueError(f"an int8 runtime kernel needs a width divisible by 16, not {inputs}")
    return block


def build(tensors: dict[str, np.ndarray], *, num_layers: int, num_heads: int, epsilon: float = 1e-5):
    """An `onnx.ModelProto` for the GPT-2 whose Hugging Face tensors are `tensors`."""
    from onnx import TensorProto, helper, numpy_helper

    tensors = {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}
    w = _Writer(tensors, epsilon)
    op, constant = w.op, w.constant
    width = tensors["transformer.wte.weight"].shape[1]
    head_dim = width // num_heads
    dtype = np.float32

    # Embeddings: token plus position (positions 0..length-1).
    shape = op("Shape", "token_ids")
    length = op("Gather", shape, constant(1, np.int64), axis=0)
    positions = op("Range", constant(0, np.int64), length, constant(1, np.int64))
    x = op("Add", op("Gather", w.weight("wte.weight"), "token_ids"), op("Gather", w.weight("wpe.weight"), positions))

    # Causal mask: -inf-like above the diagonal, 0 on and below it, [length, length].
    square = op("Concat", op("Unsqueeze", length, constant([0], np.int64)),
                op("Unsqueeze", length, constant([0], np.int64)), axis=0)
    blocked = op("ConstantOfShape", square, value=numpy_helper.from_array(np.array([-1e9], dtype=np.float32)))
    causal = op("Trilu", blocked, constant(1, np.int64), upper=1)

    heads_shape = constant([0, 0, num_heads, head_dim], np.int64)
    merged_shape = constant([0, 0, width], np.int64)
    scale = constant(1.0 / math.sqrt(head_dim), dtype)

    for index in range(num_layers):
        prefix = f"h.{index}"
        h = w.layer_norm(x, f"{prefix}.ln_1")
        qkv = w.dense(h, f"{prefix}.attn.c_attn")
        op("Split", qkv, constant([width] * 3, np.int64), outputs=[f"q_{index}", f"k_{index}", f"v_{index}"], axis=-1)
        q = op("Transpose", op("Reshape", f"q_{index}", heads_shape), perm=[0, 2, 1, 3])
        k = op("Transpose", op("Reshape", f"k_{index}", heads_shape), perm=[0, 2, 3, 1])
        v = op("Transpose", op("Reshape", f"v_{index}", heads_shape), perm=[0, 2, 1, 3])
        scores = op("Add", op("Mul", op("MatMul", q, k), scale), causal)
        attended = op("MatMul", op("Softmax", scores, axis=-1), v)
        attended = op("Reshape", op("Transpose", attended, perm=[0, 2, 1, 3]), merged_shape)
        x = op("Add", x, w.dense(attended, f"{prefix}.attn.c_proj"))
        x = w.feedforward(x, prefix)

    x = w.layer_norm(x, "ln_f")
    # Logits against the tied embedding, read in place (Gemm transB) rather than from a transposed copy.
    flat = op("Reshape", x, constant([-1, width], np.int64))
    logits = op("Gemm", flat, "wte.weight", transB=1)
    out_shape = op("Concat", shape, constant([-1], np.int64), axis=0)
    op("Reshape", logits, out_shape, outputs=["logits"])

    return w.model(
        [helper.make_tensor_value_info("token_ids", TensorProto.INT32, ["batch", "length"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "length", "vocabulary"])],
    )


def build_decoder(tensors: dict[str, np.ndarray], *, num_layers: int, num_heads: int, epsilon: float = 1e-5,
                  int8: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                  low_rank: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                  external: dict[str, list[FileSpan]] | None = None, external_file: str | None = None):
    """An `onnx.ModelProto` for one decoding call of `T` new tokens into a cache of `S` slots it updates in place.

    Inputs: `token_ids` int32 [B, T]; `positions` int32 [B, T] (each token's
    position, per row); `last_index` int64 [B, 1] (which of the T tokens gives
    the logits); `slots_used` int32 [B] and `total_slots` int32 scalar: the
    new tokens take cache slots `total_slots - T .. total_slots - 1` of every
    row, and `slots_used` is `total_slots - 1` for each row;
    `attention_bias` float32 [B, 1, T, total_slots] (0 where a token may
    attend to a slot, -1e9 where not: a row's unused slots; the order of the
    new tokens among themselves is applied by the operator); `past_key_{i}`
    and `past_value_{i}` float32 [B, heads, S, head_dim] for each layer i.

    Outputs: `logits` [B, vocabulary] at `last_index`; `hidden` [B, T, width]
    (after the final norm); `present_key_{i}` and `present_value_{i}`: the
    cache with the new keys and values written in. Bound to the same buffers
    as `past_key_{i}` and `past_value_{i}` (`OnnxSession.bind_in_place`),
    the operator writes only the new slots and no call copies the cache.

    Attention is onnxruntime's `GroupQueryAttention` (with as many key/value
    heads as query heads), one operator per layer over the packed query, key
    and value product, as onnxruntime-genai's models use it, instead of fifteen
    small operators: `gpt2` int8 at batch 1 went from 138 to 147 tokens/s
    through `generate` here (`python bench/run.py --only generate-onnx-int8`).

    `external`: float32 tensors, by Hugging Face name, that the graph reads from
    `external_file` (a path relative to the graph's folder) instead of holding
    them: the variant's own weight file, so the weights are not stored twice.
    A tensor of several parts (query, key and value side by side) is joined by
    a Concat; the output projection is the embedding transposed, in the graph.

    `int8`: the Hugging Face names of the matrices to multiply in int8, each
    `(values [inputs, outputs] int8, scale [outputs])`. They run as
    onnxruntime's `MatMulNBits` with 8 bits and int8 arithmetic
    (accuracy_level 4: activations quantized per block at each call). On a
    768 x 3072 product (`python bench/int8_kernels.py`), onnxruntime's
    `DynamicQuantizeMatMul` (what `quantize_dynamic` makes) was about as fast
    but off by 8 to 15% of the largest output in two runs (int16 saturation
    of its u8 x s8 kernel on CPUs without VNNI), this kernel by about 1%.

    `low_rank`: LoRA updates of int8 matrices, each `(A [inputs, r], B [r,
    outputs])` under the matrix's name, added to its product in float32 as
    Keras adds them to its int8 layer's output.
    """
    from onnx import TensorProto, helper

    tensors = {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}
    external = {name: spans for name, spans in (external or {}).items() if name not in (int8 or {})}
    # The output projection as a [width, vocabulary] product, like every other matrix (the
    # int8 kernel takes that layout; it is a third of `gpt2`'s arithmetic per token).
    transpose_in_graph = "transformer.wte.weight" in external and "transformer.lm_head.weight" not in (int8 or {})
    if "transformer.lm_head.weight" not in (int8 or {}) and not transpose_in_graph:
        tensors["transformer.lm_head.weight"] = np.ascontiguousarray(tensors["transformer.wte.weight"].T)
    w = _Writer(tensors, epsilon, DECODER_OPSET,
                int8={name.removeprefix("transformer."): value for name, value in (int8 or {}).items()},
                low_rank={name.removeprefix("transformer."): value for name, value in (low_rank or {}).items()},
                external=external, external_file=external_file)
    if transpose_in_graph:  # folded once by onnxruntime when the session loads
        w.made["lm_head.weight"] = w.op("Transpose", w.weight("wte.weight"), perm=[1, 0])
    op = w.op
    width = tensors["transformer.wte.weight"].shape[1]
    head_dim = width // num_heads

    x = op("Add", op("Gather", w.weight("wte.weight"), "token_ids"), op("Gather", w.weight("wpe.weight"), "positions"))

    # The residual stream's additions ride in SkipLayerNormalization, which returns both the
    # normed sum and the sum: each block's two norms and two additions are two operators.
    block_output = None
    for index in range(num_layers):
        prefix = f"h.{index}"
        if block_output is None:
            h = w.layer_norm(x, f"{prefix}.ln_1")
        else:
            h, x = w.skip_layer_norm(block_output, x, f"{prefix}.ln_1")
        qkv = w.dense(h, f"{prefix}.attn.c_attn")  # [B, T, 3 width]: query, key and value packed
        attended = op("GroupQueryAttention", qkv, "", "", f"past_key_{index}", f"past_value_{index}", "slots_used",
                      "total_slots", "", "", "", "attention_bias",
                      outputs=[f"attended_{index}", f"present_key_{index}", f"present_value_{index}"],
                      domain="com.microsoft", num_heads=num_heads, kv_num_heads=num_heads)
        h, x = w.skip_layer_norm(w.dense(attended, f"{prefix}.attn.c_proj"), x, f"{prefix}.ln_2")
        h = op("Gelu", w.dense(h, f"{prefix}.mlp.c_fc"), approximate="tanh")
        block_output = w.dense(h, f"{prefix}.mlp.c_proj")

    hidden, _ = w.skip_layer_norm(block_output, x, "ln_f")
    op("Identity", hidden, outputs=["hidden"])
    last = op("GatherND", hidden, "last_index", batch_dims=1)  # [B, width]
    w.matmul(last, "lm_head.weight", output="logits")

    float_tensor = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    inputs = [
        helper.make_tensor_value_info("token_ids", TensorProto.INT32, ["batch", "new"]),
        helper.make_tensor_value_info("positions", TensorProto.INT32, ["batch", "new"]),
        helper.make_tensor_value_info("last_index", TensorProto.INT64, ["batch", 1]),
        helper.make_tensor_value_info("slots_used", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_slots", TensorProto.INT32, []),
        float_tensor("attention_bias", ["batch", 1, "new", "total_slots"]),
    ]
    outputs = [float_tensor("logits", ["batch", tensors["transformer.wte.weight"].shape[0]]),
               float_tensor("hidden", ["batch", "new", width])]
    for index in range(num_layers):
        for part in ("key", "value"):
            inputs.append(float_tensor(f"past_{part}_{index}", ["batch", num_heads, "slots", head_dim]))
            outputs.append(float_tensor(f"present_{part}_{index}", ["batch", num_heads, "slots", head_dim]))
    return w.model(inputs, outputs)
