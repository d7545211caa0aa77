"""`distill`: train a smaller student on a teacher's soft targets and the text.

loss = alpha * T**2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy,
through Keras's `Distiller` (see `backends.distillation`) in the same training
loop as `finetune` (schedule, clipping, checkpoints, --resume, validation).
The student is one of:

- ``--student-layers K`` (the default, half the teacher's layers): the
  teacher's shape with K blocks, started from every other teacher block;
- ``--student-config NAME``: a named configuration, randomly initialised;
- ``--student-init REF``: a registered variant, which becomes the student's
  second parent in the lineage (role ``student_init``).

`--alpha 0` trains the same student on the text alone, the baseline to beat.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from backends.configs import CONFIGS
from plugins.finetune import Finetune, Trainee
from registry import hookimpl, option
from registry.errors import UsageError


class Distill(Finetune):
    """Train a smaller student on TEACHER_REF's soft targets and the text; registers the student."""

    name = "distill"
    operation = "distill"
    parent_role = "teacher"
    reference = "teacher_ref"

    @dataclass
    class Options(Finetune.Options):
        student_layers: int | None = option(at_least=1, help="A student of the teacher's shape with K layers, started "
                                                             "from every other teacher layer (default: half the "
                                                             "teacher's layers).")
        student_config: str | None = option(choices=tuple(CONFIGS), help="A randomly initialised student of this "
                                                                          "configuration.")
        student_init: str | None = option(help="A registered variant to start the student from (a second parent).")
        temperature: float = option(2.0, above=0, help="Softening of both distributions.")
        alpha: float = option(0.5, at_least=0, at_most=1,
                              help="Weight of the soft targets; 1 - alpha goes to the text (0: the text alone).")

        def __post_init__(self):
            super().__post_init__()
            chosen = [flag for flag, value in (("--student-layers", self.student_layers),
                                               ("--student-config", self.student_config),
                                               ("--student-init", self.student_init)) if value is not None]
            if len(chosen) > 1:
                raise UsageError(f"give one of --student-layers, --student-config, --student-init (got {', '.join(chosen)})")

    def run(self, context, options):
        from backends.configs import get_config

        teacher = context.variant.config
        if context.variant.kind != "full":
            raise UsageError(f"{context.variant.ref} is an {context.variant.kind}; distill from a full model "
                             "(merge an adapter first, or use an export's source)")
        fixed = {}
        student_layers = options.student_layers
        if options.student_init is not None:
            init = context.resolve(options.student_init)
            if init.kind != "full":
                raise UsageError(f"--student-init {init.ref} is an {init.kind}; the student must start from a full model")
            if init.ref == context.variant.ref:
                raise UsageError("--student-init is the teacher itself; use --student-layers K to start from its blocks")
            student_shape = init.config
            options = replace(options, student_init=init.ref)
            fixed["student_init_content_hash"] = init.content_hash  # --resume must find the same student
        elif options.student_config is not None:
            student_shape = get_config(options.student_config)
        else:
            student_layers = student_layers or max(teacher["num_layers"] // 2, 1)
            if student_layers > teacher["num_layers"]:
                raise UsageError(f"--student-layers {student_layers} is more than the teacher's {teacher['num_layers']} layers")
            student_shape = {**teacher, "num_layers": student_layers}
        if student_shape["vocabulary_size"] != teacher["vocabulary_size"]:
            raise UsageError(f"the student's vocabulary ({student_shape['vocabulary_size']}) differs from the teacher's "
                             f"({teacher['vocabulary_size']}); soft targets need the same tokens")
        longest = min(teacher["max_sequence_length"], student_shape["max_sequence_length"])
        if options.seq_len is not None and options.seq_len > longest:
            raise UsageError(f"--seq-len {options.seq_len} is longer than the {longest} positions teacher and student share")
        options = replace(options, seq_len=options.seq_len or min(longest, 128), student_layers=student_layers)
        result = self.train(context, options, fixed)
        if "perplexity" in result.parent_metrics:  # measured on the same validation text as the student's
            result.metrics["teacher_perplexity"] = result.parent_metrics["perplexity"]
        return result

    def prepare(self, context, lm, options) -> Trainee:
        from backends import distillation, keras_gpt2

        teacher_layers = lm.backbone.num_layers
        policy = lm.backbone.dtype_policy.name
        settings = {}
        if options.student_init is not None:
            student = context.load_variant(options.student_init, dtype=policy)
        elif options.student_config is not None:
            student = keras_gpt2.build(keras_gpt2.get_config(options.student_config), seed=options.seed, dtype=policy)
        else:
            layers = distillation.every_other_layer(teacher_layers, options.student_layers)
            settings["initialised_from_teacher_layers"] = layers
            student = distillation.student_from_teacher(lm, layers)
        teacher_parameters = keras_gpt2.parameter_count(lm)
        student_parameters = keras_gpt2.parameter_count(student)
        model = distillation.distiller(lm, student, temperature=options.temperature, alpha=options.alpha)
        return Trainee(model=model, result=student, settings=settings, figures={
            "parameters": student_parameters,
            "teacher_parameters": teacher_parameters,
            "parameter_compression": teacher_parameters / student_parameters,
        })

    def other_parents(self, context, options):
        if options.student_init is None:
            return []
        return [(context.resolve(options.student_init), "student_init")]



@hookimpl
def register_capabilities(register):
    register(Distill)
