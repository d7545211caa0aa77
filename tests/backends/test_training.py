"""The training loop: resume equality, gradient accumulation, divergence, early stopping."""

from __future__ import annotations

import numpy as np
import pytest

from backends import keras_gpt2, training
from backends.configs import get_config

SEQ = 16


def tiny(dropout: float = 0.0):
    config = {**get_config("tiny"), "dropout": dropout}
    return keras_gpt2.build(config, seed=0)


@pytest.fixture(scope="module")
def blocks():
    rng = np.random.default_rng(0)
    # A small vocabulary slice makes a learnable signal in a few steps.
    return rng.integers(0, 400, size=(24, SEQ + 1)).astype("int32")


def weights(lm):
    return [np.array(w) for w in lm.backbone.weights]


def max_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


class Interrupt(Exception):
    pass


def interrupted_at_step_2(blocks, plan, checkpoints, fingerprint):
    """Train until step 2 starts, as a killed run would (its step-1 checkpoint is on disk)."""
    def crash(step, *_):
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        training.train(tiny(), blocks, plan, checkpoints=checkpoints, fingerprint=fingerprint, on_step=crash)


def test_resume_after_an_interruption_ends_with_the_weights_of_an_uninterrupted_run(blocks, tmp_path):
    plan = training.TrainingPlan(steps=6, batch_size=4, learning_rate=3e-3, warmup_steps=2, checkpoint_every=2, seed=3)
    # Dropout on: the random-seed state must be in the checkpoint too.
    straight = tiny(dropout=0.1)
    training.train(straight, blocks, plan, checkpoints=tmp_path / "straight", fingerprint="f")

    def crash_at_step_5(step, *_):
        if step == 5:
            raise Interrupt

    interrupted = tiny(dropout=0.1)
    with pytest.raises(Interrupt):
        training.train(interrupted, blocks, plan, checkpoints=tmp_path / "run", fingerprint="f", on_step=crash_at_step_5)
    assert training.latest_checkpoint(tmp_path / "run").name == "step-00000004"

    resumed = tiny(dropout=0.1)  # a new process would start from the parent's weights
    report = training.train(resumed, blocks, plan, checkpoints=tmp_path / "run", fingerprint="f", resume=True)
    assert report.resumed_from == 4 and report.steps == 6
    assert [step for step, _ in report.history["train_loss"]] == [1, 2, 3, 4, 5, 6]
    assert max_difference(weights(straight), weights(resumed)) < 1e-5
    assert max_difference(weights(straight), weights(tiny(dropout=0.1))) > 1e-3  # training moved them


def test_resume_refuses_a_checkpoint_of_other_settings(blocks, tmp_path):
    from registry.errors import UsageError

    plan = training.TrainingPlan(steps=3, batch_size=4, learning_rate=1e-3, checkpoint_every=1)
    interrupted_at_step_2(blocks, plan, tmp_path, "a")
    with pytest.raises(UsageError, match="another run"):
        training.train(tiny(), blocks, plan, checkpoints=tmp_path, fingerprint="b", resume=True)
    with pytest.raises(UsageError, match="no checkpoint"):
        training.train(tiny(), blocks, plan, checkpoints=tmp_path / "none", fingerprint="a", resume=True)


