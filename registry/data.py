"""Text data for training and evaluation: files, folders and JSONL.

Reading and tokenizing needs no TensorFlow (tiktoken does the work), so bad
input is refused before any model is loaded or anything is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry.errors import NotFoundError, UsageError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


@dataclass(frozen=True)
class TextData:
    documents: list[str]
    sources: list[str]

    @property
    def digest(self) -> str:
        """A short fingerprint of the texts, recorded beside metrics measured on them."""
        digest = hashlib.sha256()
        for document in self.documents:
            digest.update(document.encode("utf-8") + b"\0")
        return digest.hexdigest()[:16]


def read_texts(paths: list[str], *, text_field: str = "text") -> TextData:
    """Documents from `.txt`-like files, folders of them, and JSONL (one `text_field` per line)."""
    if not paths:
        raise UsageError("no data given: pass --data PATH (a text file, a folder of them, or JSONL)")
    documents: list[str] = []
    sources: list[str] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise NotFoundError(f"data file {raw} does not exist; check the path given to --data")
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + (".jsonl",)) if path.is_dir() else [path]
        if not files:
            raise UsageError(f"data folder {raw} holds no .txt, .md or .jsonl files")
        for file in files:
            documents.extend(_read_file(file, text_field))
            sources.append(str(file))
    if not any(document.strip() for document in documents):
        raise UsageError(f"data {', '.join(paths)} is empty; give files that contain text")
    return TextData(documents=[d for d in documents if d.strip()], sources=sources)


def _read_file(file: Path, text_field: str) -> list[str]:
    try:
        raw = file.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read data file {file}: {error.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"data file {file} is not UTF-8 text; convert it or leave it out") from None
    if file.suffix != ".jsonl":
        return [text]
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UsageError(f"{file} line {number} is not JSON; JSONL needs one object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise UsageError(f"{file} line {number} has no string field {text_field!r}; choose the field with --text-field")
        documents.append(record[text_field])
    return documents


def tokenize_documents(data: TextData) -> list[list[int]]:
    from backends.tokenizer import encode_batch

    return encode_batch(data.documents)


def pack_blocks(documents: list[list[int]], block_length: int, end_of_text: int) -> np.ndarray:
    """Join documents with the end-of-text token and cut into blocks of `block_length` ids."""
    stream: list[int] = []
    for ids in documents:
        stream.extend(ids)
        stream.append(end_of_text)
    count = len(stream) // block_length
    if count == 0:
        raise UsageError(
            f"the data has {len(stream)} tokens, fewer than one block of {block_length}; give more text or a smaller --seq-len"
        )
    return np.asarray(stream[: count * block_length], dtype=np.int32).reshape(count, block_length)
