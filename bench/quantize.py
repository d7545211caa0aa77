"""Size, speed and perplexity of quantized variants and int8 exports, against float32.

The `gpt2` (124M) configuration, randomly initialised (nothing is downloaded),
goes through the `gpt2reg` command line in a scratch home, one fresh process
per variant: `quantize --mode float16 | int8 | int4` and `export --format
tflite|onnx --quantize int8`. Each variant records, measured in that run on
this machine: its bytes on disk, batch-1 greedy tokens/s (after a warm-up
call) and perplexity on the same fixed text (the embedded held-out text, first
2,048 tokens). The float32 row holds the parent's figures as each run measured
them (median over the runs), and the stock row is KerasHub's own compiled
`generate` on the same float32 preset, for reference: the registry's Keras
greedy loop runs eagerly today (a compiled one is planned). Peak memory is
each process's maximum resident set size.

Random weights give a perplexity near the vocabulary size: the column shows
how far each format moves the model's outputs, not how good the model is.

    python bench/quantize.py [--config gpt2] [--new-tokens 32] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = [  # (label, gpt2reg arguments after the parent reference)
    ("float16 (Keras)", ["quantize", "--mode", "float16"]),
    ("int8 (Keras)", ["quantize", "--mode", "int8"]),
    ("int4 (Keras)", ["quantize", "--mode", "int4"]),
    ("int8 TFLite (LiteRT)", ["export", "--format", "tflite", "--quantize", "int8"]),
    ("int8 ONNX (onnxruntime)", ["export", "--format", "onnx", "--quantize", "int8"]),
]


# Stock KerasHub, for reference: `GPT2CausalLM.generate` (compiled by KerasHub) on the same
# float32 preset, the same prompt and the same number of new tokens, after one warm-up call.
STOCK_KERAS_HUB = """
import json, sys, time
import keras_hub
lm = keras_hub.models.GPT2CausalLM.from_preset(sys.argv[1])
prompt, new_tokens = "The meaning of life is", int(sys.argv[2])
length = len(lm.preprocessor.tokenizer(prompt)) + 1 + new_tokens  # KerasHub prepends a start token
lm.generate(prompt, max_length=length, stop_token_ids=None)
started = time.perf_counter()
lm.generate(prompt, max_length=length, stop_token_ids=None)
print(json.dumps({"greedy_tokens_per_second": new_tokens / (time.perf_counter() - started)}))
"""


def gpt2reg(*args: str) -> tuple[dict, float, int]:
    """Run one command in a fresh process: its JSON document, seconds, peak RSS in bytes."""
    executable = shutil.which("gpt2reg") or str(Path(sys.executable).with_name("gpt2reg"))
    return run_json([executable, *args, "--json"], f"gpt2reg {' '.join(args)}")


def run_json(command: list[str], label: str) -> tuple[dict, float, int]:
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        # wait4 rather than wait: it also gives this child's own peak resident memory.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{label} failed ({process.returncode}): {stderr.read().strip()[-1500:]}")
        text = stdout.read().strip()
        try:
            document = json.loads(text)
        except ValueError:  # a library printed before the document: it is the last line
            document = json.loads(text.splitlines()[-1])
        return document, seconds, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="gpt2")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", default=None, help="Also write the figures to this file.")
    args = parser.parse_args()

    results = []
    parent: dict[str, list[float]] = {"greedy_tokens_per_second": [], "perplexity": []}
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as scratch:
        home = ["--home", f"{scratch}/home"]
        base, _, base_peak = gpt2reg("create", "base", "--config", args.config, *home)
        preset = gpt2reg("show", base["ref"], *home)[0]["preset_path"]
        stock, _, stock_peak = run_json([sys.executable, "-c", STOCK_KERAS_HUB, preset, str(args.new_tokens)],
                                        "stock KerasHub generate")
        for label, command in ROWS:
            extra = ["--out", f"{scratch}/{label.split()[0]}-{command[2]}"] if command[0] == "export" else []
            variant, seconds, peak = gpt2reg(command[0], base["ref"], *command[1:], *extra,
                                             "--new-tokens", str(args.new_tokens), *home)
            graph, _, _ = gpt2reg("lineage", variant["ref"], *home)
            deltas = next(e for e in graph["edges"] if e["child"] == variant["ref"])["metric_deltas"]
            for name in parent:
                parent[name].append(variant["metrics"][name] - deltas[name])
            results.append({
                "variant": label, "bytes": variant["size_bytes"],
                "greedy_tokens_per_second": variant["metrics"]["greedy_tokens_per_second"],
                "perplexity": variant["metrics"]["perplexity"], "seconds_to_make": round(seconds, 1),
                "peak_rss_bytes": peak,
                "decoding": "full recompute per token" if command[0] == "export" else "key/value cache, eager loop",
            })
            print(f"{label}: done in {seconds:.0f} s", file=sys.stderr)
        results.insert(0, {
            "variant": "float32 (Keras)", "bytes": base["size_bytes"],
            "greedy_tokens_per_second": statistics.median(parent["greedy_tokens_per_second"]),
            "perplexity": statistics.median(parent["perplexity"]), "seconds_to_make": None,
            "peak_rss_bytes": base_peak, "decoding": "key/value cache, eager loop",
        })
        results.insert(1, {
            "variant": "float32 (stock KerasHub generate)", "bytes": base["size_bytes"],
            "greedy_tokens_per_second": stock["greedy_tokens_per_second"], "perplexity": results[0]["perplexity"],
            "seconds_to_make": None, "peak_rss_bytes": stock_peak, "decoding": "key/value cache, compiled",
        })
    reference = results[1]["greedy_tokens_per_second"]  # stock KerasHub float32
    print(f"\n{args.config}, batch 1, greedy, {args.new_tokens} new tokens\n")
    print("| variant | bytes on disk | greedy tokens/s | vs stock float32 | perplexity | greedy decoding | peak memory |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for row in results:
        print(f"| {row['variant']} | {row['bytes']:,} | {row['greedy_tokens_per_second']:.1f} | "
              f"{row['greedy_tokens_per_second'] / reference:.2f}x | {row['perplexity']:,.1f} | {row['decoding']} | "
              f"{row['peak_rss_bytes'] / 2**30:.1f} GiB |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"config": args.config, "new_tokens": args.new_tokens, "rows": results}, handle, indent=2)


if __name__ == "__main__":
    main()
