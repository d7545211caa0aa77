"""Exceptions the CLI maps to exit codes.

`UsageError` is bad usage or bad input: the user can fix it. The CLI prints its
message on one line and exits 2. `RegistryError` is any other failure (exit 1).
"""


class RegistryError(Exception):
    """A failure that is not the user's input (exit code 1)."""

    exit_code = 1


class UsageError(RegistryError):
    """Bad usage or bad input: one line that names the problem and the fix (exit code 2)."""

    exit_code = 2


class NotFoundError(UsageError):
    """A reference, file or plugin that does not exist."""
