"""`generate`: continue prompts with any decoding strategy, optionally streamed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from backends.configs import GENERATION_RUNTIMES, SAMPLERS
from registry import Capability, CapabilityResult, hookimpl, option
from registry.errors import UsageError

TRUNCATE = ("none", "left")


class Generate(Capability):
    """Continue each PROMPT with the model REF (all prompts in one batch)."""

    name = "generate"
    uses_device = True
    stream_option = "on_text"
    records = "run"  # --log: the settings and outputs as an MLflow run of their own

    @dataclass
    class Options:
        prompts: list[str] = option(default_factory=list, argument=True, help="The texts to continue.")
        max_new_tokens: int = option(32, at_least=1, serve=True, help="Tokens to generate per prompt.")
        min_new_tokens: int = option(0, at_least=0, serve=True, help="End-of-text is refused before this many.")
        sampler: str = option("greedy", choices=SAMPLERS, serve=True, help="The decoding strategy.")
        temperature: float = option(1.0, above=0, serve=True, help="Logits are divided by it before sampling.")
        top_k: int | None = option(at_least=1, serve=True, serve_default=0,
                                   help="top_k: tokens kept (default 50); contrastive: candidates (default 5).")
        top_p: float = option(0.9, above=0, at_most=1, serve=True, help="top_p: the smallest set of tokens of this "
                                                                         "probability is kept.")
        num_beams: int = option(4, at_least=1, serve=True, help="beam: hypotheses kept.")
        length_penalty: float = option(1.0, help="Beam scores are divided by (new tokens) ** this.")
        return_all_beams: bool = option(False, help="Also list every beam with its score.")
        penalty_alpha: float = option(0.6, at_least=0, at_most=1, help="Contrastive search's degeneration penalty.")
        repetition_penalty: float = option(1.0, above=0, serve=True, help="Logits of tokens already present are "
                                                                           "divided by it (1: off).")
        no_repeat_ngram_size: int = option(0, at_least=0, serve=True, help="No n-gram of this size appears twice "
                                                                            "(0: off).")
        stop: list[str] = option(default_factory=list, serve=True,
                                 help="Stop at this text and leave it out (repeatable).")
        ignore_end_of_text: bool = option(False, help="Keep generating past <|endoftext|>.")
        seed: int | None = option(serve=True, serve_default=0,
                                  help="Seed of the sampler (served answers use 0: the same seed, the same text).")
        truncate: str = option("none", choices=TRUNCATE,
                               help="left: drop the prompt's oldest tokens when it does not fit the context.")
        runtime: str = option("auto", choices=GENERATION_RUNTIMES, serve=True,
                              help="Where to decode: onnxruntime (int8 kernels for int8 variants), LiteRT or Keras; "
                                   "auto: onnx for float32 and int8 variants, keras for the rest.")
        xla: bool | None = option(help="Compile the Keras decoder with XLA (default: for models of 100M parameters "
                                       "or more).")
        template: str | None = option(help="Prompt template file with {placeholders} (as evaluate uses).")
        vars: dict | list | str | None = option(
            help="JSON object filling the template's placeholders (a list of objects: one prompt each).")
        on_text: Callable[[Any], None] | None = option(
            cli=False, help="Called with each StreamEvent (row, text, token_id, finish_reason) as text is produced.")

        def __post_init__(self):
            from registry.prompts import check_text

            # The template's prompts are kept apart from the given ones, so checking twice adds nothing twice.
            self.template_prompts = []
            if self.template is not None:
                self.template_prompts = _prompts_from_template(self.template, self.vars)
            elif self.vars is not None:
                raise UsageError("--vars fills a --template FILE; give the template too")
            if not self.all_prompts:
                raise UsageError("no prompt given: pass at least one PROMPT (or --template FILE --vars JSON)")
            for number, prompt in enumerate(self.all_prompts, 1):
                check_text(prompt, f"prompt {number}" if len(self.all_prompts) > 1 else "the prompt")
            for stop in self.stop:
                check_text(stop, "--stop")
            problems = self.generation_config().problems()  # the rules that tie settings together
            if problems:
                raise UsageError(problems[0])

        @property
        def all_prompts(self) -> list[str]:
            return list(self.prompts) + self.template_prompts

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

    def run(self, context, options):
        from backends.tokenizer import encode_batch, special_tokens_rule

        config = options.generation_config()
        prompts = options.all_prompts
        truncate = options.truncate
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

        # A float32 or int8 variant (or an adapter over one) decodes from its files without TensorFlow.
        with context.decoding(runtime=config.runtime, xla=config.xla) as decoder:
            if options.on_text is None:
                results = generation.generate(decoder, prompt_ids, config)
            else:
                decoding = generation.Stream(decoder, prompt_ids, config)
                for event in decoding:
                    options.on_text(event)
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
        settings_used["runtime"] = decoder.runtime
        output = {"outputs": outputs, "runtime": settings_used["runtime"]}
        if truncated:
            output["truncated"] = truncated
        return CapabilityResult(output=output, settings=settings_used)

    def report(self, outcome):
        if outcome.streamed:
            return []
        import click

        return [item["prompt"] + click.style(item["text"], bold=True) for item in outcome.result.output["outputs"]]

    def notes(self, outcome):
        output = outcome.result.output
        notes = [f"note: prompt {item['prompt'] + 1} lost its first {item['dropped_tokens']} tokens to fit the context"
                 for item in output.get("truncated", [])]
        if outcome.run_id:
            notes.append(f"logged as MLflow run {outcome.run_id}")
        return notes


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
