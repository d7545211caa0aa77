"""`finetune`: full fine-tuning of every weight on text, with a held-out validation split."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from registry import Capability, CapabilityResult, hookimpl
from registry.errors import UsageError


class Finetune(Capability):
    name = "finetune"
    operation = "finetune"

    @dataclass
    class Options:
        data: list[str] = field(default_factory=list)
        val_data: list[str] | None = None
        val_split: float = 0.1
        steps: int | None = None
        epochs: float | None = None
        batch_size: int = 8
        seq_len: int | None = None  # default: the model's context, at most 128
        lr: float = 5e-4
        warmup_steps: int | None = None  # default: 10% of the steps
        seed: int = 0
        text_field: str = "text"

        def __post_init__(self):
            if isinstance(self.data, str):
                self.data = [self.data]
            if isinstance(self.val_data, str):
                self.val_data = [self.val_data]
            if self.steps is not None and self.epochs is not None:
                raise UsageError("give --steps or --epochs, not both")
            if self.steps is not None and self.steps < 1:
                raise UsageError(f"--steps must be at least 1 (got {self.steps})")
            if self.epochs is not None and not self.epochs > 0:
                raise UsageError(f"--epochs must be greater than 0 (got {self.epochs})")
            if self.batch_size < 1:
                raise UsageError(f"--batch-size must be at least 1 (got {self.batch_size})")
            if self.seq_len is not None and self.seq_len < 2:
                raise UsageError(f"--seq-len must be at least 2 (got {self.seq_len})")
            if not 0 < self.lr < 1:
                raise UsageError(f"--lr must be in (0, 1) (got {self.lr})")
            if not 0 <= self.val_split < 1:
                raise UsageError(f"--val-split must be in [0, 1) (got {self.val_split})")

    # Subclasses (LoRA) change what is trained and what is saved; the loop stays the same.
    def adapt(self, lm, options: dict) -> dict:
        """Prepare `lm` for training; returns figures to record (none for full fine-tuning)."""
        return {}

    def save(self, lm, folder):
        from backends import keras_gpt2

        keras_gpt2.save(lm, folder)

    def run(self, context, *, data, val_data, val_split, steps, epochs, batch_size, seq_len, lr,
            warmup_steps, seed, text_field, **extra):
        from backends.configs import END_OF_TEXT_ID
        from registry.data import pack_blocks, read_texts, tokenize_documents

        context_length = context.variant.config.get("max_sequence_length", 1024)
        seq_len = seq_len or min(context_length, 128)
        if seq_len > context_length:
            raise UsageError(f"--seq-len {seq_len} is longer than the model's context of {context_length}")
        blocks = pack_blocks(tokenize_documents(read_texts(data, text_field=text_field)), seq_len + 1, END_OF_TEXT_ID)
        if val_data:
            # Whole documents, scored as `evaluate` scores them, so the figures compare.
            validation = tokenize_documents(read_texts(val_data, text_field=text_field))
        elif val_split > 0 and len(blocks) >= 2:
            held_out = max(1, int(round(len(blocks) * val_split)))
            blocks, validation = blocks[:-held_out], [list(b) for b in blocks[-held_out:]]
        else:
            validation = None
        if steps is None:
            steps = max(1, math.ceil((epochs or 1.0) * len(blocks) / batch_size))
        warmup_steps = steps // 10 if warmup_steps is None else warmup_steps

        from backends import scoring, training

        with context.strategy().scope():
            lm = context.load_model()
            parent_metrics = {"perplexity": scoring.score(lm, validation).perplexity} if validation else {}
            adapted = self.adapt(lm, extra)
            history: dict[str, list[tuple[int, float]]] = {"train_loss": [], "learning_rate": [], "tokens_per_second": []}

            def on_step(step, loss, tokens_per_second, learning_rate):
                history["train_loss"].append((step, loss))
                history["learning_rate"].append((step, learning_rate))
                history["tokens_per_second"].append((step, tokens_per_second))
                context.progress(step=step, total=steps, loss=loss, tokens_per_second=tokens_per_second)

            report = training.train(
                lm, blocks, steps=steps, batch_size=batch_size, learning_rate=lr,
                warmup_steps=warmup_steps, seed=seed, on_step=on_step,
            )
        if not math.isfinite(report.final_loss):
            bad_step = next(step for step, loss in history["train_loss"] if not math.isfinite(loss))
            raise UsageError(f"training diverged: the loss became {report.final_loss} at step {bad_step}; lower --lr")
        metrics = {
            "train_loss": report.final_loss,
            "train_tokens": report.tokens,
            "train_seconds": report.seconds,
            "tokens_per_second": report.tokens_per_second,
            **adapted,
        }
        if validation:
            metrics["perplexity"] = scoring.score(lm, validation).perplexity
        preset = context.workdir / "preset"
        self.save(lm, preset)
        return CapabilityResult(
            preset_dir=preset,
            metrics=metrics,
            parent_metrics=parent_metrics,
            history=history,
            settings={
                "data": list(data), "val_data": list(val_data or []), "val_split": val_split, "steps": steps,
                "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "warmup_steps": warmup_steps, "seed": seed,
                "train_blocks": int(len(blocks)), "validation": "val_data" if val_data else ("split" if validation else "none"),
                "device": context.device, **extra,
            },
        )


@hookimpl
def register_capabilities(register):
    register(Finetune)
