"""`tokenize`: GPT-2 BPE ids and pieces of a text (tiktoken; no model needed)."""

from __future__ import annotations

from dataclasses import dataclass

from registry import Capability, CapabilityResult, hookimpl
from registry.errors import UsageError


class Tokenize(Capability):
    name = "tokenize"
    needs_model = False

    @dataclass
    class Options:
        text: str = ""
        token_ids: list[int] | None = None  # with decode: the ids to turn back into text

        def __post_init__(self):
            if self.token_ids is not None and any(not 0 <= int(i) < 50257 for i in self.token_ids):
                raise UsageError("token ids must be in 0..50256")

    def run(self, context, *, text, token_ids):
        from backends.tokenizer import decode, encode, pieces

        if token_ids is not None:
            return CapabilityResult(output={"text": decode(token_ids), "token_ids": list(token_ids), "pieces": pieces(token_ids)})
        ids = encode(text)
        return CapabilityResult(output={"text": text, "token_ids": ids, "pieces": pieces(ids)})


@hookimpl
def register_capabilities(register):
    register(Tokenize)
