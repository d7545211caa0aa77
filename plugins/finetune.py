"""`finetune`: full fine-tuning of every weight on text, with a held-out validation split."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field, fields
from typing import Any

from backends.configs import PRECISIONS
from registry import Capability, CapabilityResult, hookimpl, option
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
    settings: dict = field(default_factory=dict)  # what preparing decided, kept on the lineage edge


class Finetune(Capability):
    """Fine-tune every weight of REF on text; registers the result with its lineage."""

    name = "finetune"
    operation = "finetune"
    uses_device = True

    @dataclass
    class Options:
        data: list[str] = option(default_factory=list, required=True, path=True, dataset="training",
                                 help="Text file, folder or JSONL (repeatable).")
        val_data: list[str] | None = option(path=True, dataset="validation",
                                            help="Held-out text (default: the last --val-split of --data).")
        val_split: float = option(0.1, at_least=0, below=1, help="Share of --data held out for validation.")
        steps: int | None = option(at_least=1, help="Optimiser steps (default: one epoch).")
        epochs: float | None = option(above=0, help="Passes over --data (instead of --steps).")
        batch_size: int = option(8, at_least=1, help="Blocks per micro-batch.")
        grad_accum: int = option(1, at_least=1, help="Micro-batches per update: the update of a batch N times larger.")
        seq_len: int | None = option(at_least=2, help="Tokens per block (default: context, at most 128).")
        # Any positive finite rate is the user's to try: one too large shows up as a
        # diverged loss, recorded as a failed run (not refused up front).
        lr: float = option(5e-4, above=0, help="Peak learning rate.")
        warmup_steps: int | None = option(at_least=0, help="Linear warmup (default: 10% of the steps).")
        precision: str = option("fp32", choices=tuple(PRECISIONS),
                                help="Mixed precision: bf16, or fp16 with loss scaling (GPU only).")
        seed: int = option(0, help="Seed of the initialisation, shuffling and dropout.")
        text_field: str = option("text", help="JSONL field holding the text.")
        eval_every: int = option(0, at_least=0, help="Validation loss every N steps (0: only at the end).")
        patience: int = option(0, at_least=0, help="Early stopping: stop after N evaluations without a better "
                                                   "validation loss (0: off).")
        checkpoint_every: int = option(500, at_least=0, help="Checkpoint every N steps, for --resume (0: none).")
        resume: bool = option(False, help="Continue the interrupted run with the same parent, data and options.")
        xla: bool | None = option(help="Compile the training step with XLA: slower start, faster steps "
                                       "(default: on for models of 100M parameters or more).")

        def __post_init__(self):
            if self.steps is not None and self.epochs is not None:
                raise UsageError("give --steps or --epochs, not both")
            if self.patience and not self.eval_every:
                raise UsageError("--patience needs --eval-every N (how often to measure the validation loss)")

        def operation_settings(self) -> dict:
            """What the subclass's own options add to the lineage edge (LoRA's rank, distillation's student)."""
            base = {field.name for field in fields(Finetune.Options)}
            return {field.name: getattr(self, field.name) for field in fields(self) if field.name not in base}

    # Subclasses (LoRA, distillation) change what is trained and what is saved; the loop stays the same.
    def adapt(self, lm, options) -> dict:
        """Prepare `lm` for training; returns figures to record and settings it decided (none here)."""
        return {}, {}

    def prepare(self, context, lm, options) -> Trainee:
        """What to train, given the loaded parent `lm`: by default the parent itself, adapted."""
        figures, settings = self.adapt(lm, options)
        return Trainee(model=lm, result=lm, figures=figures, settings=settings)

    def other_parents(self, context, options) -> list:
        """Variants besides the parent that the result comes from, as (variant, role)."""
        return []

    def save(self, lm, folder):
        from backends import keras_gpt2

        keras_gpt2.save(lm, folder)

    def run(self, context, options):
        return self.train(context, options)

    def report(self, outcome):
        return report_training(outcome)

    def train(self, context, options, fixed_settings: dict | None = None):
        """The training loop of every training capability; `fixed_settings` are facts a subclass found
        before training (a student's weights) that --resume must match too."""
        from backends.configs import END_OF_TEXT_ID
        from registry.data import pack_blocks, read_texts, tokenize_documents

        data, val_data, val_split, text_field = options.data, options.val_data, options.val_split, options.text_field
        steps, epochs, batch_size, grad_accum = options.steps, options.epochs, options.batch_size, options.grad_accum
        lr, warmup_steps, precision, seed, xla = options.lr, options.warmup_steps, options.precision, options.seed, options.xla
        eval_every, patience, checkpoint_every, resume = (options.eval_every, options.patience, options.checkpoint_every,
                                                          options.resume)
        context_length = context.variant.config.get("max_sequence_length", 1024)
        seq_len = options.seq_len or min(context_length, 128)
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
            "validation": "val_data" if val_data else ("split" if validation else "none"),
            **options.operation_settings(), **(fixed_settings or {}),
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
            trainee = self.prepare(context, lm, options)
            settings.update(trainee.settings)  # what prepare() decided (LoRA's default alpha)
            lm = trainee.result

            def on_step(step, loss, tokens_per_second, learning_rate, val_loss):
                # The same names as the curves in `report.history`: the core logs each point once.
                context.log_step(step, train_loss=loss, learning_rate=learning_rate,
                                 tokens_per_second=tokens_per_second, val_loss=val_loss)
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
                                other_parents=self.other_parents(context, options),
                                # Kept until the variant is committed, so a failed record can still resume.
                                discard_after_record=[checkpoints] if checkpoints is not None else [])


def _fingerprint(operation: str, parent_hash: str, settings: dict, blocks, tokenization: bytes = b"") -> str:
    """What must match for --resume to continue a checkpoint: parent weights, data and options."""
    digest = hashlib.sha256()
    digest.update(json.dumps([operation, parent_hash, settings], sort_keys=True, default=str).encode())
    digest.update(blocks.tobytes())
    digest.update(tokenization)
    return digest.hexdigest()[:20]


def report_training(outcome) -> list[str]:
    """What a training run did, in words, under the new variant's table."""
    metrics = outcome.variant.metrics
    lines = []
    if "trainable_parameters" in metrics:
        lines.append(f"trained {int(metrics['trainable_parameters']):,} of {int(metrics['total_parameters']):,} "
                     f"weights ({100 * metrics['trainable_share']:.2f}%)")
    if "teacher_perplexity" in metrics:
        lines.append(f"student: {int(metrics['parameters']):,} parameters, {metrics['parameter_compression']:.2f}x "
                     f"fewer than the teacher; held-out perplexity {metrics['perplexity']:,.2f} "
                     f"against the teacher's {metrics['teacher_perplexity']:,.2f}")
    if "tokens_per_second" in metrics:
        lines.append(f"{int(metrics['train_steps'])} steps, {metrics['tokens_per_second']:,.0f} tokens/s")
    return lines


@hookimpl
def register_capabilities(register):
    register(Finetune)
