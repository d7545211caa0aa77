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


def write_splits(folder: Path, held_out_every: int = 10) -> tuple[Path, Path, str]:
    """Write train.txt and heldout.txt (every n-th document held out) into `folder`."""
    texts, origin = documents()
    folder.mkdir(parents=True, exist_ok=True)
    train = [t for i, t in enumerate(texts) if i % held_out_every]
    heldout = [t for i, t in enumerate(texts) if not i % held_out_every]
    train_file, heldout_file = folder / "train.txt", folder / "heldout.txt"
    train_file.write_text("\n\n".join(train), encoding="utf-8")
    heldout_file.write_text("\n\n".join(heldout), encoding="utf-8")
    return train_file, heldout_file, origin
