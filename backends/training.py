"""Training a KerasHub GPT-2 on packed token blocks: the loop shared by full fine-tuning and LoRA.

Blocks are `seq_len + 1` token ids each (documents joined with the
end-of-text token and cut into equal blocks); the model learns to predict
block[1:] from block[:-1]. AdamW, linear warmup then cosine decay, global
gradient-norm clipping, gradient accumulation, mixed precision.

One Keras "epoch" is one optimiser update (`grad_accum` micro-batches), so
Keras's per-epoch loss is exactly the loss of that update, the callbacks see
every update, and resuming is `initial_epoch=step`. The order of the blocks
is a pure function of the seed and the step, so a resumed run reads exactly
the batches the uninterrupted one would have read; a checkpoint holds every
model variable (random-seed state included) and every optimiser variable.

Example:
    >>> from backends import keras_gpt2, training
    >>> lm = keras_gpt2.build(keras_gpt2.get_config("tiny"))
    >>> plan = training.TrainingPlan(steps=10, batch_size=4, learning_rate=1e-3)
    >>> training.train(lm, blocks, plan)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from backends.configs import PRECISIONS
from registry.errors import UsageError

import keras  # noqa: E402

CHECKPOINT_PREFIX = "step-"
CHECKPOINT_FILES = ("model.npz", "optimizer.npz")


@dataclass(frozen=True)
class TrainingPlan:
    steps: int  # optimiser updates
    batch_size: int  # blocks per micro-batch; an update sees batch_size * grad_accum blocks
    learning_rate: float
    warmup_steps: int = 0
    grad_accum: int = 1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    seed: int = 0
    precision: str = "fp32"
    checkpoint_every: int = 0  # 0: no checkpoints
    eval_every: int = 0  # 0: no validation during training
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    jit_compile: bool = False  # XLA


@dataclass
class TrainingReport:
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    resumed_from: int = 0
    stopped: str = "completed"  # completed | early_stopping | diverged
    diverged_at: int | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


# step, loss, tokens/s, learning rate, validation loss (or None)
StepCallback = Callable[[int, float, float, float, "float | None"], None]


def dtype_policy(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp16":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            raise UsageError("--precision fp16 needs a GPU (float16 on CPU is emulated and slow); use bf16 or fp32")
    return PRECISIONS[precision]


class PerUpdate(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule over optimiser updates, called with the count of micro-batches.

    Keras 3.15 calls a schedule with the raw micro-batch counter even under
    gradient accumulation (its `iterations` property is divided, the schedule's
    argument is not), which would run warmup and decay `grad_accum` times too fast.
    """

    def __init__(self, schedule, grad_accum: int):
        self.schedule = schedule
        self.grad_accum = grad_accum

    def __call__(self, micro_step):
        return self.schedule(keras.ops.floor_divide(micro_step, self.grad_accum))

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "grad_accum": self.grad_accum}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["grad_accum"])


def learning_rate_schedule(learning_rate: float, steps: int, warmup_steps: int, grad_accum: int = 1):
    warmup_steps = min(warmup_steps, max(steps - 1, 0))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=max(steps - warmup_steps, 1),
        alpha=0.1,
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    return PerUpdate(schedule, grad_accum) if grad_accum > 1 else schedule


def block_order(num_blocks: int, count: int, seed: int) -> np.ndarray:
    """The first `count` block indices of the run: a fresh permutation per pass over the data."""
    passes = math.ceil(count / num_blocks)
    order = [np.random.default_rng([seed, epoch]).permutation(num_blocks) for epoch in range(passes)]
    return np.concatenate(order)[:count].astype("int32")


def _dataset(blocks: np.ndarray, plan: TrainingPlan, first_step: int):
    import tensorflow as tf

    micro_steps = plan.steps * plan.grad_accum
    order = block_order(len(blocks), micro_steps * plan.batch_size, plan.seed)
    order = order[first_step * plan.grad_accum * plan.batch_size:]
    # The token ids live in the graph once; each batch is a gather, never a re-tokenization.
    inputs = tf.constant(blocks[:, :-1])
    targets = tf.constant(blocks[:, 1:])

    def gather(indices):
        token_ids = tf.gather(inputs, indices)
        # padding_mask as int32: a bool mask breaks MirroredStrategy's AddN in fit().
        return {"token_ids": token_ids, "padding_mask": tf.ones_like(token_ids)}, tf.gather(targets, indices)

    return (
        tf.data.Dataset.from_tensor_slices(order)
        .batch(plan.batch_size, drop_remainder=True)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(2)
    )


def _optimizer(plan: TrainingPlan):
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(plan.learning_rate, plan.steps, plan.warmup_steps, plan.grad_accum),
        weight_decay=plan.weight_decay,
        global_clipnorm=plan.clip_norm,
        # Keras averages the accumulated gradients and clips the average: the same
        # update as one grad_accum-times larger batch (with the schedule fixed above).
        gradient_accumulation_steps=plan.grad_accum if plan.grad_accum > 1 else None,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "layer_norm"])
    if plan.precision == "fp16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _current_learning_rate(optimizer) -> float:
    # The rate the last update used: `learning_rate` evaluates the schedule at the current counter.
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = inner._learning_rate
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(schedule(inner._iterations - 1))
    return float(inner.learning_rate)


