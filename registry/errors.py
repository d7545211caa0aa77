"""Exceptions the CLI maps to exit codes, and the two helpers that keep their messages on one line.

`UsageError` is bad usage or bad input: the user can fix it. The CLI prints its
message on one line and exits 2. `RegistryError` is any other failure (exit 1).

Every layer raises these, `backends` included: this is the one module of
`registry` that `backends` may import (see `[tool.importlinter]` in pyproject.toml).

Example:
    >>> shown(42)
    'int 42'
    >>> one_line(ValueError("no such file"))
    'ValueError: no such file'
"""


class RegistryError(Exception):
    """A failure that is not the user's input (exit code 1)."""

    exit_code = 1


class UsageError(RegistryError):
    """Bad usage or bad input: one line that names the problem and the fix (exit code 2)."""

    exit_code = 2


class RunFailed(RegistryError):
    """Work that started and failed on its own terms (a diverged loss): recorded as a FAILED run.

    `result` holds what the capability measured before it stopped (settings,
    curves); the core logs it to a FAILED MLflow run and registers nothing.
    """

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class NotFoundError(UsageError):
    """A reference, file or plugin that does not exist."""


SHOWN_CHARACTERS = 60  # of a refused input, so that the one-line message stays readable


def shown(text) -> str:
    """`text` quoted for a one-line message: escapes visible, and cut when long."""
    if not isinstance(text, str):
        return f"{type(text).__name__} {ascii(text)[:SHOWN_CHARACTERS]}"
    if len(text) <= SHOWN_CHARACTERS:
        return ascii(text)
    return f"{text[:SHOWN_CHARACTERS]!a}... ({len(text):,} characters)"


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line, for error messages and the `plugins` table."""
    message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
