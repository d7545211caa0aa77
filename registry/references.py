"""References to variants: `NAME` (latest), `NAME/3`, `NAME@alias`.

Names and aliases are plain ASCII (letters, digits and a little punctuation)
because they travel through MLflow's REST paths and `models:/` URIs, SQL
filters and file listings: nothing in them may read as a path step (`..`,
`/`, `\\`), a URL escape (`%`), a query or fragment (`?`, `#`), or look like a
different name (Unicode look-alikes, invisible or control characters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import UsageError, shown

MAX_NAME_LENGTH = 100
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ALIAS_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")
# MLflow keeps these for itself: "latest" and "v<digits>" name versions.
RESERVED_ALIASES = re.compile(r"(latest|v\d+)", re.IGNORECASE)
# MLflow stores versions as integers; a larger number can name no version and overflows SQL integers.
MAX_VERSION = 2**31 - 1


@dataclass(frozen=True)
class Reference:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"invalid model name {shown(name)}: use 1-{MAX_NAME_LENGTH} ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name.endswith(".") or ".." in name:
        raise UsageError(f"invalid model name {shown(name)}: it may not end with '.' or hold '..'; "
                         "use letters, digits, '.', '_' or '-'")
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
        raise UsageError(f"invalid alias {shown(alias)}: use 1-100 ASCII letters, digits, '_' or '-', "
                         "starting with a letter or '_'")
    if RESERVED_ALIASES.fullmatch(alias):
        raise UsageError(f"alias {alias!r} is reserved by MLflow; choose another, such as 'champion'")
    return alias


def check_version(version: str, reference: str) -> int:
    # str.isdigit() also accepts superscripts and other scripts' digits, which int() refuses or reads
    # as a different number: only ASCII digits name a version.
    if not (version.isascii() and version.isdigit()) or len(version) > len(str(MAX_VERSION)) \
            or version != str(int(version)) or not 1 <= int(version) <= MAX_VERSION:
        raise UsageError(f"invalid version in {shown(reference)}: give NAME/VERSION with VERSION a whole number "
                         f"from 1 to {MAX_VERSION}")
    return int(version)


def parse(reference: str) -> Reference:
    """Parse `NAME`, `NAME/VERSION` or `NAME@ALIAS`.

    >>> parse("shakespeare@champion")
    Reference(name='shakespeare', version=None, alias='champion')
    """
    if not isinstance(reference, str):
        raise UsageError(f"a model reference is text, not {shown(reference)}: give NAME, NAME/VERSION or NAME@ALIAS")
    if not reference:
        raise UsageError("empty model reference: give NAME, NAME/VERSION or NAME@ALIAS")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return Reference(check_name(name), alias=check_alias(alias))
    if "/" in reference:
        name, version = reference.split("/", 1)
        return Reference(check_name(name), version=check_version(version, reference))
    return Reference(check_name(reference))


def check_import_source(name: str, source: str) -> None:
    """NAME is a valid name and SOURCE, when it is written as a path, exists: judged before
    TensorFlow loads (seconds) or the home is touched."""
    import os

    from backends.model_files import looks_like_path
    from registry.data import check_path
    from registry.errors import NotFoundError

    check_name(name)
    if not source:
        raise UsageError("empty source: give a checkpoint folder, a KerasHub preset name or hf://org/repo")
    check_path(source, "SOURCE")  # NUL bytes, over-long names, disguised separators
    if looks_like_path(source) and not os.path.lexists(os.path.expanduser(source)):
        raise NotFoundError(f"{source} does not exist; give a checkpoint folder, a KerasHub preset name or hf://org/repo")
