"""`lora`: train a LoRA adapter on a frozen base; the result is an adapter variant.

Only the adapter (its A and B factors and settings) is stored, pinned to the
base variant's content hash; loading it loads the base and applies the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.configs import LORA_TARGETS
from plugins.finetune import Finetune
from registry import hookimpl, option
from registry.errors import UsageError


class Lora(Finetune):
    """Train a LoRA adapter on REF (frozen); registers an adapter variant pinned to REF."""

    name = "lora"
    operation = "lora"
    variant_kind = "adapter"

    @dataclass
    class Options(Finetune.Options):
        lr: float = option(2e-3, above=0, help="Peak learning rate.")
        rank: int = option(8, at_least=1, help="Rank of the LoRA factors.")
        alpha: float | None = option(above=0, help="LoRA scale numerator (default: 2 × rank).")
        targets: str = option("query,value", choices=tuple(LORA_TARGETS), help="The layers that get an adapter.")
        dropout: float = option(0.0, at_least=0, below=1, help="Dropout on the adapter's input (PEFT's lora_dropout).")
        quantize_base: str | None = option(choices=("int8",), help="Train over an int8 copy of the frozen base "
                                                                    "(QLoRA-style, Keras int8).")

        def __post_init__(self):
            super().__post_init__()
            if self.quantize_base and self.precision == "fp16":
                raise UsageError("--quantize-base int8 cannot combine with --precision fp16; use bf16 or fp32")

    def adapt(self, lm, options):
        from backends import lora

        if lora.settings(lm):
            raise UsageError("this variant already carries an adapter; merge it first")
        alpha = options.alpha or 2 * options.rank
        lora.enable(lm, rank=options.rank, alpha=alpha, targets=options.targets, dropout=options.dropout,
                    base_quantization=options.quantize_base)
        trainable, total = lora.parameter_counts(lm)
        figures = {"trainable_parameters": trainable, "total_parameters": total,
                   "trainable_share": trainable / total, "parameters": trainable}
        return figures, {"alpha": alpha}

    def save(self, lm, folder):
        from backends import lora

        lora.save_adapter(lm, folder)


@hookimpl
def register_capabilities(register):
    register(Lora)
