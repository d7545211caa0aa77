"""Knowledge distillation of a GPT-2 teacher into a smaller GPT-2 student.

The loss is Keras's own `keras.distillation.Distiller` with
`LogitsDistillation`: ``alpha * T**2 * KL(softmax(teacher/T) || softmax(student/T))
+ (1 - alpha) * cross-entropy(text, student)``. The teacher's logits are
computed batch by batch inside the training step (the teacher is frozen) and
never stored for the corpus. `alpha = 0` skips the teacher entirely: the same
student trained on the text alone, the baseline distillation must beat.

The student can start from every other layer of the teacher (as DistilGPT2
and DistilBERT did): embeddings, final layer norm and the chosen transformer
blocks are copied.

Example:
    >>> from backends import distillation, keras_gpt2, training
    >>> teacher = keras_gpt2.load("teacher-preset")
    >>> student = distillation.student_from_teacher(teacher, distillation.every_other_layer(2, 1))
    >>> model = distillation.distiller(teacher, student, temperature=2.0, alpha=0.5)
    >>> training.train(model, blocks, training.TrainingPlan(steps=50, batch_size=8, learning_rate=3e-3))
"""

from __future__ import annotations

from backends import keras_gpt2

import keras  # noqa: E402
from keras import ops  # noqa: E402

# The layers of KerasHub's GPT2Backbone that are not transformer blocks.
SHARED_LAYERS = ("token_embedding", "position_embedding", "layer_norm")


def every_other_layer(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher blocks a student of `student_layers` starts from, evenly spaced from the first.

    12 -> 6 gives 0, 2, 4, 6, 8, 10 (DistilGPT2's pattern); 2 -> 1 gives 0.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student needs 1 to {teacher_layers} layers (got {student_layers})")
    return [int(i * teacher_layers / student_layers) for i in range(student_layers)]


def student_from_teacher(teacher, layers: list[int]):
    """A `GPT2CausalLM` with the teacher's shape but only the teacher blocks `layers`, copied."""
    config = {**keras_gpt2.backbone_config(teacher), "num_layers": len(layers)}
    student = keras_gpt2.build(config, dtype=teacher.backbone.dtype_policy.name)
    source, target = teacher.backbone, student.backbone
    for name in SHARED_LAYERS:
        target.get_layer(name).set_weights(source.get_layer(name).get_weights())
    for index, teacher_index in enumerate(layers):
        target.get_layer(f"transformer_layer_{index}").set_weights(
            source.get_layer(f"transformer_layer_{teacher_index}").get_weights()
        )
    return student


class SoftTargetKL(keras.losses.Loss):
    """``T**2 * KL(softmax(teacher) || softmax(student))`` per position, from logits already divided by T.

    Computed from log-softmaxes in float32, with the teacher held constant:
    Keras's own KLDivergence works on probabilities clipped to [1e-7, 1],
    which needs two extra passes over the vocabulary-sized tensors and
    flattens the gradient of every token the student rates below 1e-7.
    """

    def __init__(self, temperature: float, name: str = "soft_target_kl"):
        super().__init__(name=name)
        self.temperature = float(temperature)

    def call(self, teacher_scaled, student_scaled):
        teacher_log = ops.log_softmax(ops.stop_gradient(ops.cast(teacher_scaled, "float32")), axis=-1)
        student_log = ops.log_softmax(ops.cast(student_scaled, "float32"), axis=-1)
        kl = ops.sum(ops.exp(teacher_log) * (teacher_log - student_log), axis=-1)
        return kl * (self.temperature**2)

    def get_config(self):
        return {"temperature": self.temperature, "name": self.name}


def distiller(teacher, student, *, temperature: float, alpha: float):
    """The Keras model to train: its loss mixes soft targets (weight `alpha`) and the text."""
    # Keras's student_loss_weight is the weight of the cross-entropy on the text. The loss is
    # given as an instance: Keras 3.15 turns its default "kl_divergence" string into the bare
    # function, which its own isinstance check misses, and then computes the KL on raw logits
    # clipped to [1e-7, 1] (a negative, meaningless loss; measured, see the tests).
    return keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=temperature, loss=SoftTargetKL(temperature)
        ),
        student_loss_weight=1.0 - alpha,
    )
