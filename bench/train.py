"""Training throughput on this machine: full fine-tuning and LoRA, against PyTorch.

The `gpt2` (124M) configuration, randomly initialised (nothing is downloaded),
sequence 256, batch 4, float32, AdamW. Step times are medians over the steps
after the first (the first one traces and builds). Where PyTorch and
transformers are installed (`pip install -e ".[bench]"`), the same full
fine-tuning step runs in a plain PyTorch loop in the same run.

    python bench/train.py [--steps 6] [--config gpt2] [--seq-len 256] [--batch-size 4] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def blocks_for(count: int, seq_len: int, seed: int = 0) -> np.ndarray:
    from backends.configs import GPT2_VOCABULARY_SIZE

    return np.random.default_rng(seed).integers(0, GPT2_VOCABULARY_SIZE - 1, size=(count, seq_len + 1)).astype("int32")


def keras_step_seconds(config: dict, blocks: np.ndarray, *, steps: int, batch_size: int, precision: str,
                       lora_rank: int | None, jit_compile: bool = False) -> tuple[float, dict]:
    from backends import keras_gpt2, lora, training

    policy = training.dtype_policy(precision)
    lm = keras_gpt2.build(config, seed=0)
    if policy != "float32":
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            keras_gpt2.save(lm, folder)
            lm = keras_gpt2.load(folder, dtype=policy)
    extra = {}
    if lora_rank:
        lora.enable(lm, rank=lora_rank, alpha=2 * lora_rank, targets="query,value")
        trainable, total = lora.parameter_counts(lm)
        extra = {"trainable_parameters": trainable, "total_parameters": total}
    stamps: list[float] = []
    plan = training.TrainingPlan(steps=steps, batch_size=batch_size, learning_rate=1e-4, precision=precision,
                                 jit_compile=jit_compile)
    started = time.perf_counter()
    training.train(lm, blocks, plan, on_step=lambda *_: stamps.append(time.perf_counter()))
    durations = np.diff([started, *stamps])
    extra["first_step_seconds"] = float(durations[0])
    return statistics.median(durations[1:]), extra


def torch_step_seconds(blocks: np.ndarray, *, steps: int, batch_size: int, config: dict | None = None,
                       device: str = "cpu") -> tuple[float, dict]:
    """The same full fine-tuning step in plain PyTorch; `config`: a `backends.configs` shape
    (default: gpt2), `device`: a torch device name."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if config is None:
        shape = GPT2Config()  # the gpt2 shape: 12 layers, 768 wide, dropout 0.1
    else:
        shape = GPT2Config(vocab_size=config["vocabulary_size"], n_positions=config["max_sequence_length"],
                           n_embd=config["hidden_dim"], n_layer=config["num_layers"], n_head=config["num_heads"],
                           n_inner=config["intermediate_dim"], resid_pdrop=config["dropout"],
                           embd_pdrop=config["dropout"], attn_pdrop=config["dropout"])
    model = GPT2LMHeadModel(shape).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    data = torch.from_numpy(blocks.astype("int64")).to(device)
    durations = []
    for step in range(steps):
        batch = data[(step * batch_size) % len(data):][:batch_size]
        started = time.perf_counter()
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device != "cpu":
            torch.cuda.synchronize()  # the step's kernels run asynchronously on a GPU
        durations.append(time.perf_counter() - started)
    return statistics.median(durations[1:]), {"torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="gpt2")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--xla", action="store_true", help="Compile the Keras steps with XLA.")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    from backends.configs import get_config

    config = get_config(args.config)
    blocks = blocks_for(args.steps * args.batch_size, args.seq_len)
    tokens = args.batch_size * args.seq_len
    results = {"config": args.config, "seq_len": args.seq_len, "batch_size": args.batch_size,
               "precision": args.precision, "steps": args.steps, "xla": args.xla}
    full, _ = keras_step_seconds(config, blocks, steps=args.steps, batch_size=args.batch_size,
                                 precision=args.precision, lora_rank=None, jit_compile=args.xla)
    low_rank, counts = keras_step_seconds(config, blocks, steps=args.steps, batch_size=args.batch_size,
                                          precision=args.precision, lora_rank=args.rank, jit_compile=args.xla)
    results["full"] = {"step_seconds": full, "tokens_per_second": tokens / full}
    results["lora"] = {"step_seconds": low_rank, "tokens_per_second": tokens / low_rank, "rank": args.rank, **counts}
    results["lora_to_full_step_time"] = low_rank / full
    if not args.no_torch:
        try:
            torch_full, info = torch_step_seconds(blocks, steps=args.steps, batch_size=args.batch_size, config=config)
        except ImportError:
            results["torch"] = None
        else:
            results["torch"] = {"step_seconds": torch_full, "tokens_per_second": tokens / torch_full, **info}
            results["full_to_torch_tokens_per_second"] = (tokens / full) / (tokens / torch_full)

    print(f"{args.config}, sequence {args.seq_len}, batch {args.batch_size}, {args.precision}")
    print(f"  full fine-tuning   {results['full']['step_seconds']:7.2f} s/step  {results['full']['tokens_per_second']:8.1f} tokens/s")
    print(f"  LoRA rank {args.rank:<3}       {low_rank:7.2f} s/step  {tokens / low_rank:8.1f} tokens/s  "
          f"({counts['trainable_parameters']:,} of {counts['total_parameters']:,} weights trained; "
          f"{results['lora_to_full_step_time']:.2f}x the full step time)")
    if results.get("torch"):
        print(f"  PyTorch full       {results['torch']['step_seconds']:7.2f} s/step  "
              f"{results['torch']['tokens_per_second']:8.1f} tokens/s  (torch {results['torch']['torch']})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
