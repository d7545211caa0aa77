"""The embedded corpus: text every Python installation already has.

The standard library's documentation topics (`pydoc_data.topics`, the text of
`help()` on language topics, about 140,000 GPT-2 tokens) are the default;
where a distribution strips them, the standard library's own source files
stand in. Nothing is downloaded.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path


def documents() -> tuple[list[str], str]:
    """The corpus as documents, and a name saying where it came from."""
    try:
        from pydoc_data.topics import topics

        texts = [topics[key] for key in sorted(topics)]
        if sum(len(t) for t in texts) > 100_000:
            return texts, "pydoc_data.topics (Python documentation)"
    except ImportError:
        pass
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))[:200]
    return [f.read_text(encoding="utf-8", errors="replace") for f in files], f"{stdlib} (*.py)"


def write_splits(folder: Path, held_out_every: int = 10, heldout_tokens: int | None = None) -> tuple[Path, Path, str]:
    """Write train.txt and heldout.txt (every n-th document held out) into `folder`.

    `heldout_tokens` keeps held-out documents, in order, while they fit in about that
    many tokens (at least one document); the ones left out are not trained on either.
    """
    texts, origin = documents()
    folder.mkdir(parents=True, exist_ok=True)
    train = [t for i, t in enumerate(texts) if i % held_out_every]
    heldout = [t for i, t in enumerate(texts) if not i % held_out_every]
    if heldout_tokens is not None:
        from backends.tokenizer import encode_batch

        kept, total = [], 0
        for text, ids in zip(heldout, encode_batch(heldout)):
            if kept and total + len(ids) > heldout_tokens:
                continue  # a long document; a shorter one later may still fit
            kept.append(text)
            total += len(ids)
        heldout = kept
    train_file, heldout_file = folder / "train.txt", folder / "heldout.txt"
    train_file.write_text("\n\n".join(train), encoding="utf-8")
    heldout_file.write_text("\n\n".join(heldout), encoding="utf-8")
    return train_file, heldout_file, origin


def write_continuation_task(destination: Path, text_file: Path, count: int = 64, choices: int = 4) -> Path:
    """A multiple-choice task from `text_file`: which of `choices` continuations follows a passage?

    Each example is a paragraph's first 24 words; the right choice is its next
    8 words, the others are the same 8 words shuffled. Every choice holds the
    same words, so only word order (and the passage) tells them apart: a model
    that learnt nothing scores chance, 1/`choices`. Built the same way on every run.
    """
    import json
    import random

    rng = random.Random(0)
    lines = []
    for paragraph in text_file.read_text(encoding="utf-8").split("\n\n"):
        words = paragraph.split()
        right = words[24:32]
        if len(words) < 32 or len(set(right)) < 4:
            continue
        options = [" " + " ".join(right)]
        while len(options) < choices:
            shuffled = " " + " ".join(rng.sample(right, len(right)))
            if shuffled not in options:
                options.append(shuffled)
        rng.shuffle(options)
        answer = options.index(" " + " ".join(right))
        lines.append(json.dumps({"prompt": " ".join(words[:24]), "choices": options, "answer": answer}))
        if len(lines) == count:
            break
    destination.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return destination
