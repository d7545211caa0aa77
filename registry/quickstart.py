"""`gpt2reg quickstart`: the whole pipeline on the embedded default, offline.

create (tiny GPT-2, real BPE) -> evaluate -> finetune on the Python
documentation -> LoRA adapter -> merge -> int8 quantization -> distillation
into a student of half the layers -> evaluation on a word-order task drawn
from the held-out text, every step a registered variant with lineage and held-out
perplexity; then a comparison of the family, the lineage tree with perplexity
and size, and how to open the MLflow UI.
"""

from __future__ import annotations

import time
from typing import Callable

from registry import corpus

DEFAULT_STEPS = 150  # full fine-tuning; the LoRA step takes half as many
MIN_HELDOUT_TOKENS = 500  # below this a perplexity says little and the word-order task has no examples


def run_quickstart(reg, *, name: str = "quickstart", steps: int | None = None, heldout_tokens: int | None = None,
                   say: Callable[[str], None] | None = None) -> dict:
    from registry.errors import UsageError

    if heldout_tokens is not None and heldout_tokens < MIN_HELDOUT_TOKENS:
        raise UsageError(f"--heldout-tokens must be at least {MIN_HELDOUT_TOKENS} (got {heldout_tokens}); "
                         "leave it out to score all the held-out text")
    show_tree = say is not None
    say = say or (lambda message: None)
    started = time.perf_counter()
    reg.init()
    data_dir = reg.home.path / "quickstart-data"
    train_file, heldout_file, origin = corpus.write_splits(data_dir, heldout_tokens=heldout_tokens)
    say(f"corpus: {origin}; training text {train_file}, held-out text {heldout_file}")

    def evaluate(variant):
        return reg.record_evaluation(variant, reg.run("evaluate", variant, data=[str(heldout_file)]))

    say("1/8 create: a tiny GPT-2 (2 layers, 64 wide, 50,257-token BPE), random weights")
    base = evaluate(reg.create(name, config="tiny", seed=0))
    say(f"    {base.ref}: held-out perplexity {base.metrics['perplexity']:,.1f}")

    steps = steps or DEFAULT_STEPS
    say(f"2/8 finetune: {steps} steps on the training text")
    tuned = reg.run("finetune", base, name=f"{name}-finetune", data=[str(train_file)],
                    val_data=[str(heldout_file)], steps=steps, batch_size=8, lr=3e-3, seed=0)
    # finetune measured the held-out perplexity of parent and child already (val_data).
    say(f"    {tuned.ref}: held-out perplexity {tuned.metrics['perplexity']:,.1f}")

    lora_steps = max(steps // 2, 1)
    say(f"3/8 lora: a rank-8 adapter on {tuned.ref}, {lora_steps} steps")
    adapter = reg.run("lora", tuned, name=f"{name}-lora", data=[str(train_file)], val_data=[str(heldout_file)],
                      rank=8, steps=lora_steps, batch_size=8, lr=1e-2, seed=0)
    say(f"    {adapter.ref}: held-out perplexity {adapter.metrics['perplexity']:,.1f}, "
        f"{int(adapter.metrics['trainable_parameters']):,} trained weights, {adapter.size_bytes:,} bytes stored")

    say(f"4/8 merge: fold {adapter.ref} into its base")
    merged = evaluate(reg.run("merge", adapter, name=f"{name}-merged"))
    say(f"    {merged.ref}: held-out perplexity {merged.metrics['perplexity']:,.1f}")

    say(f"5/8 quantize: {merged.ref} to int8 weights")
    quantized = reg.run("quantize", merged, name=f"{name}-int8", mode="int8", eval_data=[str(heldout_file)],
                        new_tokens=16)
    say(f"    {quantized.ref}: held-out perplexity {quantized.metrics['perplexity']:,.1f}, "
        f"{quantized.size_bytes:,} bytes against {merged.size_bytes:,}, "
        f"greedy {quantized.metrics['speedup']:.2f}x the float32 speed")

    distill_steps = max(steps // 2, 1)
    say(f"6/8 distill: {merged.ref} teaches a student of half its layers, {distill_steps} steps")
    student = reg.run("distill", merged, name=f"{name}-student", data=[str(train_file)], val_data=[str(heldout_file)],
                      steps=distill_steps, batch_size=8, seq_len=64, lr=3e-3, temperature=2.0, alpha=0.5, seed=0)
    say(f"    {student.ref}: held-out perplexity {student.metrics['perplexity']:,.1f} (teacher "
        f"{student.metrics['teacher_perplexity']:,.1f}), {student.parameters:,} parameters against {merged.parameters:,}")

    task_file = corpus.write_continuation_task(data_dir / "heldout-word-order.jsonl", heldout_file)
    say(f"7/8 evaluate: held-out perplexity and bits per byte, and a word-order task from the held-out text "
        f"({task_file.name}: which of 4 orderings of the next 8 words is the real one; chance 25%)")
    for variant in (base, merged, student):
        result = reg.run("evaluate", variant, task=str(task_file), task_name="word_order", data=[str(heldout_file)])
        reg.record_evaluation(variant, result)
        say(f"    {variant.ref}: word-order accuracy {result.output['accuracy']:.0%}, "
            f"{result.output['bits_per_byte']:.3f} bits per byte")
    base, merged, student = reg.get(base.ref), reg.get(merged.ref), reg.get(student.ref)
    comparison = reg.compare([base, tuned, merged, quantized, student])
    say(f"    comparison chart logged to MLflow: {comparison['chart_uri']}")

    say("8/8 lineage")
    graph = reg.lineage_graph(merged)
    if show_tree:
        from registry.rendering import console, lineage_tree

        console().print(lineage_tree(graph))
    seconds = time.perf_counter() - started
    say(f"done in {seconds:.0f} s. Open the MLflow UI with:  gpt2reg ui --home {reg.home.path}")
    say(f"load it in Python:  from registry import Registry; Registry({str(reg.home.path)!r}).get({merged.name!r}).load()")
    return {
        "variants": [v.to_dict() for v in (base, tuned, adapter, merged, quantized, student)],
        "comparison": comparison,
        "lineage": graph.to_dict(),
        "seconds": seconds,
        "corpus": origin,
        "perplexity_ratio": tuned.metrics["perplexity"] / base.metrics["perplexity"],
    }
