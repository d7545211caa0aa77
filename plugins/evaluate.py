"""`evaluate`: perplexity over text files (token-weighted, sliding window when long)."""

from __future__ import annotations

from dataclasses import dataclass, field

from registry import Capability, CapabilityResult, hookimpl
from registry.errors import UsageError


class Evaluate(Capability):
    name = "evaluate"

    @dataclass
    class Options:
        data: list[str] = field(default_factory=list)
        stride: int | None = None
        batch_size: int = 8
        text_field: str = "text"

        def __post_init__(self):
            if isinstance(self.data, str):
                self.data = [self.data]
            if self.stride is not None and self.stride < 1:
                raise UsageError(f"--stride must be at least 1 (got {self.stride})")
            if self.batch_size < 1:
                raise UsageError(f"--batch-size must be at least 1 (got {self.batch_size})")

    def run(self, context, *, data, stride, batch_size, text_field):
        from registry.data import read_texts, tokenize_documents

        texts = read_texts(data, text_field=text_field)
        documents = tokenize_documents(texts)
        if sum(max(len(ids) - 1, 0) for ids in documents) == 0:
            raise UsageError("the evaluation data has no text of two tokens or more; perplexity needs at least two tokens")
        context_length = context.variant.config.get("max_sequence_length", 1024)
        if stride is not None and stride > context_length:
            raise UsageError(f"--stride {stride} is longer than the model's context of {context_length}")
        from backends import scoring

        with context.strategy().scope():
            lm = context.load_model()
            score = scoring.score(lm, documents, stride=stride, batch_size=batch_size)
        metrics = {
            "perplexity": score.perplexity,
            "mean_nll": score.mean_nll,
            "tokens": score.tokens,
        }
        return CapabilityResult(metrics=metrics, output={**metrics, "data": texts.sources, "data_digest": texts.digest},
                                settings={"data_digest": texts.digest, "stride": stride or context_length // 2})


@hookimpl
def register_capabilities(register):
    register(Evaluate)
