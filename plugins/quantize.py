"""`quantize`: a lower-precision copy of a variant, with what it costs and what it gains.

The lineage edge records, all measured in this run on this machine: bytes on
disk and parameters (the core adds both), perplexity on the same evaluation
text before and after, and batch-1 greedy tokens/s before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.configs import QUANTIZATION_CALIBRATED as CALIBRATED
from backends.configs import QUANTIZATION_MODES as MODES
from registry import Capability, CapabilityResult, hookimpl
from registry.errors import UsageError
EVALUATION_TOKENS = 2048  # of the default evaluation text: enough for a stable perplexity, quick to score
SPEED_PROMPT = "The meaning of life is"


class Quantize(Capability):
    name = "quantize"
    operation = "quantize"

    @dataclass
    class Options:
        mode: str = ""
        calibration: list[str] | None = None
        eval_data: list[str] | None = None  # default: held-out text of the embedded corpus
        calibration_samples: int = 32
        new_tokens: int = 32  # generated per speed measurement
        text_field: str = "text"

        def __post_init__(self):
            if isinstance(self.calibration, str):
                self.calibration = [self.calibration]
            if isinstance(self.eval_data, str):
                self.eval_data = [self.eval_data]
            if self.mode not in MODES:
                raise UsageError(f"unknown --mode {self.mode!r}; choose one of: {', '.join(MODES)}")
            if self.mode in CALIBRATED and not self.calibration:
                raise UsageError(f"--mode {self.mode} needs --calibration PATH (text to calibrate on)")
            if self.calibration and self.mode not in CALIBRATED:
                raise UsageError(f"--calibration applies to gptq and awq only, not to --mode {self.mode}")
            if self.calibration_samples < 1 or self.new_tokens < 1:
                raise UsageError("--calibration-samples and --new-tokens must be at least 1")

    def run(self, context, *, mode, calibration, eval_data, calibration_samples, new_tokens, text_field):
        from backends.configs import END_OF_TEXT_ID
        from backends.tokenizer import encode
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
        evaluation = evaluation_documents(eval_data, text_field)
        samples = None
        if calibration:
            length = min(context_length, 256)
            blocks = pack_blocks(tokenize_documents(read_texts(calibration, text_field=text_field)), length, END_OF_TEXT_ID)
            if len(blocks) == 0:
                raise UsageError(f"--calibration text is shorter than one {length}-token block; give more text")
            samples = [list(map(int, b)) for b in blocks[:calibration_samples]]

        from backends import keras_gpt2, quantization, scoring

        prompt = encode(SPEED_PROMPT)
        new_tokens = min(new_tokens, context_length - len(prompt))
        parent_preset = context.parent_preset()  # hash-checked once, loaded for each side
        parent = keras_gpt2.load(parent_preset)
        parent_metrics = {
            "perplexity": scoring.score(parent, evaluation).perplexity,
            "greedy_tokens_per_second": quantization.greedy_tokens_per_second(parent, prompt, new_tokens),
        }
        del parent
        lm = quantization.quantize(parent_preset, mode, samples)
        metrics = {
            "perplexity": scoring.score(lm, evaluation).perplexity,
            "greedy_tokens_per_second": quantization.greedy_tokens_per_second(lm, prompt, new_tokens),
        }
        preset = context.workdir / "preset"
        keras_gpt2.save(lm, preset)
        metrics["speedup"] = metrics["greedy_tokens_per_second"] / parent_metrics["greedy_tokens_per_second"]
        return CapabilityResult(
            preset_dir=preset, metrics=metrics, parent_metrics=parent_metrics,
            settings={"mode": mode, "calibration": list(calibration or []), "calibration_samples": len(samples or []),
                      "eval_data": list(eval_data or ["embedded held-out text"]), "speed_prompt": SPEED_PROMPT,
                      "new_tokens": new_tokens},
            tags={"quantization": mode},
        )


def evaluation_documents(eval_data, text_field) -> list[list[int]]:
    from registry.data import read_texts, tokenize_documents

    if eval_data:
        return tokenize_documents(read_texts(eval_data, text_field=text_field))
    from backends.tokenizer import encode
    from registry.corpus import documents

    texts, _ = documents()
    held_out = "\n\n".join(texts[::10])
    return [encode(held_out)[:EVALUATION_TOKENS]]


@hookimpl
def register_capabilities(register):
    register(Quantize)
