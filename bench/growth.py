"""How the cost of decoding grows: tokens/s against context, batch size and model size.

Our onnxruntime decoder (`backends.fast_decoding.RuntimeDecoder`, what
`gpt2reg generate` runs), float32 and int8, on random weights written
straight into the Hugging Face layout (nothing is downloaded, no Keras model
is built; speed does not depend on the values). int8 matrices are quantized
as Keras's int8 mode does it: one scale per output column, values rounded to
[-127, 127]; the output projection is the int8 token embedding, one scale
per row.

Three axes, each with the others held:

- context: `gpt2`, batch 1, a prompt of 64, 256, 512 or 1,000 tokens already
  in the cache, then the steps timed;
- batch: `gpt2`, 64 tokens of context, batch 1, 8 and 32;
- model size: `tiny`, `gpt2`, `gpt2-medium` and `gpt2-large`, batch 1,
  64 tokens of context.

Each point: the prompt is prefilled (untimed), then `--steps` single-token
steps are timed; the best of `--repeats` such runs, tokens/s over all rows.
Each point also gives the bytes of weights a step reads (the graph's
initializers less the tables only looked up), for its share of the memory
roofline.

    python bench/growth.py [--axes context,batch,size] [--steps 16] [--repeats 3] [--json out.json] [--png out.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTEXTS = (64, 256, 512, 1000)
BATCHES = (1, 8, 32)
SIZES = ("tiny", "gpt2", "gpt2-medium", "gpt2-large")
PRECISIONS = ("float32", "int8")


def random_weights(config: str, precision: str, seed: int = 0):
    """A `ModelTensors` of random weights for `config`, as `backends.fast_decoding.model_tensors` gives a backbone's."""
    import numpy as np

    from backends.configs import get_config
    from backends.fast_decoding import ModelTensors

    shape = get_config(config)
    width, inner = shape["hidden_dim"], shape["intermediate_dim"]
    rng = np.random.default_rng(seed)

    def normal(*dims):
        return rng.standard_normal(dims, dtype=np.float32) * np.float32(0.02)

    tensors = {"transformer.wte.weight": normal(shape["vocabulary_size"], width),
               "transformer.wpe.weight": normal(shape["max_sequence_length"], width),
               "transformer.ln_f.weight": np.ones(width, np.float32),
               "transformer.ln_f.bias": np.zeros(width, np.float32)}
    for index in range(shape["num_layers"]):
        prefix = f"transformer.h.{index}"
        for name, (inputs, outputs) in (("attn.c_attn", (width, 3 * width)), ("attn.c_proj", (width, width)),
                                        ("mlp.c_fc", (width, inner)), ("mlp.c_proj", (inner, width))):
            tensors[f"{prefix}.{name}.weight"] = normal(inputs, outputs)
            tensors[f"{prefix}.{name}.bias"] = np.zeros(outputs, np.float32)
        for norm in ("ln_1", "ln_2"):
            tensors[f"{prefix}.{norm}.weight"] = np.ones(width, np.float32)
            tensors[f"{prefix}.{norm}.bias"] = np.zeros(width, np.float32)
    int8 = {}
    if precision == "int8":
        for name, weight in list(tensors.items()):
            if ".h." in name and weight.ndim == 2:
                scale = np.abs(weight).max(axis=0) / np.float32(127)
                values = np.round(weight / scale).astype(np.int8)
                int8[name] = (values, scale)
                tensors[name] = values.astype(np.float32) * scale
        table = tensors["transformer.wte.weight"]
        scale = np.abs(table).max(axis=1) / np.float32(127)
        values = np.round(table / scale[:, None]).astype(np.int8)
        tensors["transformer.wte.weight"] = values.astype(np.float32) * scale[:, None]
        int8["transformer.lm_head.weight"] = (np.ascontiguousarray(values.T), scale)
    return ModelTensors(tensors, int8, {}, precision), shape


