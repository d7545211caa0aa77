"""`evaluate`: perplexity over text files, and tasks from JSONL files (zero- or few-shot).

Perplexity follows SPEC section 5: each text one sequence, nothing
prepended, a sliding window with `stride` for texts longer than the context,
weighted by tokens over several files; bits per byte divides the same
log-likelihood (in bits) by the UTF-8 bytes of the tokens it covers.

Tasks (see `registry.tasks`): multiple choice is scored by log-likelihood
(`accuracy`, and `accuracy_norm` per byte of the choice), generation by
greedy decoding cut at `stop` (exact match, F1, BLEU, ROUGE), last word by
whether greedy decoding gives exactly the last word (`accuracy`, and the
`perplexity` of the last words). Every example's prompt, prediction and
score goes into a table the core logs to MLflow.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from registry import Capability, CapabilityResult, hookimpl, option
from registry.errors import UsageError


SCORING_RUNTIMES = ("auto", "onnx", "keras")


class Evaluate(Capability):
    """Perplexity of REF over text (token-weighted; no token prepended), and task scores."""

    name = "evaluate"
    uses_device = True
    records = "metrics"  # --log (the default on the command line): the figures go onto the variant's run and lineage
    records_by_default = True

    @dataclass
    class Options:
        data: list[str] = option(default_factory=list, path=True, dataset="evaluation",
                                 help="Text file, folder or JSONL for perplexity (repeatable).")
        stride: int | None = option(at_least=1, help="Sliding-window stride for long texts (default: half the context).")
        batch_size: int = option(8, at_least=1, help="Sequences scored together.")
        text_field: str = option("text", help="JSONL field holding the text.")
        task: str | None = option(help="JSONL task: multiple choice, generation or last word (see docs/cli.md).")
        task_name: str | None = option(help="Prefix of the task's metrics (default: the file's name).")
        shots: int = option(0, at_least=0, help="Solved examples before each question.")
        train: str | None = option(help="JSONL file the shots come from (default: the task file, minus the question).")
        template: str | None = option(help="Prompt template file with {placeholders}; {answer} marks the answer.")
        seed: int = option(0, help="Which shots each question gets.")
        max_new_tokens: int = option(32, at_least=1, help="Generation tasks: tokens per answer.")
        stop: str = option("\n", help="Generation tasks: the answer ends before this text.")
        limit: int | None = option(at_least=1, help="Only the first N examples of the task.")
        runtime: str = option("auto", choices=SCORING_RUNTIMES,
                              help="What scores: onnx (float32 and int8 variants and adapters over them, without "
                                   "TensorFlow) or keras; auto: onnx where it can.")

        def __post_init__(self):
            if not self.data and not self.task:
                raise UsageError("nothing to evaluate: give --data PATH (perplexity) or --task FILE.jsonl")
            if not self.task and (self.shots or self.train or self.template or self.task_name):
                raise UsageError("--shots, --train, --template and --task-name go with --task FILE.jsonl")
            if self.task_name is not None:
                from registry.tasks import check_task_name

                check_task_name(self.task_name)
            if self.stop:
                from registry.prompts import check_text

                check_text(self.stop, "--stop")

    def run(self, context, options):
        data, stride, batch_size, text_field = options.data, options.stride, options.batch_size, options.text_field
        task, task_name, shots, train, template = (options.task, options.task_name, options.shots, options.train,
                                                   options.template)
        seed, max_new_tokens, stop, limit = options.seed, options.max_new_tokens, options.stop, options.limit
        from backends.tokenizer import special_tokens_rule

        context_length = context.variant.config.get("max_sequence_length", 1024)
        # Everything that can be refused is read and checked before the model loads.
        special_tokens = special_tokens_rule()
        documents = texts = None
        if data:
            from registry.data import read_texts, tokenize_documents

            texts = read_texts(data, text_field=text_field)
            documents = tokenize_documents(texts)
            if sum(max(len(ids) - 1, 0) for ids in documents) == 0:
                raise UsageError("the evaluation data has no text of two tokens or more; perplexity needs at least two tokens")
            if stride is not None and stride > context_length:
                raise UsageError(f"--stride {stride} is longer than the model's context of {context_length}")
        requests = None
        if task:
            requests = _task_requests(task, task_name, shots, train, template, seed, limit, max_new_tokens,
                                      context_length)
        metrics: dict[str, float] = {}
        output: dict = {}
        # Recorded so two evaluations of the same files under different rules are told apart.
        settings: dict = {"special_tokens": special_tokens}
        tables: dict = {}
        # A float32 or int8 variant (or an adapter over one) is scored, perplexity and tasks alike,
        # through onnxruntime from its files, without TensorFlow; other variants load Keras.
        scorer = context.light_scorer() if options.runtime != "keras" else None
        if scorer is None and options.runtime == "onnx":
            raise UsageError(f"--runtime onnx cannot score {context.variant.ref}: onnxruntime scores float32 and int8 "
                             "variants, and adapters over them; use --runtime keras")
        with contextlib.nullcontext() if scorer is not None else context.strategy().scope():
            lm = context.load_model() if scorer is None else None
            if documents is not None:
                if scorer is not None:
                    score = scorer.score(documents, stride=stride, batch_size=batch_size)
                else:
                    from backends import scoring

                    score = scoring.score(lm, documents, stride=stride, batch_size=batch_size)
                metrics.update(perplexity=score.perplexity, mean_nll=score.mean_nll, tokens=score.tokens,
                               bits_per_byte=score.total_nll / math.log(2) / _scored_bytes(documents))
                output.update(data=texts.sources, data_digest=texts.digest)
                settings.update(data_digest=texts.digest, stride=stride or context_length // 2)
            if requests is not None:
                task_metrics, rows = requests.score(scorer if scorer is not None else lm, batch_size=batch_size,
                                                    stop=stop)
                prefix = requests.metric_prefix
                metrics.update({f"{prefix}.{key}": value for key, value in task_metrics.items()})
                output.update(task_metrics)
                output.update(task=requests.task.name, task_kind=requests.task.kind, examples=len(rows),
                              shots=shots, metric_prefix=prefix, warnings=requests.warnings)
                settings.update(task=requests.task.path, task_digest=requests.digest, shots=shots, seed=seed,
                                template=template)
                tables[f"evaluation/{prefix}.json"] = rows
        output["runtime"] = scorer.runtime if scorer is not None else "keras"
        output["metrics"] = dict(metrics)
        output.update({k: v for k, v in metrics.items() if "." not in k})
        return CapabilityResult(metrics=metrics, output=output, settings=settings, tables=tables)

    def report(self, outcome):
        output, ref = outcome.result.output, outcome.subject.ref
        lines = []
        if "tokens" in output:
            lines.append(f"{ref}: perplexity {output['perplexity']:,.3f}  mean NLL {output['mean_nll']:.4f}  "
                         f"{output['bits_per_byte']:.4f} bits per byte  over {int(output['tokens']):,} tokens")
        if "task" in output:
            figures = {k: v for k, v in output["metrics"].items() if k.startswith(output["metric_prefix"] + ".")}
            lines.append(f"{ref}: {output['task']} ({output['task_kind']}, {output['examples']} examples, "
                         f"{output['shots']}-shot): " + "  ".join(f"{k.split('.')[-1]} {v:.4g}" for k, v in figures.items()))
        return lines


def _scored_bytes(documents: list[list[int]]) -> int:
    """UTF-8 bytes of the tokens whose likelihood perplexity counts: tokens 2..n of each text."""
    from backends.tokenizer import byte_length

    return sum(byte_length(ids[1:]) for ids in documents)


class _TaskRequests:
    """A task's examples turned into prompts that fit the context, and their scoring."""

    def __init__(self, task, prompts, fitted, metric_prefix, warnings, digest, max_new_tokens):
        self.task, self.prompts, self.fitted = task, prompts, fitted
        self.metric_prefix, self.warnings, self.digest = metric_prefix, warnings, digest
        self.max_new_tokens = max_new_tokens

    def score(self, lm, *, batch_size: int, stop: str):
        """`lm`: a loaded KerasHub model, or a `backends.perplexity.RuntimeScorer` (no TensorFlow)."""
        from registry import tasks

        if self.task.kind == tasks.GENERATION:
            return self._score_generation(lm, batch_size, stop)
        return self._score_likelihood(lm, batch_size)

    def _score_likelihood(self, lm, batch_size):
        from backends.perplexity import RuntimeScorer
        from registry import tasks

        pairs, owners = [], []
        for index, (example, prompt) in enumerate(zip(self.task.examples, self.prompts)):
            continuations = example.choices if example.kind == tasks.MULTIPLE_CHOICE else (example.answer,)
            for choice in continuations:
                pairs.append(split_continuation(prompt, choice))
                owners.append(index)
        from backends.tokenizer import encode

        requests = [(encode(context_text), encode(continuation)) for context_text, continuation in pairs]
        if isinstance(lm, RuntimeScorer):  # through the runtime
            scores = lm.score_continuations(requests, batch_size=batch_size)
        else:
            from backends import scoring

            scores = scoring.score_continuations(lm, requests, batch_size=batch_size)
        per_example: dict[int, list] = {}
        for owner, (_, continuation), score in zip(owners, pairs, scores):
            per_example.setdefault(owner, []).append((continuation, score))
        rows = []
        if self.task.kind == tasks.MULTIPLE_CHOICE:
            correct = correct_norm = 0
            for index, example in enumerate(self.task.examples):
                scored = per_example[index]
                logprobs = [s.logprob for _, s in scored]
                per_byte = [s.logprob / max(len(c.encode("utf-8")), 1) for c, s in scored]
                chosen = max(range(len(logprobs)), key=logprobs.__getitem__)
                chosen_norm = max(range(len(per_byte)), key=per_byte.__getitem__)
                correct += chosen == example.label
                correct_norm += chosen_norm == example.label
                rows.append({"line": example.line, "shots": self.fitted[index].shots_used, "prompt": self.prompts[index],
                             "choices": list(example.choices), "logprobs": logprobs, "prediction": chosen,
                             "answer": example.label, "correct": chosen == example.label})
            count = len(rows)
            return {"accuracy": correct / count, "accuracy_norm": correct_norm / count}, rows
        hits, total_logprob, total_tokens = 0, 0.0, 0
        for index, example in enumerate(self.task.examples):
            _, score = per_example[index][0]
            hits += score.greedy
            total_logprob += score.logprob
            total_tokens += score.tokens
            rows.append({"line": example.line, "shots": self.fitted[index].shots_used, "prompt": self.prompts[index],
                         "answer": example.answer, "logprob": score.logprob, "correct": score.greedy})
        return {"accuracy": hits / len(rows), "perplexity": math.exp(-total_logprob / total_tokens)}, rows

    def _score_generation(self, lm, batch_size, stop):
        from backends import generation
        from backends.perplexity import RuntimeScorer
        from backends.tokenizer import encode
        from registry import text_metrics

        encoded = [encode(prompt) for prompt in self.prompts]
        # Similar lengths together: a batch is padded to its longest prompt.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        predictions = [""] * len(encoded)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            # Decoding ends at the stop string (left out), so a row stops costing time once answered.
            model = lm.decoder if isinstance(lm, RuntimeScorer) else lm  # a runtime scorer decodes with its decoder
            outputs = generation.generate(model, [encoded[i] for i in batch], max_new_tokens=self.max_new_tokens,
                                          stop=(stop,) if stop else ())
            for index, result in zip(batch, outputs):
                predictions[index] = result.text
        answers = [example.answer for example in self.task.examples]
        scores = text_metrics.generation_scores(predictions, answers)
        rows = [
            {"line": example.line, "shots": self.fitted[index].shots_used, "prompt": self.prompts[index],
             "prediction": predictions[index], "answer": example.answer,
             "exact_match": text_metrics.exact_match(predictions[index], example.answer),
             "f1": text_metrics.token_f1(predictions[index], example.answer)}
            for index, example in enumerate(self.task.examples)
        ]
        return scores, rows


