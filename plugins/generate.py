"""`generate`: continue prompts with any decoding strategy, optionally streamed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from registry import Capability, CapabilityResult, hookimpl
from registry.errors import UsageError

SAMPLERS = ("greedy", "beam", "top_k", "top_p", "random", "contrastive")
TRUNCATE = ("none", "left")


class Generate(Capability):
    name = "generate"

    @dataclass
    class Options:
        prompts: list[str] = field(default_factory=list)
        max_new_tokens: int = 32
        min_new_tokens: int = 0
        sampler: str = "greedy"
        temperature: float = 1.0
        top_k: int | None = None  # top_k: 50; contrastive: 5 candidates
        top_p: float = 0.9
        num_beams: int = 4
        length_penalty: float = 1.0
        return_all_beams: bool = False
        penalty_alpha: float = 0.6
        repetition_penalty: float = 1.0
        no_repeat_ngram_size: int = 0
        stop: list[str] = field(default_factory=list)
        ignore_end_of_text: bool = False
        seed: int | None = None
        xla: bool | None = None  # compile with XLA; default: for models of 100M parameters or more
        runtime: str = "auto"  # keras, onnx or litert; auto: onnx where it can run the variant
        truncate: str = "none"  # "left": drop the prompt's oldest tokens to fit the context
        template: str | None = None  # a file with {placeholders}, filled from `vars` into one prompt per object
        vars: dict | list | str | None = None  # a JSON object (or list of them), or its text
        on_text: Callable[[Any], None] | None = None  # called with each StreamEvent as text is produced

        def __post_init__(self):
            if isinstance(self.prompts, str):
                self.prompts = [self.prompts]
            self.prompts = list(self.prompts or [])
            if self.template is not None:
                self.prompts += _prompts_from_template(self.template, self.vars)
            elif self.vars is not None:
                raise UsageError("--vars fills a --template FILE; give the template too")
            if not self.prompts:
                raise UsageError("no prompt given: pass at least one PROMPT (or --template FILE --vars JSON)")
            from registry.prompts import check_text

            for number, prompt in enumerate(self.prompts, 1):
                check_text(prompt, f"prompt {number}" if len(self.prompts) > 1 else "the prompt")
            self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
            for stop in self.stop:
                check_text(stop, "--stop")
            if self.sampler not in SAMPLERS:
                raise UsageError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
            if self.truncate not in TRUNCATE:
                raise UsageError(f"unknown --truncate {self.truncate!r}; choose none or left")
            problems = self.generation_config().problems()
            if problems:
                raise UsageError(problems[0])

        def generation_config(self):
            from backends.generation import GenerationConfig

            return GenerationConfig(
                max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens, sampler=self.sampler,
                temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, num_beams=self.num_beams,
                length_penalty=self.length_penalty, return_all_beams=self.return_all_beams,
                penalty_alpha=self.penalty_alpha, repetition_penalty=self.repetition_penalty,
                no_repeat_ngram_size=self.no_repeat_ngram_size, stop=tuple(self.stop),
                stop_at_end_of_text=not self.ignore_end_of_text, seed=self.seed, xla=self.xla,
                runtime=self.runtime,
            )

    def run(self, context, *, prompts, truncate, on_text, template, vars, **settings):
        from backends.tokenizer import encode_batch, special_tokens_rule

        options = self.Options(prompts=prompts, truncate=truncate, **settings)
        config = options.generation_config()
        prompt_ids = encode_batch(prompts)
        context_length = context.variant.config.get("max_sequence_length")
        truncated = []
        for row, ids in enumerate(prompt_ids):
            if not context_length or len(ids) + config.max_new_tokens <= context_length:
                continue
            room = context_length - config.max_new_tokens
            if truncate == "left" and room >= 1:
                truncated.append({"prompt": row, "dropped_tokens": len(ids) - room})
                prompt_ids[row] = ids[len(ids) - room:]
                continue
            if truncate == "left":
                raise UsageError(f"--max-new-tokens {config.max_new_tokens} leaves no room for a prompt in the model's "
                                 f"context of {context_length}; lower --max-new-tokens")
            raise UsageError(
                f"prompt of {len(ids)} tokens plus {config.max_new_tokens} new tokens exceeds the model's context of "
                f"{context_length}; shorten the prompt, lower --max-new-tokens or pass --truncate left"
            )
        from backends import generation

        with context.strategy().scope():
            lm = context.load_model()
            if on_text is None:
                results = generation.generate(lm, prompt_ids, config)
            else:
                decoding = generation.Stream(lm, prompt_ids, config)
                for event in decoding:
                    on_text(event)
                results = decoding.results()
        outputs = []
        for prompt, result in zip(prompts, results):
            item = {"prompt": prompt, "text": result.text, "token_ids": result.token_ids,
                    "finish_reason": result.finish_reason}
            if config.return_all_beams:
                item["beams"] = result.beams
            outputs.append(item)
        settings_used = {key: value for key, value in vars_of(config).items() if key != "stop" or value}
        settings_used["truncate"] = truncate
        settings_used["special_tokens"] = special_tokens_rule()  # how the prompts became ids
        from backends.decoding import resolve_runtime

        settings_used["runtime"] = resolve_runtime(lm, config.xla, config.runtime)
        output = {"outputs": outputs, "runtime": settings_used["runtime"]}
        if truncated:
            output["truncated"] = truncated
        return CapabilityResult(output=output, settings=settings_used)


def vars_of(config) -> dict:
    from dataclasses import asdict

    values = asdict(config)
    values["stop"] = list(values["stop"])
    return values


def _prompts_from_template(path: str, values) -> list[str]:
    """One prompt per object of `values`: the template up to {answer}, as `evaluate` builds questions."""
    import json

    from registry.prompts import Template

    if isinstance(values, str):
        try:
            values = json.loads(values)
        except json.JSONDecodeError as error:
            raise UsageError(f"--vars is not valid JSON ({error.msg}); e.g. '{{\"question\": \"...\"}}'") from None
        except (ValueError, RecursionError):  # nested past Python's stack, or a number of over 4,300 digits
            raise UsageError("--vars is JSON that cannot be read (too deeply nested or a number too long); "
                             "give one flat object such as '{\"question\": \"...\"}'") from None
    values = [{}] if values is None else values
    values = [values] if isinstance(values, dict) else values
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise UsageError("--vars must be a JSON object, or a list of objects (one prompt each)")
    template = Template.from_file(path)
    return [template.query({k: str(v) for k, v in item.items()}, where="--vars") for item in values]


@hookimpl
def register_capabilities(register):
    register(Generate)