def test_resume_refuses_a_damaged_checkpoint_before_reading_it(blocks, tmp_path):
    import shutil

    from registry.errors import UsageError

    plan = training.TrainingPlan(steps=2, batch_size=4, learning_rate=1e-3, checkpoint_every=1)
    interrupted_at_step_2(blocks, plan, tmp_path / "run", "a")
    resumed = tiny()
    before = weights(resumed)
    for damage in ("truncated", "one flipped byte", "state.json unreadable"):
        folder = tmp_path / damage
        shutil.copytree(tmp_path / "run", folder)
        checkpoint = training.latest_checkpoint(folder)
        weights_file = checkpoint / "model.npz"
        data = bytearray(weights_file.read_bytes())
        if damage == "truncated":
            weights_file.write_bytes(data[: len(data) - 100])
        elif damage == "one flipped byte":
            data[len(data) // 2] ^= 0x01  # inside the arrays: numpy would load it without complaint
            weights_file.write_bytes(bytes(data))
        else:
            (checkpoint / "state.json").write_text("{not json", encoding="utf-8")
        with pytest.raises(UsageError, match="is damaged .* run without --resume") as raised:
            training.train(resumed, blocks, plan, checkpoints=folder, fingerprint="a", resume=True)
        assert "\n" not in str(raised.value), damage
        assert max_difference(before, weights(resumed)) == 0, damage  # nothing was read into the model
    # The undamaged checkpoint resumes.
    assert training.train(resumed, blocks, plan, checkpoints=tmp_path / "run", fingerprint="a", resume=True).resumed_from == 1


def test_gradient_accumulation_gives_the_update_of_a_larger_batch(blocks):
    big = tiny()
    training.train(big, blocks, training.TrainingPlan(steps=3, batch_size=8, learning_rate=3e-3, seed=1))
    accumulated = tiny()
    report = training.train(
        accumulated, blocks, training.TrainingPlan(steps=3, batch_size=2, grad_accum=4, learning_rate=3e-3, seed=1)
    )
    assert report.steps == 3 and report.tokens == 3 * 8 * SEQ
    assert max_difference(weights(big), weights(accumulated)) < 1e-5
    # Not trivially equal: a 2-block batch without accumulation moves the weights elsewhere.
    small = tiny()
    training.train(small, blocks, training.TrainingPlan(steps=3, batch_size=2, learning_rate=3e-3, seed=1))
    assert max_difference(weights(big), weights(small)) > 1e-4


def test_a_non_finite_loss_stops_at_that_step(blocks):
    lm = tiny()
    report = training.train(lm, blocks, training.TrainingPlan(steps=50, batch_size=4, learning_rate=1e6, clip_norm=1e9))
    assert report.stopped == "diverged"
    assert report.diverged_at is not None and report.steps == report.diverged_at < 50
    assert not np.isfinite(report.history["train_loss"][-1][1])


def test_early_stopping_on_validation_loss():
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 400, size=(8, SEQ + 1)).astype("int32")
    held_out = rng.integers(0, 400, size=(4, SEQ + 1)).astype("int32")
    lm = tiny()

    def validate():
        logits = np.asarray(lm({"token_ids": held_out[:, :-1], "padding_mask": np.ones_like(held_out[:, :-1])}))
        logits = logits - logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return float(-np.take_along_axis(log_probs, held_out[:, 1:, None], -1).mean())

    # Memorising 8 random blocks at a high rate: held-out random blocks stop improving quickly.
    plan = training.TrainingPlan(steps=60, batch_size=8, learning_rate=1e-2, eval_every=2, patience=2)
    report = training.train(lm, blocks, plan, validate=validate)
    assert report.stopped == "early_stopping" and report.steps < 60
    val = report.history["val_loss"]
    assert report.best_val_loss == min(v for _, v in val)
    assert all(v >= report.best_val_loss for _, v in val[-2:])


def test_bf16_training_runs_and_lowers_the_loss(blocks, tmp_path):
    import keras

    keras_gpt2.save(tiny(), tmp_path / "fp32")
    mixed = keras_gpt2.load(tmp_path / "fp32", dtype=training.dtype_policy("bf16"))
    assert mixed.backbone.dtype_policy.name == "mixed_bfloat16"
    report = training.train(mixed, blocks, training.TrainingPlan(steps=8, batch_size=8, learning_rate=1e-2, precision="bf16"))
    losses = [loss for _, loss in report.history["train_loss"]]
    assert losses[-1] < losses[0]
    assert all(w.dtype == "float32" for w in mixed.backbone.weights)  # the master weights stay float32
    assert keras.config.dtype_policy().name == "float32"  # no global state left behind
    keras_gpt2.save(mixed, tmp_path / "trained")
    assert keras_gpt2.load(tmp_path / "trained").backbone.dtype_policy.name == "float32"  # saved as a float32 model


def test_fp16_without_a_gpu_is_refused():
    from registry.errors import UsageError

    with pytest.raises(UsageError, match="needs a GPU"):
        training.dtype_policy("fp16")
