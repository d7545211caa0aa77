"""Exceptions the CLI maps to exit codes, and the two helpers that keep their messages on one line.

`UsageError` is bad usage or bad input: the user can fix it. The CLI prints its
message on one line and exits 2. `RegistryError` is any other failure (exit 1).

Every layer raises these, `backends` included: this is the one module of
`registry` that `backends` may import (see `[tool.importlinter]` in pyproject.toml).

`masked` hides the secrets a text may carry (a URL's password, a token from
the environment) before the text is shown, logged or recorded.

Example:
    >>> shown(42)
    'int 42'
    >>> one_line(ValueError("no such file"))
    'ValueError: no such file'
    >>> masked("cannot connect to postgresql://team:hunter2@db.example/registry")
    'cannot connect to postgresql://team:***@db.example/registry'
"""

import os
import re


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
    """``Type: message`` on one line, secrets masked, for error messages and the `plugins` table."""
    message = "; ".join(line.strip() for line in masked(str(error)).splitlines() if line.strip())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


MASK = "***"  # what SQLAlchemy's render_as_string(hide_password=True) shows
# `scheme://user:password@`: the password runs to the last '@' before the host's '/' (a password
# may hold an unescaped '@'); the user name stays readable, as SQLAlchemy and MLflow show it.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@'\"]*:)[^\s/'\"]*@")
# `?password=...`, `&token=...`: credentials a database URL or a signed link can carry in its query.
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|token|access_token|api_key|apikey|secret|sig|signature)=)"
                           r"[^&\s#'\"]+", re.IGNORECASE)
# A Hugging Face access token as written anywhere (hf_ and 30 or more letters and digits).
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
# Environment variables that hold a secret by their name: HF_TOKEN, MLFLOW_TRACKING_PASSWORD,
# MLFLOW_TRACKING_TOKEN, PGPASSWORD, AWS_SECRET_ACCESS_KEY, DATABRICKS_TOKEN, ...
# Matched against all the names at once, one a line: a scan per write of the CLI's output stays cheap.
_SECRET_VARIABLE = re.compile(
    r"^(?:PGPASSWORD|TOKEN|PASSWORD|[^\n]*_(?:TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|ACCESS_KEY))$",
    re.IGNORECASE | re.MULTILINE)
# Shorter values (a flag such as "1" or "true") would mask ordinary words all over a message.
_SHORTEST_MASKED_VALUE = 6


def secret_values() -> list[str]:
    """The values of this process's secret environment variables, longest first."""
    names = _SECRET_VARIABLE.findall("\n".join(os.environ))
    values = {os.environ.get(name, "") for name in names}
    return sorted((v for v in values if len(v) >= _SHORTEST_MASKED_VALUE), key=len, reverse=True)


def masked(text: str) -> str:
    """`text` with every secret it carries shown as ``***``.

    Masked: a URL's password (``postgresql://team:***@db/registry``,
    ``http://alice:***@mlflow.example:5000``), credentials in a URL's query
    (``?password=***``), Hugging Face tokens, and the value of any secret
    environment variable (``HF_TOKEN``, ``MLFLOW_TRACKING_PASSWORD``,
    ``MLFLOW_TRACKING_TOKEN``, ``PGPASSWORD``, ...) wherever it appears.
    The CLI's output passes through it (`registry.terminal.MaskedStream`), and
    so do the MLflow params and tags the registry records and its log lines.
    """
    if not isinstance(text, str) or not text:
        return text
    # Each pattern runs only where its marker is present: `list --json` of a big store is megabytes.
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda match: f"{match.group(1)}{MASK}@", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(lambda match: f"{match.group(1)}{MASK}", text)
    if "hf_" in text:
        text = _HF_TOKEN.sub(MASK, text)
    if len(text) < _SHORTEST_MASKED_VALUE:  # a streamed token: too short to hold a secret's value
        return text
    for value in secret_values():
        if value in text:
            text = text.replace(value, MASK)
    return text
