"""`finetune`: full fine-tuning of every weight on text, with a held-out validation split."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from typing import Any

from registry import Capability, CapabilityResult, hookimpl
from registry.capability import sample_generations
from registry.errors import RunFailed, UsageError


# Measured on 2 CPU cores: XLA makes a `gpt2` (124M) step 19% faster (13.0 -> 10.5 s at
# sequence 256, batch 4) for 20 s more compilation; on `tiny` (3M) it gains nothing.
XLA_FROM_PARAMETERS = 100_000_000


@dataclass
class Trainee:
    """What a training capability trains (`model`), and the model that is scored and saved (`result`)."""

    model: Any
    result: Any
    figures: dict = field(default_factory=dict)  # figures to record about the setup (trainable weights, ...)


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
        grad_accum: int = 1
        seq_len: int | None = None  # default: the model's context, at most 128
        lr: float = 5e-4
        warmup_steps: int | None = None  # default: 10% of the steps
        precision: str = "fp32"
        seed: int = 0
        text_field: str = "text"
        eval_every: int = 0  # validation loss every N steps (0: only at the end)
        patience: int = 0  # stop after N evaluations without improvement (0: never)
        checkpoint_every: int = 500  # 0: no checkpoints
        resume: bool = False
        xla: bool | None = None  # compile the step with XLA; default: for models of XLA_FROM_PARAMETERS or more

        def __post_init__(self):
            from backends.configs import PRECISIONS

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
            for flag, value, least in (("--batch-size", self.batch_size, 1), ("--grad-accum", self.grad_accum, 1),
                                       ("--eval-every", self.eval_every, 0), ("--patience", self.patience, 0),
                                       ("--checkpoint-every", self.checkpoint_every, 0)):
                if value < least:
                    raise UsageError(f"{flag} must be at least {least} (got {value})")
            if self.seq_len is not None and self.seq_len < 2:
                raise UsageError(f"--seq-len must be at least 2 (got {self.seq_len})")
            # Any positive finite rate is the user's to try: one too large shows up as a
            # diverged loss, recorded as a failed run (not refused up front).
            if not (0 < self.lr < float("inf")):
                raise UsageError(f"--lr must be a positive number (got {self.lr})")
            if not 0 <= self.val_split < 1:
                raise UsageError(f"--val-split must be in [0, 1) (got {self.val_split})")
            if self.precision not in PRECISIONS:
                raise UsageError(f"unknown --precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
            if self.patience and not self.eval_every:
                raise UsageError("--patience needs --eval-every N (how often to measure the validation loss)")

    # Subclasses (LoRA, distillation) change what is trained and what is saved; the loop stays the same.
    def adapt(self, lm, options: dict) -> dict:
        """Prepare `lm` for training; returns figures to record (none for full fine-tuning)."""
        return {}

    def prepare(self, context, lm, options: dict) -> Trainee:
        """What to train, given the loaded parent `lm`: by default the parent itself, adapted."""
        return Trainee(model=lm, result=lm, figures=self.adapt(lm, options))

    def other_parents(self, context, options: dict) -> list:
        """Variants besides the parent that the result comes from, as (variant, role)."""
        return []

    def save(self, lm, folder):
        from backends import keras_gpt2

        keras_gpt2.save(lm, folder)

    def run(self, context, *, data, val_data, val_split, steps, epochs, batch_size, grad_accum, seq_len, lr,
            warmup_steps, precision, seed, text_field, eval_every, patience, checkpoint_every, resume, xla, **extra):
        from backends.configs import END_OF_TEXT_ID
        from registry.data import pack_blocks, read_texts, tokenize_documents

        context_length = context.variant.config.get("max_sequence_length", 1024)
        seq_len = seq_len or min(context_length, 128)
        if seq_len > context_length:
            raise UsageError(f"--seq-len {seq_len} is longer than the model's context of {context_length}")
        texts = read_texts(data, text_field=text_field)
        blocks = pack_blocks(tokenize_documents(texts), seq_len + 1, END_OF_TEXT_ID)
        val_texts = read_texts(val_data, text_field=text_field) if val_data else None
        if val_texts is not None:
            # Whole documents, scored as `evaluate` scores them, so the figures compare.
            validation = tokenize_documents(val_texts)
        elif val_split > 0 and len(blocks) >= 2:
            held_out = max(1, int(round(len(blocks) * val_split)))
            blocks, validation = blocks[:-held_out], [list(b) for b in blocks[-held_out:]]
        else:
            validation = None
        if patience and not validation:
            raise UsageError("--patience needs validation data: give --val-data or a --val-split above 0")
        if steps is None:
            steps = max(1, math.ceil((epochs or 1.0) * len(blocks) / (batch_size * grad_accum)))
        warmup_steps = steps // 10 if warmup_steps is None else warmup_steps
        if xla is None:
            xla = context.variant.parameters >= XLA_FROM_PARAMETERS
        settings = {
            "data": list(data), "val_data": list(val_data or []), "val_split": val_split, "steps": steps,
            "batch_size": batch_size, "grad_accum": grad_accum, "seq_len": seq_len, "lr": lr,
            "warmup_steps": warmup_steps, "precision": precision, "seed": seed, "eval_every": eval_every,
            "patience": patience, "xla": xla, "train_blocks": int(len(blocks)),
            "validation": "val_data" if val_data else ("split" if validation else "none"), **extra,
        }
        from backends.tokenizer import rule_digest, special_tokens_rule

        # A checkpoint resumes only under the rule it was trained with, where the rule changes the ids
        # (text that spells a special token); elsewhere earlier checkpoints still resume.
        fingerprint = _fingerprint(self.name, context.variant.content_hash, settings, blocks,
                                   rule_digest(texts.documents + (val_texts.documents if val_texts else [])))
        settings["special_tokens"] = special_tokens_rule()  # so runs on the same files under two rules differ
        checkpoints = context.checkpoints / fingerprint if context.checkpoints and checkpoint_every else None
        if resume and checkpoints is None:
            raise UsageError("--resume needs checkpoints; leave --checkpoint-every above 0")

        from backends import scoring, training

        plan = training.TrainingPlan(
            steps=steps, batch_size=batch_size, grad_accum=grad_accum, learning_rate=lr, warmup_steps=warmup_steps,
            seed=seed, precision=precision, checkpoint_every=checkpoint_every, eval_every=eval_every, patience=patience,
            jit_compile=xla,
        )
        policy = training.dtype_policy(precision)
        with context.strategy().scope():
            lm = context.load_model(dtype=policy)
            parent_metrics = {"perplexity": scoring.score(lm, validation).perplexity} if validation else {}
            trainee = self.prepare(context, lm, extra)
            settings.update(extra)  # what prepare() filled in (LoRA's default alpha)
            lm = trainee.result

            def on_step(step, loss, tokens_per_second, learning_rate, val_loss):
                context.progress(step=step, total=steps, loss=loss, tokens_per_second=tokens_per_second)

            report = training.train(
                trainee.model, blocks, plan, on_step=on_step, checkpoints=checkpoints, resume=resume, fingerprint=fingerprint,
                validate=(lambda: scoring.score(lm, validation).mean_nll) if validation and eval_every else None,
            )
        settings.update(device=context.device, resumed_from_step=report.resumed_from, stopped=report.stopped)
        if report.stopped == "diverged":
            if checkpoints is not None:
                shutil.rmtree(checkpoints, ignore_errors=True)
            raise RunFailed(
                f"training diverged: the loss became {report.final_loss} at step {report.diverged_at}; "
                "nothing was registered (lower --lr or use --precision fp32)",
                CapabilityResult(metrics={"diverged_at_step": report.diverged_at}, history=report.history,
                                 settings=settings),
            )
        metrics = {
            "train_loss": report.final_loss,
            "train_tokens": report.tokens,
            "train_seconds": report.seconds,
            "tokens_per_second": report.tokens_per_second,
            "train_steps": report.steps,
            **trainee.figures,
        }
        if report.best_val_loss is not None:
            metrics.update(best_val_loss=report.best_val_loss, best_step=report.best_step)
        if validation:
            metrics["perplexity"] = scoring.score(lm, validation).perplexity
        preset = context.workdir / "preset"
        self.save(lm, preset)
        return CapabilityResult(preset_dir=preset, metrics=metrics, parent_metrics=parent_metrics,
                                history=report.history, settings=settings, tables=sample_generations(lm),
                                other_parents=self.other_parents(context, extra),
                                # Kept until the variant is committed, so a failed record can still resume.
                                discard_after_record=[checkpoints] if checkpoints is not None else [])


def _fingerprint(operation: str, parent_hash: str, settings: dict, blocks, tokenization: bytes = b"") -> str:
    """What must match for --resume to continue a checkpoint: parent weights, data and options."""
    digest = hashlib.sha256()
    digest.update(json.dumps([operation, parent_hash, settings], sort_keys=True, default=str).encode())
    digest.update(blocks.tobytes())
    digest.update(tokenization)
    return digest.hexdigest()[:20]


@hookimpl
def register_capabilities(register):
    register(Finetune)
