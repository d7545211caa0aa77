"""GPT-2 as an ONNX graph, written from its weights with `onnx.helper`.

Why not tf2onnx (the converter behind `keras.Model.export(format="onnx")`):
converting the 124M `gpt2` configuration with it ran out of 24 GB of memory
(measured: killed at 24.4 GB resident after 151 s) for a model of 500 MB.
GPT-2 is a short list of standard ONNX operators, so the graph is written
here directly from the Hugging Face tensor layout (the same tensors an `hf`
export holds): it takes seconds and about twice the weights in memory, and
every export is checked against Keras before it is recorded.

The graph: input `token_ids` int32 [batch, length], output `logits` float32
[batch, length, vocabulary]; causal attention over the whole sequence, no
padding (the same contract as the SavedModel's `score` signature).
"""

from __future__ import annotations

import math

import numpy as np

OPSET = 17  # LayerNormalization is a standard operator from 17 on


def build(tensors: dict[str, np.ndarray], *, num_layers: int, num_heads: int, epsilon: float = 1e-5):
    """An `onnx.ModelProto` for the GPT-2 whose Hugging Face tensors are `tensors`."""
    from onnx import TensorProto, helper, numpy_helper

    tensors = {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}
    nodes, initializers = [], []
    counter = iter(range(1_000_000))

    def weight(name: str, array=None) -> str:
        value = tensors[f"transformer.{name}"] if array is None else array
        # np.asarray, not np.ascontiguousarray: the latter turns a scalar into shape (1,).
        initializers.append(numpy_helper.from_array(np.asarray(value, order="C"), name))
        return name

    def constant(values, dtype) -> str:
        return weight(f"const_{next(counter)}", np.asarray(values, dtype=dtype))

    def op(op_type: str, *inputs: str, **attributes) -> str:
        output = f"{op_type.lower()}_{next(counter)}"
        nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def layer_norm(x, prefix):
        return op("LayerNormalization", x, weight(f"{prefix}.weight"), weight(f"{prefix}.bias"),
                  axis=-1, epsilon=epsilon)

    def dense(x, prefix):
        return op("Add", op("MatMul", x, weight(f"{prefix}.weight")), weight(f"{prefix}.bias"))

    width = tensors["transformer.wte.weight"].shape[1]
    head_dim = width // num_heads
    dtype = np.float32

    # Embeddings: token plus position (positions 0..length-1).
    shape = op("Shape", "token_ids")
    length = op("Gather", shape, constant(1, np.int64), axis=0)
    positions = op("Range", constant(0, np.int64), length, constant(1, np.int64))
    x = op("Add", op("Gather", weight("wte.weight"), "token_ids"), op("Gather", weight("wpe.weight"), positions))

    # Causal mask: -inf-like above the diagonal, 0 on and below it, [length, length].
    square = op("Concat", op("Unsqueeze", length, constant([0], np.int64)),
                op("Unsqueeze", length, constant([0], np.int64)), axis=0)
    blocked = op("ConstantOfShape", square, value=numpy_helper.from_array(np.array([-1e9], dtype=np.float32)))
    causal = op("Trilu", blocked, constant(1, np.int64), upper=1)

    heads_shape = constant([0, 0, num_heads, head_dim], np.int64)
    merged_shape = constant([0, 0, width], np.int64)
    scale = constant(1.0 / math.sqrt(head_dim), dtype)
    half, one = constant(0.5, dtype), constant(1.0, dtype)
    gelu_a, gelu_b = constant(math.sqrt(2.0 / math.pi), dtype), constant(0.044715, dtype)

    for index in range(num_layers):
        prefix = f"h.{index}"
        h = layer_norm(x, f"{prefix}.ln_1")
        qkv = dense(h, f"{prefix}.attn.c_attn")
        nodes.append(helper.make_node("Split", [qkv, constant([width] * 3, np.int64)],
                                      [f"q_{index}", f"k_{index}", f"v_{index}"], axis=-1))
        q = op("Transpose", op("Reshape", f"q_{index}", heads_shape), perm=[0, 2, 1, 3])
        k = op("Transpose", op("Reshape", f"k_{index}", heads_shape), perm=[0, 2, 3, 1])
        v = op("Transpose", op("Reshape", f"v_{index}", heads_shape), perm=[0, 2, 1, 3])
        scores = op("Add", op("Mul", op("MatMul", q, k), scale), causal)
        attended = op("MatMul", op("Softmax", scores, axis=-1), v)
        attended = op("Reshape", op("Transpose", attended, perm=[0, 2, 1, 3]), merged_shape)
        x = op("Add", x, dense(attended, f"{prefix}.attn.c_proj"))

        h = dense(layer_norm(x, f"{prefix}.ln_2"), f"{prefix}.mlp.c_fc")
        # GELU, tanh approximation (GPT-2's "gelu_new"): 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3))).
        cube = op("Mul", op("Mul", h, h), h)
        inner = op("Mul", gelu_a, op("Add", h, op("Mul", gelu_b, cube)))
        h = op("Mul", op("Mul", half, h), op("Add", one, op("Tanh", inner)))
        x = op("Add", x, dense(h, f"{prefix}.mlp.c_proj"))

    x = layer_norm(x, "ln_f")
    # Logits against the tied embedding, read in place (Gemm transB) rather than from a transposed copy.
    flat = op("Reshape", x, constant([-1, width], np.int64))
    logits = op("Gemm", flat, "wte.weight", transB=1)
    out_shape = op("Concat", shape, constant([-1], np.int64), axis=0)
    nodes.append(helper.make_node("Reshape", [logits, out_shape], ["logits"]))

    graph = helper.make_graph(
        nodes, "gpt2",
        [helper.make_tensor_value_info("token_ids", TensorProto.INT32, ["batch", "length"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "length", "vocabulary"])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gpt2-registry")