# ---------------------------------------------------------------- checkpoints


def latest_checkpoint(folder: Path | None) -> Path | None:
    if folder is None or not folder.is_dir():
        return None
    complete = [p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / "state.json").is_file()]
    return max(complete, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def _save_checkpoint(folder: Path, lm, optimizer, state: dict) -> None:
    """Write step-N/ beside the previous checkpoint, then drop the previous one.

    state.json is written last and the folder only then gets its final name,
    so a checkpoint without state.json (a kill mid-write) is never read.
    """
    step = state["step"]
    final = folder / f"{CHECKPOINT_PREFIX}{step:08d}"
    partial = folder / f".partial-{step:08d}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    np.savez(partial / "model.npz", *[keras.ops.convert_to_numpy(v) for v in lm.variables])
    np.savez(partial / "optimizer.npz", *[keras.ops.convert_to_numpy(v) for v in optimizer.variables])
    # The files' digests go in state.json, so a damaged checkpoint is refused before it is read.
    hashes = {name: _file_digest(partial / name) for name in CHECKPOINT_FILES}
    (partial / "state.json").write_text(json.dumps({**state, "sha256": hashes}), encoding="utf-8")
    for file in partial.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(partial, final)
    for older in folder.iterdir():
        if older != final and older.name.startswith(CHECKPOINT_PREFIX):
            shutil.rmtree(older, ignore_errors=True)


def _file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(checkpoint: Path) -> dict:
    """The checkpoint's state, once every file matches the digest recorded when it was written."""
    damaged = UsageError(
        f"checkpoint {checkpoint} is damaged (its files do not match their recorded sha256); "
        "run without --resume to start over, or `gpt2reg doctor --repair` to remove it"
    )
    try:
        state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
        recorded = state.pop("sha256")
        if any(_file_digest(checkpoint / name) != recorded[name] for name in CHECKPOINT_FILES):
            raise damaged
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise damaged from None
    return state


def _restore_checkpoint(checkpoint: Path, state: dict, lm, optimizer) -> dict:
    """Assign a verified checkpoint's values (see `verify_checkpoint`) to the model and optimiser."""
    for variables, file in ((lm.variables, "model.npz"), (optimizer.variables, "optimizer.npz")):
        with np.load(checkpoint / file, allow_pickle=False) as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        if len(values) != len(variables) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values)):
            raise UsageError(f"checkpoint {checkpoint} was written by another model or optimiser; run without --resume")
        for variable, value in zip(variables, values):
            variable.assign(value)
    return state


# ---------------------------------------------------------------- the loop


def _fit_multiworker(lm) -> None:
    """Two Keras 3.15 defects of `fit` under MultiWorkerMirroredStrategy, worked around.

    - Before training it reduces one batch across workers to pre-build the model,
      which fails on a dict of inputs ("Attempt to convert a value ({'token_ids':
      PerReplica...}) to a Tensor"). The model and optimiser are built already, so
      the build is left to the traced step, as without a strategy.
    - After each step it reduces the logged scalars with `reduce("MEAN", axis=0)`,
      which fails on 0-d values ("Invalid reduction dimension 0", tensorflow#72388).
      The step's logs are given one axis, so the reduction averages the replicas.
    """
    import tensorflow as tf

    if not isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return
    lm._distribute_strategy = None
    plain_step = lm.train_step

    def train_step(data):
        return {name: tf.reshape(value, [1]) for name, value in plain_step(data).items()}

    lm.train_step = train_step


def _seed_dropout(lm, seed: int) -> None:
    """Start every dropout random stream from `seed`.

    A loaded model's seed generators start from whatever the process's random
    state was at load time; without this, two runs with the same --seed would
    drop different units. (A resumed run then restores the streams' states.)
    """
    states = [v for v in lm.variables if v.path.endswith("seed_generator_state")]
    for index, state in enumerate(states):
        state.assign(np.array([seed * 100_003 + index, 0], dtype=state.dtype))


