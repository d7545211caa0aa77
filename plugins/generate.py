"""`generate`: continue prompts with greedy, top-k, top-p or random sampling."""

from __future__ import annotations

from dataclasses import dataclass, field

from registry import Capability, CapabilityResult, hookimpl
from registry.errors import UsageError

SAMPLERS = ("greedy", "top_k", "top_p", "random")


class Generate(Capability):
    name = "generate"

    @dataclass
    class Options:
        prompts: list[str] = field(default_factory=list)
        max_new_tokens: int = 32
        sampler: str = "greedy"
        temperature: float = 1.0
        top_k: int = 50
        top_p: float = 0.9
        seed: int | None = None
        template: str | None = None  # a file with {placeholders}, filled from `vars` into one prompt per object
        vars: dict | list | str | None = None  # a JSON object (or list of them), or its text

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
            if self.sampler not in SAMPLERS:
                raise UsageError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
            if self.max_new_tokens < 1:
                raise UsageError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
            if not self.temperature > 0:
                raise UsageError(f"--temperature must be greater than 0 (got {self.temperature})")
            if not 0 < self.top_p <= 1:
                raise UsageError(f"--top-p must be in (0, 1] (got {self.top_p})")
            if self.top_k < 1:
                raise UsageError(f"--top-k must be at least 1 (got {self.top_k})")

    def run(self, context, *, prompts, max_new_tokens, sampler, temperature, top_k, top_p, seed, template, vars):
        from backends.tokenizer import decode, encode_batch

        prompt_ids = encode_batch(prompts)
        context_length = context.variant.config.get("max_sequence_length")
        for prompt, ids in zip(prompts, prompt_ids):
            if context_length and len(ids) + max_new_tokens > context_length:
                raise UsageError(
                    f"prompt of {len(ids)} tokens plus {max_new_tokens} new tokens exceeds the model's context of "
                    f"{context_length}; shorten the prompt or lower --max-new-tokens"
                )
        from backends import generation

        with context.strategy().scope():
            lm = context.load_model()
            results = generation.generate(
                lm, prompt_ids, max_new_tokens=max_new_tokens, sampler=sampler,
                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
            )
        outputs = [
            {"prompt": prompt, "text": decode(r.token_ids), "token_ids": r.token_ids, "finish_reason": r.finish_reason}
            for prompt, r in zip(prompts, results)
        ]
        return CapabilityResult(
            output={"outputs": outputs},
            settings={"sampler": sampler, "max_new_tokens": max_new_tokens, "temperature": temperature,
                      "top_k": top_k, "top_p": top_p, "seed": seed},
        )


def _prompts_from_template(path: str, values) -> list[str]:
    """One prompt per object of `values`: the template up to {answer}, as `evaluate` builds questions."""
    import json

    from registry.prompts import Template

    if isinstance(values, str):
        try:
            values = json.loads(values)
        except json.JSONDecodeError as error:
            raise UsageError(f"--vars is not valid JSON ({error.msg}); e.g. '{{\"question\": \"...\"}}'") from None
    values = [{}] if values is None else values
    values = [values] if isinstance(values, dict) else values
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise UsageError("--vars must be a JSON object, or a list of objects (one prompt each)")
    template = Template.from_file(path)
    return [template.query({k: str(v) for k, v in item.items()}, where="--vars") for item in values]


@hookimpl
def register_capabilities(register):
    register(Generate)
