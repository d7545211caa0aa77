"""`distill`: the loss as the issue defines it, the student's start, its lineage, and that it helps."""

import numpy as np
import pytest

from registry import Registry


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_loss_is_alpha_t2_kl_plus_cross_entropy_and_the_student_starts_from_teacher_layers(imported_home):
    import keras

    from backends import distillation

    teacher = Registry(imported_home).load("fx")
    student = distillation.student_from_teacher(teacher, [1])
    assert student.backbone.num_layers == 1
    for name in ("token_embedding", "position_embedding", "layer_norm"):
        for mine, theirs in zip(student.backbone.get_layer(name).get_weights(),
                                teacher.backbone.get_layer(name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip(student.backbone.get_layer("transformer_layer_0").get_weights(),
                            teacher.backbone.get_layer("transformer_layer_1").get_weights()):
        np.testing.assert_array_equal(mine, theirs)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50257, size=(2, 9)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    y = ids[:, 1:]
    temperature, alpha = 2.0, 0.3
    model = distillation.distiller(teacher, student, temperature=temperature, alpha=alpha)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # as training does
    student_logits = np.asarray(student(x, training=False), dtype=np.float64)
    teacher_logits = np.asarray(teacher(x, training=False), dtype=np.float64)
    loss = float(model.compute_loss(x=x, y=y, y_pred=student(x, training=False), training=False))

    teacher_log = _log_softmax(teacher_logits / temperature)
    student_log = _log_softmax(student_logits / temperature)
    kl = (np.exp(teacher_log) * (teacher_log - student_log)).sum(axis=-1).mean()
    cross_entropy = -np.take_along_axis(_log_softmax(student_logits), y[..., None], axis=-1).mean()
    assert loss == pytest.approx(alpha * temperature**2 * kl + (1 - alpha) * cross_entropy, rel=1e-4)
    assert distillation.every_other_layer(12, 6) == [0, 2, 4, 6, 8, 10]
    assert distillation.every_other_layer(2, 1) == [0]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A tiny teacher trained on the embedded corpus, and two students of 1 of its 2 layers
    trained the same number of steps: one distilled, one on the text alone (alpha 0)."""
    from backends.tokenizer import decode, encode
    from registry import corpus

    folder = tmp_path_factory.mktemp("distill")
    train, heldout, _ = corpus.write_splits(folder / "data")
    validation = folder / "data" / "validation.txt"
    validation.write_text(decode(encode(heldout.read_text(encoding="utf-8"))[:4000]), encoding="utf-8")
    reg = Registry(folder / "home")
    teacher = reg.run("finetune", reg.create("teacher", config="tiny", seed=0), name="teacher-tuned",
                      data=[str(train)], val_data=[str(validation)], steps=TEACHER_STEPS, batch_size=8, seq_len=32,
                      lr=3e-3)
    common = dict(data=[str(train)], val_data=[str(validation)], steps=STUDENT_STEPS, batch_size=8, seq_len=32,
                  lr=3e-3, temperature=2.0, student_layers=1)
    students = {alpha: reg.run("distill", teacher, name=f"student-{alpha}", alpha=alpha, **common)
                for alpha in (0.5, 0.0)}
    return reg, teacher, students


TEACHER_STEPS, STUDENT_STEPS = 80, 20


def test_a_distilled_student_beats_the_same_student_on_the_text_alone(distilled):
    reg, teacher, students = distilled
    with_teacher, text_only = students[0.5], students[0.0]
    assert with_teacher.metrics["perplexity"] < text_only.metrics["perplexity"]
    # Both students and the teacher are measured on the same held-out text.
    assert with_teacher.metrics["teacher_perplexity"] == pytest.approx(teacher.metrics["perplexity"], rel=1e-6)
    assert with_teacher.metrics["teacher_perplexity"] < with_teacher.metrics["perplexity"]


def test_the_student_lineage_records_compression_against_its_teacher(gpt2reg, distilled):
    reg, teacher, students = distilled
    student = students[0.5]
    assert student.parents == (teacher.ref,) and student.operation == "distill"
    assert student.parameters == teacher.parameters - 49_984  # one block of a 64-wide GPT-2
    assert student.metrics["parameter_compression"] == pytest.approx(teacher.parameters / student.parameters)
    edge = reg.lineage(student)["edges"][-1]
    assert (edge["parent"], edge["role"]) == (teacher.ref, "teacher")
    assert edge["settings"]["initialised_from_teacher_layers"] == [0]
    assert edge["metric_deltas"]["parameters"] == student.parameters - teacher.parameters
    assert edge["metric_deltas"]["size_bytes"] == student.size_bytes - teacher.size_bytes < 0
    assert edge["metric_deltas"]["perplexity"] == pytest.approx(
        student.metrics["perplexity"] - teacher.metrics["perplexity"])

    # A registered student initialisation is the second parent.
    reg.create("small", config="tiny", seed=1)
    result = gpt2reg("distill", teacher.ref, "--data", edge["settings"]["data"][0], "--student-init", "small/1",
                     "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--val-split", "0", "--json",
                     "--home", reg.home.path)
    assert result.exit_code == 0, result
    document = result.json()
    assert document["parents"] == [teacher.ref, "small/1"]
    roles = {e["parent"]: e["role"] for e in reg.lineage(document["ref"])["edges"] if e["child"] == document["ref"]}
    assert roles == {teacher.ref: "teacher", "small/1": "student_init"}
