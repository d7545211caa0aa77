"""Perplexity scoring throughput against a bare forward pass over the same tokens.

The `gpt2` (124M) configuration, randomly initialised (nothing is
downloaded; throughput does not depend on the weights). The same batches of
token ids go through

- a forward pass: the model's compiled call to logits, nothing else;
- `backends.scoring.score`: what `gpt2reg evaluate --data` runs (padding
  masks, log-softmax over the vocabulary, gathering each target's
  log-likelihood, summing on the host).

Each is timed `--repeats` times after a warm-up call (which compiles); the
median is reported, with tokens/s over the input tokens and the ratio
scoring / forward (the goal: at least 0.9).

    python bench/evaluate.py [--config gpt2] [--batch-size 4] [--length 1024] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gpt2")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024, help="tokens per text (at most the context)")
    parser.add_argument("--batches", type=int, default=2, help="batches per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from backends import keras_gpt2, scoring

    lm = keras_gpt2.build(keras_gpt2.get_config(args.config), seed=0)
    length = min(args.length, lm.backbone.max_sequence_length)
    rng = np.random.default_rng(0)
    texts = [rng.integers(0, 50256, size=length).tolist() for _ in range(args.batch_size * args.batches)]
    tokens = len(texts) * length

    @tf.function(reduce_retracing=True)
    def forward(token_ids, padding_mask):
        return lm({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)

    batches = [np.array(texts[i : i + args.batch_size], dtype="int32") for i in range(0, len(texts), args.batch_size)]

    def run_forward():
        for batch in batches:
            forward(batch, np.ones_like(batch)).numpy()  # to the host, as scoring's result is

    def run_scoring():
        return scoring.score(lm, texts, batch_size=args.batch_size)

    timings = {}
    for label, function in (("forward pass", run_forward), ("perplexity scoring", run_scoring)):
        function()  # compiles
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            function()
            seconds.append(time.perf_counter() - started)
        timings[label] = statistics.median(seconds)

    ratio = timings["forward pass"] / timings["perplexity scoring"]
    print(f"{args.config}: {len(texts)} texts of {length} tokens, batch {args.batch_size}, "
          f"median of {args.repeats} after a warm-up")
    print(f"{'':<20} {'seconds':>9} {'tokens/s':>10}")
    for label, value in timings.items():
        print(f"{label:<20} {value:>9.2f} {tokens / value:>10.0f}")
    print(f"scoring / forward throughput: {ratio:.3f} (goal: at least 0.9)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": args.config, "texts": len(texts), "length": length, "batch_size": args.batch_size,
            "seconds": timings, "tokens_per_second": {k: tokens / v for k, v in timings.items()}, "ratio": ratio,
        }, indent=2))


if __name__ == "__main__":
    main()
