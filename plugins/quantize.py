"""`quantize`: a lower-precision copy of a variant, with what it costs and what it gains.

The lineage edge records, all measured in this run on this machine: bytes on
disk and parameters (the core adds both), perplexity on the same evaluation
text before and after, and batch-1 greedy tokens/s before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.configs import QUANTIZATION_CALIBRATED as CALIBRATED
from backends.configs import QUANTIZATION_MODES as MODES
from plugins.measurements import SPEED_PROMPT, keras_figures, speed_prompt
from registry.plugin_api import heldout_documents
from registry import Capability, CapabilityResult, hookimpl, option
from registry.capability import sample_generations
from registry.errors import UsageError


class Quantize(Capability):
    """A quantized copy of REF, with size, perplexity and greedy speed before and after."""

    name = "quantize"
    operation = "quantize"

    @dataclass
    class Options:
        mode: str = option(choices=MODES, required=True, help="The weights' new precision.")
        calibration: list[str] | None = option(path=True, dataset="training",
                                               help="Text to calibrate gptq and awq on (repeatable).")
        calibration_samples: int = option(32, at_least=1, help="Blocks of calibration text used.")
        eval_data: list[str] | None = option(path=True, dataset="evaluation", help="Text for the perplexity before and after "
                                                              "(default: embedded held-out text).")
        new_tokens: int = option(32, at_least=1, help="Tokens per greedy speed measurement.")
        text_field: str = option("text", help="JSONL field holding the text.")

        def __post_init__(self):
            if self.mode in CALIBRATED and not self.calibration:
                raise UsageError(f"--mode {self.mode} needs --calibration PATH (text to calibrate on)")
            if self.calibration and self.mode not in CALIBRATED:
                raise UsageError(f"--calibration applies to gptq and awq only, not to --mode {self.mode}")

    def run(self, context, options):
        mode, calibration, eval_data = options.mode, options.calibration, options.eval_data
        calibration_samples, new_tokens, text_field = options.calibration_samples, options.new_tokens, options.text_field
        from backends.configs import END_OF_TEXT_ID
        from registry.data import pack_blocks, read_texts, tokenize_documents

        variant = context.variant
        if variant.kind == "adapter":
            raise UsageError(f"{variant.ref} is a LoRA adapter; merge it first (`gpt2reg merge {variant.ref}`)")
        if variant.kind == "export":
            raise UsageError(f"{variant.ref} is an export; quantize its source {variant.parent} "
                             "(or export with --quantize)")
        already = variant.tags.get("quantization")
        if already == mode:
            raise UsageError(f"{variant.ref} is already quantized to {mode}; quantize its float parent instead")
        if already:
            raise UsageError(f"{variant.ref} is already quantized ({already}); quantize its float parent instead")
        context_length = variant.config.get("max_sequence_length", 1024)
        evaluation = heldout_documents(eval_data, text_field)
        samples = None
        if calibration:
            length = min(context_length, 256)
            blocks = pack_blocks(tokenize_documents(read_texts(calibration, text_field=text_field)), length, END_OF_TEXT_ID)
            if len(blocks) == 0:
                raise UsageError(f"--calibration text is shorter than one {length}-token block; give more text")
            samples = [list(map(int, b)) for b in blocks[:calibration_samples]]

        from backends import keras_gpt2, quantization
        from backends.tokenizer import special_tokens_rule

        prompt, new_tokens = speed_prompt(context_length, new_tokens)
        parent_preset = context.parent_preset()  # hash-checked once, loaded for each side
        parent_metrics = keras_figures(keras_gpt2.load(parent_preset), evaluation, prompt, new_tokens)
        lm = quantization.quantize(parent_preset, mode, samples)
        metrics = keras_figures(lm, evaluation, prompt, new_tokens)
        preset = context.workdir / "preset"
        keras_gpt2.save(lm, preset)
        metrics["speedup"] = metrics["greedy_tokens_per_second"] / parent_metrics["greedy_tokens_per_second"]
        from backends.decoding import resolve_runtime

        decode_runtime = resolve_runtime(lm)  # where `generate` runs this variant, and so its speed
        return CapabilityResult(
            preset_dir=preset, metrics=metrics, parent_metrics=parent_metrics,
            settings={"mode": mode, "calibration": list(calibration or []), "calibration_samples": len(samples or []),
                      "eval_data": list(eval_data or ["embedded held-out text"]), "speed_prompt": SPEED_PROMPT,
                      "new_tokens": new_tokens, "decode_runtime": decode_runtime,
                      "special_tokens": special_tokens_rule()},  # how the evaluation and calibration text became ids
            tags={"quantization": mode},
            tables=sample_generations(lm),
        )


    def report(self, outcome):
        variant = outcome.variant
        metrics = variant.metrics
        return [f"{outcome.options.mode}: {variant.size_bytes:,} bytes; perplexity {metrics['perplexity']:,.2f}; "
                f"greedy {metrics['greedy_tokens_per_second']:.1f} tokens/s ({metrics['speedup']:.2f}x the parent)"]


@hookimpl
def register_capabilities(register):
    register(Quantize)