def decoder_for(config: str, precision: str, folder: str):
    """Our onnxruntime decoder of random `config` weights, its graph written into `folder`."""
    from backends.fast_decoding import RuntimeDecoder

    weights, shape = random_weights(config, precision)
    return RuntimeDecoder.from_tensors(weights, shape, "onnx", folder)


def graph_weight_bytes(path: str | Path) -> int:
    """Bytes of weights a step of the graph at `path` reads: its initializers, less the tables that
    are only looked up (`Gather`: a step reads a row of each), from their shapes alone."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total = 0
    for tensor in model.graph.initializer:
        if consumers.get(tensor.name) == {"Gather"}:
            continue
        count = 1
        for dim in tensor.dims:
            count *= dim
        total += count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


def product_graph() -> bytes:
    """A one-operator onnxruntime graph: `states` [rows, width] times `embedding` [width, vocabulary]
    (the logits of every position, the bare forward pass that scoring is measured against)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["states", "embedding"], ["logits"])], "logits",
        [helper.make_tensor_value_info("states", TensorProto.FLOAT, ["rows", "width"]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["width", "vocabulary"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows", "vocabulary"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def decode_rate(decoder, *, batch: int, context: int, steps: int, repeats: int) -> float:
    """Tokens/s of `steps` single-token steps over `batch` rows with `context` tokens already in the cache."""
    import numpy as np

    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 50256, size=context).tolist() for _ in range(batch)]
    best = float("inf")
    for _ in range(repeats):
        state = decoder.start(prompts, max_new_tokens=steps)
        tokens = state.logits.argmax(axis=-1)
        started = time.perf_counter()
        for _ in range(steps):
            logits, _ = decoder.step(state, tokens)
            tokens = logits.argmax(axis=-1)
        best = min(best, time.perf_counter() - started)
    return batch * steps / best


def measure(axes: tuple[str, ...], *, steps: int, repeats: int, sizes: tuple[str, ...] = SIZES,
            contexts: tuple[int, ...] = CONTEXTS, batches: tuple[int, ...] = BATCHES, model: str = "gpt2",
            short_context: int = 64) -> list[dict]:
    """The rows of every point on `axes` (context and batch on `model`, size), float32 and int8."""
    import gc

    rows = []
    plan = []  # (config, [(axis, batch, context)]) so each model is built once
    if "context" in axes or "batch" in axes:
        points = [("context", 1, context) for context in contexts] if "context" in axes else []
        points += [("batch", batch, short_context) for batch in batches] if "batch" in axes else []
        plan.append((model, points))
    if "size" in axes:
        for config in sizes:
            plan.append((config, [("size", 1, short_context)]))
    for config, points in plan:
        for precision in PRECISIONS:
            with tempfile.TemporaryDirectory(prefix="gpt2reg-growth-") as folder:
                try:
                    started = time.perf_counter()
                    decoder = decoder_for(config, precision, folder)
                    build_s = time.perf_counter() - started
                    read = graph_weight_bytes(next(Path(folder).glob("decoder-*.onnx")))
                except MemoryError as error:
                    for axis, batch, context in points:
                        rows.append({"name": f"ours onnx {precision}", "status": "skipped", "axis": axis,
                                     "config": config, "precision": precision, "batch_size": batch,
                                     "context": context, "reason": f"out of memory building the graph ({error})"})
                    continue
                for axis, batch, context in points:
                    rate = decode_rate(decoder, batch=batch, context=context, steps=steps, repeats=repeats)
                    rows.append({"name": f"ours onnx {precision}", "status": "ok", "axis": axis, "config": config,
                                 "precision": precision, "batch_size": batch, "context": context,
                                 "tokens_per_s": rate, "weight_bytes": read, "build_s": build_s})
                    print(f"  {axis:8s} {config:12s} {precision:8s} batch {batch:3d} context {context:5d}: "
                          f"{rate:9.1f} tok/s", file=sys.stderr, flush=True)
                del decoder
                gc.collect()
    return rows


def add_shares(rows: list[dict], read_gb_per_s: float | None) -> None:
    """Each row's roofline (a step reads every weight once for the whole batch) and its share of it;
    each context row's rate against the same precision's at the shortest context."""
    for row in rows:
        if row.get("status") == "ok" and read_gb_per_s:
            row["roofline_tokens_per_s"] = row["batch_size"] * read_gb_per_s * 1e9 / row["weight_bytes"]
            row["of_roofline"] = row["tokens_per_s"] / row["roofline_tokens_per_s"]
    for precision in PRECISIONS:
        points = sorted((r for r in rows if r.get("axis") == "context" and r.get("precision") == precision
                         and r.get("status") == "ok"), key=lambda r: r["context"])
        for row in points:
            row["of_shortest_context"] = row["tokens_per_s"] / points[0]["tokens_per_s"]


def draw(rows: list[dict], destination: Path) -> Path:
    """The three axes side by side, float32 and int8 on each, tokens/s on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, panels = pyplot.subplots(1, 3, figsize=(13, 4))
    model = next((r["config"] for r in rows if r.get("axis") in ("context", "batch")), "gpt2")
    short = next((r["context"] for r in rows if r.get("axis") in ("batch", "size")), 64)
    axes = (("context", "context", f"tokens already in the cache ({model}, batch 1)"),
            ("batch", "batch_size", f"batch size ({model}, {short} tokens of context)"),
            ("size", "config", f"model (batch 1, {short} tokens of context)"))
    for panel, (axis, key, label) in zip(panels, axes):
        for precision, marker in zip(PRECISIONS, "os"):
            points = [r for r in rows if r.get("axis") == axis and r.get("precision") == precision
                      and r.get("status") == "ok"]
            if axis == "size":
                order = {config: number for number, config in enumerate(SIZES)}
                points.sort(key=lambda r: order.get(r["config"], len(order)))
                xs = list(range(len(points)))
                panel.set_xticks(xs, [r["config"] for r in points])
            else:
                points.sort(key=lambda r: r[key])
                xs = [r[key] for r in points]
                panel.set_xscale("log", base=2)
                panel.set_xticks(xs, [str(x) for x in xs])
            panel.plot(xs, [r["tokens_per_s"] for r in points], marker=marker, label=f"onnxruntime {precision}")
        panel.set_yscale("log")
        panel.set_xlabel(label)
        panel.set_ylabel("tokens/s")
        panel.grid(True, which="both", alpha=0.3)
        panel.legend()
    figure.suptitle("How decoding cost grows (ours, onnxruntime on the CPU)")
    figure.tight_layout()
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=110)
    pyplot.close(figure)
    return destination


def table(rows: list[dict]) -> str:
    lines = ["| axis | model | precision | batch | context | tok/s | weights read MB | of roofline | of 64-token rate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['axis']} | {r['config']} | {r['precision']} | {r['batch_size']} | {r['context']} "
                         f"| skipped: {r.get('reason', '')} | | | |")
            continue
        share = f"{r['of_roofline']:.2f}" if "of_roofline" in r else ""
        shortest = f"{r['of_shortest_context']:.2f}" if "of_shortest_context" in r else ""
        lines.append(f"| {r['axis']} | {r['config']} | {r['precision']} | {r['batch_size']} | {r['context']} "
                     f"| {r['tokens_per_s']:,.1f} | {r['weight_bytes'] / 1e6:,.0f} | {share} | {shortest} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--axes", default="context,batch,size")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--read-gb-per-s", type=float, default=None,
                        help="the machine's read bandwidth, for the roofline shares (bench/run.py measures it)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--png", default=None)
    args = parser.parse_args()
    rows = measure(tuple(args.axes.split(",")), steps=args.steps, repeats=args.repeats,
                   sizes=tuple(args.sizes.split(",")))
    add_shares(rows, args.read_gb_per_s)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    if args.png:
        print(f"written: {draw(rows, Path(args.png))}", file=sys.stderr)


if __name__ == "__main__":
    main()
