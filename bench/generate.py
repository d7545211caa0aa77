"""Greedy generation speed: ours against stock KerasHub (and Hugging Face transformers + torch).

The `gpt2` (124M) configuration, randomly initialised (nothing is
downloaded; speed does not depend on the weights), the same weights for
every contender. Batch 1 and batch 8 (prompts of 7 to 25 tokens), greedy,
`--new-tokens` new tokens per prompt, end-of-text ignored so every row makes
all of them:

- ours: `backends.generation.generate`, what `gpt2reg generate` runs;
- stock KerasHub: `GPT2CausalLM.generate(texts, max_length=longest + new)`
  (its preprocessor adds a start token, so it gets one prompt token more);
- Hugging Face: `GPT2LMHeadModel.generate` on the same weights exported with
  `gpt2reg export --format hf`, when transformers and torch are installed
  (the optional `bench` extra).

The first call (which compiles, and for ours packs the weights) is timed on
its own; then `--repeats` calls, whose median gives the steady-state tokens/s
(new tokens of all rows over seconds).

    python bench/generate.py [--config gpt2] [--new-tokens 128] [--repeats 3] [--no-hf] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "The history of the printing press begins",
    "In a small village by the sea, the fishermen",
    "Researchers announced on Tuesday that a new method for",
    "The recipe calls for two cups of flour, a pinch of salt and",
    "When the orchestra finally took the stage after a long delay, the audience",
    "Mountains",
    "A short guide to keeping bees: first, choose a sunny spot sheltered from the wind, then",
    "Once upon a time",
]


def timed(call, repeats: int) -> dict:
    started = time.perf_counter()
    call()
    first = time.perf_counter() - started
    steady = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        steady.append(time.perf_counter() - started)
    return {"first_call_s": first, "steady_s": statistics.median(steady), "runs_s": steady}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gpt2")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face even when it is installed")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from backends import keras_gpt2
    from backends.tokenizer import encode

    lm = keras_gpt2.build(keras_gpt2.get_config(args.config), seed=0)
    hf_model = None if args.no_hf else _hf_model(lm)
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        texts = PROMPTS[:batch_size] if batch_size > 1 else PROMPTS[:1]
        ids = [encode(t) for t in texts]
        new = args.new_tokens
        total_new = new * len(ids)

        contenders = [("ours", ours_call(lm, ids, new)), ("stock KerasHub", stock_call(lm, texts, new))]
        if hf_model is not None:
            contenders.append(("HF transformers + torch", _hf_call(hf_model, ids, new)))
        for name, call in contenders:
            figures = timed(call, args.repeats)
            figures.update(contender=name, batch_size=batch_size, new_tokens_per_row=new,
                           tokens_per_s=total_new / figures["steady_s"])
            rows.append(figures)
            print(f"batch {batch_size:>2}  {name:<24} first call {figures['first_call_s']:7.2f} s   "
                  f"steady {figures['steady_s']:6.2f} s   {figures['tokens_per_s']:7.1f} tok/s", flush=True)
    summary = {}
    for batch_size in sorted({r["batch_size"] for r in rows}):
        by_name = {r["contender"]: r for r in rows if r["batch_size"] == batch_size}
        ratio = by_name["ours"]["tokens_per_s"] / by_name["stock KerasHub"]["tokens_per_s"]
        summary[f"batch_{batch_size}_ours_over_stock"] = ratio
        print(f"batch {batch_size}: ours / stock KerasHub = {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "rows": rows, **summary}, indent=2))


def ours_call(lm, ids, new, **settings):
    """`backends.generation.generate` greedy over `ids`, every row making `new` tokens; the call
    returns the results. `settings`: more generation settings (such as the runtime)."""
    from backends import generation

    def call():
        results = generation.generate(lm, ids, max_new_tokens=new, stop_at_end_of_text=False, **settings)
        assert all(len(r.token_ids) == new for r in results)
        return results

    return call


def stock_call(lm, texts, new):
    """KerasHub's own `GPT2CausalLM.generate` on the same prompts, `new` tokens past the longest."""
    from backends.tokenizer import encode

    longest = max(len(encode(t)) for t in texts) + 1  # the start token stock KerasHub adds

    def call():
        lm.generate(texts if len(texts) > 1 else texts[0], max_length=longest + new, stop_token_ids=None)

    return call


def _hf_model(lm):
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError:
        print("Hugging Face transformers + torch not installed (pip install -e '.[bench]'): skipped")
        return None
    from backends import export

    # The weights are read into memory: the folder is not needed after loading.
    with tempfile.TemporaryDirectory(prefix="gpt2reg-bench-") as folder:
        export._export_hf(lm, Path(folder))
        model = transformers.GPT2LMHeadModel.from_pretrained(folder)
    model.eval()
    return model


def _hf_call(model, ids, new, device: str = "cpu"):
    """Greedy `model.generate` over `ids`; `device`: where the model is (a torch device name)."""
    import torch

    longest = max(len(i) for i in ids)
    # Left padding, as transformers wants for batched decoder-only generation.
    input_ids = torch.zeros((len(ids), longest), dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, prompt in enumerate(ids):
        input_ids[row, longest - len(prompt):] = torch.tensor(prompt)
        mask[row, longest - len(prompt):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)

    def call():
        with torch.inference_mode():
            model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=50256)

    return call


if __name__ == "__main__":
    main()
