"""References to variants: `NAME` (latest), `NAME/3`, `NAME@alias`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import UsageError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ALIAS_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")
# MLflow keeps these for itself: "latest" and "v<digits>" name versions.
RESERVED_ALIASES = re.compile(r"(latest|v\d+)", re.IGNORECASE)


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
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name.endswith("."):
        raise UsageError(
            f"invalid model name {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
        raise UsageError(f"invalid alias {alias!r}: use letters, digits, '_' or '-', starting with a letter or '_'")
    if RESERVED_ALIASES.fullmatch(alias):
        raise UsageError(f"alias {alias!r} is reserved by MLflow; choose another, such as 'champion'")
    return alias


def parse(reference: str) -> Reference:
    """Parse `NAME`, `NAME/VERSION` or `NAME@ALIAS`.

    >>> parse("shakespeare@champion")
    Reference(name='shakespeare', version=None, alias='champion')
    """
    if not isinstance(reference, str) or not reference:
        raise UsageError("empty model reference: give NAME, NAME/VERSION or NAME@ALIAS")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return Reference(check_name(name), alias=check_alias(alias))
    if "/" in reference:
        name, version = reference.split("/", 1)
        check_name(name)
        if not version.isdigit() or int(version) < 1 or version != str(int(version)):
            raise UsageError(f"invalid version in {reference!r}: give NAME/VERSION with VERSION a positive integer")
        return Reference(check_name(name), version=int(version))
    return Reference(check_name(reference))
