"""`tokenize`: GPT-2 BPE ids and pieces of a text (tiktoken; no model needed).

The ids are the ones every other command gives the model for the same text
(`backends.tokenizer.encode`): `<|endoftext|>` in the text is token 50256, as
in transformers, unless GPT2REG_SPECIAL_TOKENS=text makes it plain text.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from registry import Capability, CapabilityResult, hookimpl, option
from registry.errors import UsageError

VOCABULARY_SIZE = 50257  # GPT-2's byte-pair vocabulary, end-of-text included


class Tokenize(Capability):
    """Token ids and pieces of TEXT under the GPT-2 BPE (no model needed)."""

    name = "tokenize"
    needs_model = False

    @dataclass
    class Options:
        text: str = option("", argument=True, required=True, help="The text to tokenize (with --decode: token ids).")
        decode: bool = option(False, help="TEXT is comma- or space-separated token ids: turn them into text.")
        token_ids: list[int] | None = option(cli=False, help="Token ids to turn back into text.")

        def __post_init__(self):
            from registry.prompts import check_text

            if self.decode and self.token_ids is None:
                try:
                    self.token_ids = [int(t) for t in self.text.replace(",", " ").split()]
                except ValueError:
                    raise UsageError("--decode expects token ids such as '464 2068 7586'") from None
            if self.token_ids is None:
                check_text(self.text, "TEXT")
                return
            if isinstance(self.token_ids, (str, bytes)) or not hasattr(self.token_ids, "__iter__"):
                raise UsageError("token ids must be a list of whole numbers in 0..50256, such as [464, 2068]")
            ids = list(self.token_ids)
            # numbers.Integral takes NumPy's integers too; floats and True/False are not ids.
            if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < VOCABULARY_SIZE
                   for i in ids):
                raise UsageError(f"token ids must be whole numbers in 0..{VOCABULARY_SIZE - 1}")
            self.token_ids = [int(i) for i in ids]

    def run(self, context, options):
        from backends.tokenizer import decode, encode, pieces, special_tokens_rule

        text, token_ids = options.text, options.token_ids
        if token_ids is not None:
            return CapabilityResult(output={"text": decode(token_ids), "token_ids": list(token_ids), "pieces": pieces(token_ids)})
        ids = encode(text)
        # The rule in force, so ids that differ between two shells can be told apart.
        return CapabilityResult(output={"text": text, "token_ids": ids, "pieces": pieces(ids),
                                        "special_tokens": special_tokens_rule()})


    def report(self, outcome):
        from rich.table import Table

        output = outcome.result.output
        table = Table()
        table.add_column("#", justify="right")
        table.add_column("id", justify="right")
        table.add_column("piece")
        for index, (token_id, piece) in enumerate(zip(output["token_ids"], output["pieces"])):
            table.add_row(str(index), str(token_id), repr(piece))
        return [table, f"{len(output['token_ids'])} tokens"]


@hookimpl
def register_capabilities(register):
    register(Tokenize)