def split_continuation(prompt: str, continuation: str) -> tuple[str, str]:
    """Spaces that end the prompt move to the continuation: GPT-2's BPE attaches a space to the next word."""
    stripped = prompt.rstrip(" ")
    return stripped, prompt[len(stripped):] + continuation


def _task_requests(path, task_name, shots, train, template_path, seed, limit, max_new_tokens, context_length):
    import hashlib
    import json

    from backends.tokenizer import encode
    from registry import prompts, tasks

    task = tasks.read_task(path, task_name)
    tasks.check_task_name(task.name, "--task-name" if task_name else f"the name of {path}")
    if limit is not None:
        task = tasks.Task(task.name, task.path, task.kind, task.examples[:limit])
    pool = tasks.read_task(train, option="--train") if train else None
    if pool is not None and pool.kind != task.kind:
        raise UsageError(f"--train {train} holds {pool.kind} examples but {path} is {task.kind}; use the same kind")
    template = prompts.Template.from_file(template_path) if template_path else prompts.Template(prompts.DEFAULT_TEMPLATE)
    if shots and not template.has_answer:
        raise UsageError(f"template {template_path} has no {{answer}}: few-shot prompts need it to show each shot's answer")
    fitted, texts = [], []
    for index, example in enumerate(task.examples):
        if task.kind == tasks.MULTIPLE_CHOICE:
            reserve = max(len(encode(split_continuation(example.prompt, c)[1])) for c in example.choices)
        elif task.kind == tasks.LAST_WORD:
            reserve = len(encode(example.answer))
        else:
            reserve = max_new_tokens
        shot_fields = [shot.fields for shot in tasks.choose_shots(task, index, pool, shots, seed)]
        prompt = prompts.fit_prompt(template, example.fields, shot_fields, budget=context_length - reserve,
                                    count_tokens=lambda text: len(encode(text)),
                                    where=f"the question on {path} line {example.line}")
        fitted.append(prompt)
        texts.append(prompt.text)
    dropped = [f for f in fitted if f.shots_dropped]
    warnings = []
    if dropped:
        warnings.append(
            f"{len(dropped)} of {len(fitted)} prompts kept fewer than {shots} shots to fit the context of "
            f"{context_length} tokens (as few as {min(f.shots_used for f in dropped)})"
        )
    prefix = task.name + (f".{shots}shot" if shots else "")
    from backends.tokenizer import rule_digest

    digest = hashlib.sha256(json.dumps([e.fields for e in task.examples], sort_keys=True).encode())
    # Over the prompts as built too: a template or a shot may spell a special token.
    digest.update(rule_digest([*texts, *(json.dumps(e.fields) for e in task.examples)]))
    digest = digest.hexdigest()[:16]
    return _TaskRequests(task, texts, fitted, prefix, warnings, digest, max_new_tokens)


@hookimpl
def register_capabilities(register):
    register(Evaluate)
