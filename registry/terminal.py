"""What every `gpt2reg` command shares: the store options, the JSON switch, printing, early checks.

`registry.cli` (the hand-written commands) and `registry.commands` (the
commands made from capabilities' options) both build on it; plugins that add
commands of their own use `common`, `open_registry` and `emit` (also
importable from `registry.cli`).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Iterator

import click

from registry.errors import UsageError, masked


def _store_option(ctx, param, value):
    # The group and the command share ctx.meta: `gpt2reg --home A list` and `gpt2reg list --home A` both
    # land here, the command's own after the group's, so an option given to the command wins. A default
    # (an option not given) must not overwrite what the group received.
    if value is not None and ctx.get_parameter_source(param.name) is not click.core.ParameterSource.DEFAULT:
        ctx.meta[f"gpt2reg.{param.name}"] = value
    return value


def common(command):
    """Add --home, --tracking-uri, --lineage-url and --json to a command (the group takes them too)."""
    options = [
        click.option("--home", type=click.Path(file_okay=False), default=None, expose_value=False, callback=_store_option,
                     help="Registry home (default: $GPT2REG_HOME or ./mlruns)."),
        click.option("--tracking-uri", default=None, expose_value=False, callback=_store_option,
                     help="MLflow tracking server instead of the home's mlflow.db."),
        click.option("--lineage-url", default=None, expose_value=False, callback=_store_option,
                     help="SQLAlchemy URL of the lineage database instead of the home's lineage.db."),
        click.option("--json", "as_json", is_flag=True, default=False, expose_value=False, callback=_store_option,
                     help="Print one JSON document."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _meta(key, default=None):
    return click.get_current_context().meta.get(f"gpt2reg.{key}", default)


def as_json() -> bool:
    return bool(_meta("as_json", False))


def open_registry(progress: bool = False):
    from registry.sdk import Registry

    reporter = None
    if progress:
        from registry.progress import ProgressReporter

        reporter = ProgressReporter()
    return Registry(_meta("home"), tracking_uri=_meta("tracking_uri"), lineage_url=_meta("lineage_url"), progress=reporter)


class MaskedStream:
    """stdout or stderr with every secret masked on its way out (see `registry.errors.masked`).

    The CLI writes through it while a command runs, so that no table, document, warning,
    log line or error shows a URL's password or a token, whichever code formatted it.
    Each write is masked whole: the CLI and the libraries write a URL in one piece.
    """

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        return self._stream.write(masked(text))

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        if name == "buffer":  # bytes written there would bypass the mask: click then writes text here
            raise AttributeError(name)
        return getattr(self._stream, name)


@contextmanager
def masked_output() -> Iterator[None]:
    """Mask secrets in everything written to sys.stdout and sys.stderr while the block runs."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = MaskedStream(sys.stdout), MaskedStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams


def emit(document, human=None) -> None:
    """Print `document` as JSON under --json (or when there is no `human`), else call `human()`.

    `document` may be a function that makes it, called only under --json: a listing of thousands of
    variants should not build a document that the table then ignores.
    """
    if as_json() or human is None:
        click.echo(json_text(document() if callable(document) else document))
    else:
        human()


# Each record of a long list on one line: Python's C encoder writes those (json.dumps with indent
# falls back to the pure-Python one, 0.3 s for 10,000 variants against 0.06 s), and a record stays
# whole for grep. The envelope and everything else is indented as json.dumps(indent=2) does.
_ONE_LINE = json.JSONEncoder(separators=(", ", ": "), default=str)


def json_text(document) -> str:
    """`document` as indented JSON, with each object of a top-level list of objects on a line of its own:

        {
          "variants": [
            {"ref": "base/1", "name": "base", ...},
            {"ref": "base/2", "name": "base", ...}
          ]
        }
    """
    if not isinstance(document, dict):
        return json.dumps(document, indent=2, default=str)
    parts = []
    for key, value in document.items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            shown = "[\n    " + ",\n    ".join(map(_ONE_LINE.encode, value)) + "\n  ]"
        else:  # JSON escapes a newline inside a string, so every newline here is the layout's
            shown = json.dumps(value, indent=2, default=str).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(str(key))}: {shown}")
    return "{\n" + ",\n".join(parts) + "\n}" if parts else "{}"


# ---------------------------------------------------------------- checks before the heavy imports
# A command that loads a model imports TensorFlow (seconds); input that can be judged without it is
# judged first, so a typo is answered at once. The capabilities check the same things again.


def check_paths_exist(option: str, paths) -> None:
    """Each of `paths` (the values of `option`) names a file or folder that exists."""
    from registry.data import existing_data_path

    for raw in paths or ():
        existing_data_path(raw, option)


def check_device(device: str) -> None:
    """`device` is a built-in one, or a plugin besides the built-in one may provide it."""
    from backends.devices import DEVICES
    from registry import plugins

    if device in DEVICES:
        return
    if all(impl.plugin_name == "plugins.devices" for impl in plugins.implementations("select_strategy")):
        raise UsageError(f"no plugin provides device {device!r}; use {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")


class StreamPrinter:
    """Prints the first unfinished prompt's text as it comes; later prompts' text waits its turn."""

    def __init__(self):
        self.current = 0
        self.pending: dict[int, list[str]] = {}
        self.finished: set[int] = set()

    def __call__(self, event) -> None:
        self.pending.setdefault(event.row, []).append(event.text)
        if event.finish_reason is not None:
            self.finished.add(event.row)
        self._flush()

    def _flush(self) -> None:
        while True:
            pieces = self.pending.pop(self.current, [])
            if pieces:
                click.echo("".join(pieces), nl=False)
            if self.current not in self.finished:
                return
            click.echo()
            self.current += 1

    def finish(self) -> None:
        self._flush()
