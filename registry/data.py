"""Text data for training and evaluation: files, folders and JSONL; and the checks every path a user gives passes.

Reading and tokenizing needs no TensorFlow (tiktoken does the work), so bad
input is refused before any model is loaded or anything is written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry.errors import NotFoundError, UsageError, shown

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")

# Characters that only disguise a path: drawn like '/', '\\' or '.', they are ordinary name
# characters to the file system, so `..／home` is one new folder, not a step up.
PATH_LOOKALIKES = {
    "\uff0f": "/", "\u2215": "/", "\u2044": "/", "\u29f8": "/", "\u2571": "/",
    "\uff3c": "\\", "\u2216": "\\", "\u29f9": "\\", "\u2572": "\\", "\ufe68": "\\",
    "\u2024": ".", "\u2025": "..", "\uff0e": ".", "\ufe52": ".",
}
# Invisible characters that reorder or hide what a path shows (bidirectional controls, zero-width
# space, word joiner, byte-order mark). Zero-width (non-)joiners stay allowed: Persian and emoji
# spelling needs them.
PATH_INVISIBLES = frozenset("\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                            "\u2060\u2066\u2067\u2068\u2069\u180e\ufeff")
# URL escapes of '.', '/', '\\' and '%' itself (double encoding): a local path is never URL-decoded,
# so they can only be an attempt to smuggle a step up past a check that decodes.
PATH_URL_ESCAPES = re.compile(r"%(2e|2f|5c|25)", re.IGNORECASE)
NAME_MAX_BYTES = 255  # one path component (Linux, macOS, ext4, APFS); pathconf refines it where it can
PATH_MAX_BYTES = 4095


def _character(ch: str) -> str:
    return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')})"


def check_path(raw, option: str) -> Path:
    """`raw` as a Path, or one line naming what no file system takes or what disguises the path.

    Refused: NUL and other control characters, text that is not UTF-8, look-alikes of '/', '\\'
    and '.', invisible direction and zero-width characters, URL escapes of '.', '/', '\\' and '%',
    backslashes (a Windows separator, an ordinary character here), and names or paths longer than
    the file system holds.
    """
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if not isinstance(raw, str):
        raise UsageError(f"{option} takes a path as text, not {type(raw).__name__}")
    if not raw:
        raise UsageError(f"{option} is empty; give a path")
    if len(raw) > PATH_MAX_BYTES:
        raise UsageError(f"{option} is {len(raw):,} characters long, more than the {PATH_MAX_BYTES:,} bytes a path "
                         "may hold; choose a shorter path")
    for ch in raw:
        category = unicodedata.category(ch)
        if category == "Cc":
            raise UsageError(f"{option} {shown(raw)} holds the control character {_character(ch)}; "
                             "retype the path without it")
        if category == "Cs":
            raise UsageError(f"{option} {shown(raw)} is not valid UTF-8 text; rename the file with a UTF-8 name")
        if ch in PATH_INVISIBLES:
            raise UsageError(f"{option} {shown(raw)} holds the invisible character {_character(ch)}; "
                             "retype the path without it")
        if ch in PATH_LOOKALIKES:
            raise UsageError(f"{option} {shown(raw)} holds {_character(ch)}, which looks like "
                             f"{PATH_LOOKALIKES[ch]!r} but is a letter of a name; type a plain {PATH_LOOKALIKES[ch]!r}")
    if os.sep == "/" and "\\" in raw:
        raise UsageError(f"{option} {raw} holds a backslash; separate folders with '/'")
    escape = PATH_URL_ESCAPES.search(raw)
    if escape:
        raise UsageError(f"{option} {raw} holds the URL escape {escape.group(0)!r}; paths are not URL-decoded, "
                         "give the path as plain text")
    path = Path(raw).expanduser()
    encoded = os.fsencode(str(path))
    if len(encoded) > PATH_MAX_BYTES:
        raise UsageError(f"{option} is {len(encoded):,} bytes long, more than the {PATH_MAX_BYTES:,} a path may hold; "
                         "choose a shorter path")
    limit = _name_max(path)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise UsageError(f"{option} has a name of {len(os.fsencode(part)):,} bytes ({part[:40]}...), more than "
                             f"the {limit} the file system allows; choose a shorter name")
    return path


def _name_max(path: Path) -> int:
    for folder in [path, *path.parents]:
        try:
            return min(os.pathconf(folder, "PC_NAME_MAX"), NAME_MAX_BYTES)
        except (OSError, ValueError, AttributeError):
            continue
    return NAME_MAX_BYTES


def regular_file(raw, option: str, described: str, fix: str) -> Path:
    """`raw` checked as a path to a regular file: else one line, "`described` RAW is a folder; `fix`"."""
    file = check_path(raw, option)
    kind = path_kind(file, option)
    if kind != "file":
        problem = {"missing": "does not exist", "folder": "is a folder"}.get(kind, "is a device, pipe or socket")
        error = NotFoundError if kind == "missing" else UsageError
        raise error(f"{described} {raw} {problem}; {fix}")
    return file


def path_kind(path: Path, option: str) -> str:
    """"file" (regular), "folder", "other" (device, pipe, socket) or "missing"; unreachable paths are refused."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        if error.errno == errno.ENOTDIR:
            return "missing"
        reason = "a loop of symbolic links" if error.errno == errno.ELOOP else (error.strerror or str(error))
        raise UsageError(f"cannot reach {option} {path}: {reason}; check the path and its permissions") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return "other"