class _UpdateReporter(keras.callbacks.Callback):
    """Per update: the loss, NaN stop, validation and early stopping, checkpoints."""

    def __init__(self, plan, tokens_per_step, on_step, validate, checkpoints, state):
        super().__init__()
        self.plan = plan
        self.tokens_per_step = tokens_per_step
        self.on_step = on_step
        self.validate = validate
        self.checkpoints = checkpoints
        self.state = state  # history, best validation loss, evaluations without improvement
        self.last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        now = time.perf_counter()
        loss = float(np.reshape(logs["loss"], ()))
        speed = self.tokens_per_step / max(now - self.last, 1e-9)
        rate = _current_learning_rate(self.model.optimizer)
        history = self.state["history"]
        history.setdefault("train_loss", []).append((step, loss))
        history.setdefault("learning_rate", []).append((step, rate))
        history.setdefault("tokens_per_second", []).append((step, speed))
        self.state["step"] = step
        if not math.isfinite(loss):
            self.state["diverged_at"] = step
            self.model.stop_training = True
            return
        val_loss = None
        if self.validate is not None and self.plan.eval_every and (step % self.plan.eval_every == 0 or step == self.plan.steps):
            val_loss = float(self.validate())
            history.setdefault("val_loss", []).append((step, val_loss))
            best = self.state.get("best_val_loss")
            if best is None or val_loss < best:
                self.state.update(best_val_loss=val_loss, best_step=step, stale=0)
            else:
                self.state["stale"] = self.state.get("stale", 0) + 1
                if self.plan.patience and self.state["stale"] >= self.plan.patience:
                    self.state["early_stopped"] = step
                    self.model.stop_training = True
        if self.checkpoints is not None and self.plan.checkpoint_every and step % self.plan.checkpoint_every == 0 \
                and step < self.plan.steps and not self.model.stop_training:
            _save_checkpoint(self.checkpoints, self.model, self.model.optimizer, self.state)
        if self.on_step is not None:
            self.on_step(step, loss, speed, rate, val_loss)
        self.last = time.perf_counter()


def train(
    lm,
    blocks: np.ndarray,
    plan: TrainingPlan,
    *,
    on_step: StepCallback | None = None,
    validate: Callable[[], float] | None = None,
    checkpoints: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
) -> TrainingReport:
    """Train `lm` (loaded under the strategy's scope and the plan's dtype policy) on `blocks`.

    `validate()` returns the validation loss (mean NLL); `checkpoints` is the
    folder for this run's checkpoints, and `fingerprint` names what must match
    for `resume` to continue from one.
    """
    blocks = np.asarray(blocks, dtype="int32")
    if len(blocks) == 0:
        raise UsageError("no training blocks: give more text or a shorter --seq-len")
    keras.utils.set_random_seed(plan.seed)
    _seed_dropout(lm, plan.seed)
    optimizer = _optimizer(plan)
    lm.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        # Off by default. Measured on 2 CPU cores (tiny model): XLA adds 6 s of
        # compilation to the first step and saves nothing per step (0.75 s both ways).
        jit_compile=plan.jit_compile,
    )
    optimizer.build(lm.trainable_variables)
    state: dict = {"step": 0, "history": {}, "fingerprint": fingerprint, "plan": asdict(plan)}
    first_step = 0
    if resume:
        checkpoint = latest_checkpoint(checkpoints)
        if checkpoint is None:
            raise UsageError("--resume: no checkpoint for this run (same parent, data and options); run without --resume")
        saved = verify_checkpoint(checkpoint)
        if saved.get("fingerprint") != fingerprint:
            raise UsageError(f"--resume: checkpoint {checkpoint.name} belongs to another run; run without --resume")
        state = _restore_checkpoint(checkpoint, saved, lm, optimizer)
        state["history"] = {k: [tuple(p) for p in v] for k, v in state["history"].items()}
        first_step = state["step"]
    elif checkpoints is not None and checkpoints.exists():
        shutil.rmtree(checkpoints)  # an older interrupted run with the same settings: start over
    tokens_per_step = plan.batch_size * plan.grad_accum * (blocks.shape[1] - 1)
    reporter = _UpdateReporter(plan, tokens_per_step, on_step, validate, checkpoints, state)
    _fit_multiworker(lm)
    # The data is already token ids: KerasHub's preprocessor would tokenize it again.
    # (A Distiller has no preprocessor of its own: its teacher and student are called on ids.)
    preprocessor = getattr(lm, "preprocessor", None)
    if preprocessor is not None:
        lm.preprocessor = None
    started = time.perf_counter()
    try:
        if first_step < plan.steps:
            with warnings.catch_warnings():
                # The order is shuffled above; Keras warns that its own shuffle flag is unused.
                warnings.filterwarnings("ignore", message=".*shuffle=True.*")
                lm.fit(
                    _dataset(blocks, plan, first_step),
                    epochs=plan.steps,
                    initial_epoch=first_step,
                    steps_per_epoch=plan.grad_accum,
                    verbose=0,
                    callbacks=[reporter],
                )
    finally:
        if preprocessor is not None:
            lm.preprocessor = preprocessor
        # Training changed the weights: a decoder built before it would generate with the old ones.
        from backends import scoring

        scoring.forget_compiled(lm)
    seconds = time.perf_counter() - started
    done = state["step"] - first_step
    losses = state["history"].get("train_loss", [])
    return TrainingReport(
        steps=state["step"],
        tokens=done * tokens_per_step,
        seconds=seconds,
        final_loss=losses[-1][1] if losses else float("nan"),
        resumed_from=first_step,
        stopped="diverged" if state.get("diverged_at") else ("early_stopping" if state.get("early_stopped") else "completed"),
        diverged_at=state.get("diverged_at"),
        best_val_loss=state.get("best_val_loss"),
        best_step=state.get("best_step"),
        history=state["history"],
    )
