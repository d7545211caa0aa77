"""`lora`: train a LoRA adapter on a frozen base; the result is an adapter variant.

Only the adapter (its A and B factors and settings) is stored, pinned to the
base variant's content hash; loading it loads the base and applies the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from plugins.finetune import Finetune
from registry import hookimpl
from registry.errors import UsageError


class Lora(Finetune):
    name = "lora"
    operation = "lora"
    variant_kind = "adapter"

    @dataclass
    class Options(Finetune.Options):
        rank: int = 8
        alpha: float | None = None  # default: 2 × rank
        targets: str = "query,value"
        dropout: float = 0.0  # on the input of the low-rank path, as PEFT's lora_dropout
        quantize_base: str | None = None  # "int8": train over an int8 copy of the frozen base
        lr: float = 2e-3

        def __post_init__(self):
            super().__post_init__()
            from backends.configs import LORA_TARGETS

            if self.rank < 1:
                raise UsageError(f"--rank must be at least 1 (got {self.rank})")
            if self.alpha is not None and not self.alpha > 0:
                raise UsageError(f"--alpha must be greater than 0 (got {self.alpha})")
            if self.targets not in LORA_TARGETS:
                raise UsageError(f"unknown --targets {self.targets!r}; choose one of: {', '.join(LORA_TARGETS)}")
            if not 0 <= self.dropout < 1:
                raise UsageError(f"--dropout must be in [0, 1) (got {self.dropout})")
            if self.quantize_base not in (None, "int8"):
                raise UsageError(f"unknown --quantize-base {self.quantize_base!r}; Keras can train LoRA over int8 only")
            if self.quantize_base and self.precision == "fp16":
                raise UsageError("--quantize-base int8 cannot combine with --precision fp16; use bf16 or fp32")

    def adapt(self, lm, options):
        from backends import lora

        if getattr(lm, "_gpt2reg_lora", None):
            raise UsageError("this variant already carries an adapter; merge it first")
        alpha = options["alpha"] or 2 * options["rank"]
        lora.enable(lm, rank=options["rank"], alpha=alpha, targets=options["targets"], dropout=options["dropout"],
                    base_quantization=options["quantize_base"])
        options["alpha"] = alpha
        trainable, total = lora.parameter_counts(lm)
        return {"trainable_parameters": trainable, "total_parameters": total,
                "trainable_share": trainable / total, "parameters": trainable}

    def save(self, lm, folder):
        from backends import lora

        lora.save_adapter(lm, folder)


@hookimpl
def register_capabilities(register):
    register(Lora)
