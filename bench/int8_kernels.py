"""onnxruntime's int8 matrix kernels on this machine: accuracy on one product, speed streaming many.

Why `backends.onnx_graph.build_decoder` uses `MatMulNBits` (8 bits,
accuracy_level 4) for int8 variants rather than the `DynamicQuantizeMatMul`
that `onnxruntime.quantization.quantize_dynamic` produces:

1. one 768 x 3072 product (GPT-2's feed-forward shape) with per-output-channel
   int8 weights: the largest error against float32, relative to the largest
   output, and microseconds per call (weights hot in the cache);
2. a chain of 40 different such products (94M int8 weights, far more than
   the caches hold): milliseconds per pass and weights streamed per second,
   which bounds int8 decoding at batch 1 (the `gpt2` configuration reads
   124M weights per token).

    python bench/int8_kernels.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

K, N, CHAIN = 768, 3072, 40


def session(nodes, initializers, threads: int, output: str = "y"):
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def kernel(kind: str, weight: np.ndarray, name: str, x: str, y: str):
    """The node and initializers of x @ weight ([K, N]) with per-output-channel int8 weights."""
    from onnx import helper, numpy_helper

    scale = np.abs(weight).max(axis=0) / 127
    values = np.round(weight / scale).astype(np.int8)
    if kind == "float32 MatMul":
        return helper.make_node("MatMul", [x, name], [y]), [numpy_helper.from_array(weight, name)]
    if kind == "DynamicQuantizeMatMul":
        return (helper.make_node("DynamicQuantizeMatMul", [x, name, f"{name}.s", f"{name}.z"], [y], domain="com.microsoft"),
                [numpy_helper.from_array(values, name), numpy_helper.from_array(scale.astype(np.float32), f"{name}.s"),
                 numpy_helper.from_array(np.zeros(N, np.int8), f"{name}.z")])
    block = 256  # as build_decoder chooses for a width of 768: every block of a column keeps its scale
    stored = (values.T.astype(np.int16) + 128).astype(np.uint8).reshape(N, K // block, block)
    scales = np.repeat(scale.astype(np.float32)[:, None], K // block, axis=1).reshape(-1)
    return (helper.make_node("MatMulNBits", [x, name, f"{name}.s"], [y], domain="com.microsoft", K=K, N=N, bits=8,
                             block_size=block, accuracy_level=4),
            [numpy_helper.from_array(stored, name), numpy_helper.from_array(scales, f"{name}.s")])


def best_seconds(run, calls: int) -> float:
    for _ in range(5):
        run()
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            run()
        rounds.append((time.perf_counter() - started) / calls)
    return min(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, K)).astype(np.float32)
    print("| kernel | error / largest output | one product µs | chain of 94M weights ms | weights/s |")
    print("|---|---:|---:|---:|---:|")
    for kind in ("float32 MatMul", "DynamicQuantizeMatMul", "MatMulNBits 8-bit"):
        weight = (rng.standard_normal((K, N)) * 0.02).astype(np.float32)
        node, initializers = kernel(kind, weight, "w", "x", "y")
        one = session([node], initializers, args.threads)
        y = one.run(None, {"x": x})[0]
        error = float(np.abs(y - x @ weight).max() / np.abs(x @ weight).max())
        single = best_seconds(lambda: one.run(None, {"x": x}), 200)
        # The chain: each product's first K outputs feed the next, so no product is skipped.
        nodes, chained, current = [], [], "x"
        for index in range(CHAIN):
            step_weight = (rng.standard_normal((K, N)) * 0.02).astype(np.float32)
            step_node, step_initializers = kernel(kind, step_weight, f"w{index}", current, f"p{index}")
            nodes += [step_node]
            chained += step_initializers
            from onnx import helper

            nodes.append(helper.make_node("Slice", [f"p{index}", "start", "end", "axis"], [f"c{index}"]))
            current = f"c{index}"
        chained += [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("start", 0), ("end", K), ("axis", 1))]
        chain = session(nodes, chained, args.threads, output=current)
        seconds = best_seconds(lambda: chain.run(None, {"x": x}), 10)
        print(f"| {kind} | {error:.3%} | {single * 1e6:.0f} | {seconds * 1e3:.2f} | {K * N * CHAIN / seconds / 1e9:.1f} G |")


if __name__ == "__main__":
    main()
