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