def read_text_file(path: Path, option: str) -> str:
    """The UTF-8 text of a regular file (a byte-order mark dropped), or one line saying why not."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {option} {path}: {error.strerror or error}; check its permissions") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UsageError(f"{option} {path} is not UTF-8 text (byte {error.start:,} is 0x{raw[error.start]:02x}); "
                         "convert it to UTF-8 or leave it out") from None


def json_line(line: str, where: str):
    """One JSONL line parsed; what `json` cannot read (bad syntax, too deep, huge numbers) is one line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise UsageError(f"{where} is not valid JSON ({error.msg}); one JSON object a line") from None
    except (ValueError, RecursionError) as error:
        # Nesting deeper than Python's stack, or an integer of more than 4,300 digits.
        problem = "nests too deeply" if isinstance(error, RecursionError) else "holds a number too long to read"
        raise UsageError(f"{where} {problem}; one flat JSON object a line") from None


def jsonl_lines(text: str):
    """(number, line) of JSONL text: lines end at '\\n' only; JSON strings may hold U+2028 and friends."""
    return enumerate(text.split("\n"), 1)


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value) -> str | None:
    """The first lone surrogate in the strings of a JSON value (JSON's "\\ud800" escapes make them), else None.

    Python keeps them in a str, but they are not Unicode text: encoding them as UTF-8 fails.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found = LONE_SURROGATE.search(item)
            if found:
                return found.group(0)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


@dataclass(frozen=True)
class TextData:
    documents: list[str]
    sources: list[str]

    @property
    def digest(self) -> str:
        """A short fingerprint of the texts as the model reads them, recorded beside metrics measured on them."""
        from backends.tokenizer import rule_digest

        digest = hashlib.sha256()
        for document in self.documents:
            digest.update(document.encode("utf-8") + b"\0")
        digest.update(rule_digest(self.documents))
        return digest.hexdigest()[:16]


def existing_data_path(raw, option: str) -> tuple[Path, str]:
    """`raw` (a value of `option`) as a Path to a file or folder that exists, and which of the two it is."""
    path = check_path(raw, option)
    kind = path_kind(path, option)
    if kind == "missing":
        raise NotFoundError(f"{raw} does not exist; check the path given to {option}")
    if kind == "other":
        raise UsageError(f"{option} {raw} is a device, pipe or socket, not a file; give a text file, a folder or JSONL")
    return path, kind


def read_texts(paths: list[str], *, text_field: str = "text") -> TextData:
    """Documents from `.txt`-like files, folders of them, and JSONL (one `text_field` per line)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise UsageError("no data given: pass --data PATH (a text file, a folder of them, or JSONL)")
    documents: list[str] = []
    sources: list[str] = []
    for raw in paths:
        path, kind = existing_data_path(raw, "--data")
        files = _folder_files(path, raw) if kind == "folder" else [path]
        if not files:
            raise UsageError(f"data folder {raw} holds no .txt, .md or .jsonl files")
        for file in files:
            documents.extend(_read_file(file, text_field))
            sources.append(str(file))
    if not any(document.strip() for document in documents):
        raise UsageError(f"data {', '.join(map(str, paths))} is empty; give files that contain text")
    return TextData(documents=[d for d in documents if d.strip()], sources=sources)


def _folder_files(folder: Path, raw) -> list[Path]:
    try:
        return sorted(p for p in folder.rglob("*")
                      if p.suffix in TEXT_SUFFIXES + (".jsonl",) and path_kind(p, "a data file") == "file")
    except OSError as error:
        raise UsageError(f"cannot list data folder {raw}: {error.strerror or error}; check its permissions") from None


def _read_file(file: Path, text_field: str) -> list[str]:
    text = read_text_file(file, "data file")
    if file.suffix != ".jsonl":
        return [text]
    documents = []
    for number, line in jsonl_lines(text):
        if not line.strip():
            continue
        where = f"{file} line {number}"
        record = json_line(line, where)
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise UsageError(f"{where} has no string field {text_field!r}; choose the field with --text-field")
        surrogate = lone_surrogate(record[text_field])
        if surrogate:
            raise UsageError(f"{where}: {text_field!r} holds the lone surrogate \\u{ord(surrogate):04x}, which is "
                             "not Unicode text; write the character itself or its surrogate pair")
        documents.append(record[text_field])
    return documents


def tokenize_documents(data: TextData) -> list[list[int]]:
    """Each document's ids, under the one rule every text a user gives follows (`backends.tokenizer`)."""
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
