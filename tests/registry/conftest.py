"""Fixtures of the registry tests: worker processes for the store, `gpt2reg` in a fresh interpreter."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.registry import store_only_plugin


@pytest.fixture(scope="module")
def forkserver():
    """A `multiprocessing` context whose workers fork from a server that has imported the store.

    The server is a fresh interpreter: on Python 3.11 it is not given the parent's
    `sys.path`, so PYTHONPATH names the repository, or the preload would fail
    silently and every worker would import MLflow again (seconds each).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(store_only_plugin.PRELOAD)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        yield context


# A line any of these libraries would print: absl's prefix (I0000 00:00:...), its pre-init notice,
# the Python loggers' "WARNING:tensorflow:", Keras and TensorFlow warnings (their file paths),
# retracing notes, XLA, oneDNN, CUDA probing and TFLite's delegate note. Case matters for "keras":
# the CLI's own messages name "KerasHub", a library's path or logger is lower case.
LIBRARY_LINE = re.compile(
    r"tensorflow|TensorFlow|oneDNN|cuda|CUDA|absl|XLA|[IWEF]0000 |retracing|keras|"
    r"WARNING: All log messages|XNNPACK|cpu_feature_guard"
)
HEAVY = ("tensorflow", "keras", "keras_hub")

# `gpt2reg ARGS` exactly as the console script runs it (registry.cli:main), then a note of the
# heavy packages it imported, written to a file so that stderr stays the command's own.
RUNNER = textwrap.dedent(
    """
    import json, sys
    report, args = sys.argv[1], sys.argv[2:]
    from registry.cli import main
    try:
        main(args)
    finally:
        loaded = sorted({name.split(".")[0] for name in sys.modules} & {"tensorflow", "keras", "keras_hub"})
        with open(report, "w") as out:
            json.dump(loaded, out)
    """
)


class Run:
    def __init__(self, done: subprocess.CompletedProcess, imported: list[str]):
        self.code, self.stdout, self.stderr, self.imported = done.returncode, done.stdout, done.stderr, imported

    def library_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if LIBRARY_LINE.search(line)]

    def __repr__(self):
        return (f"Run(code={self.code}, imported={self.imported}, stdout={self.stdout[-400:]!r}, "
                f"stderr={self.stderr[-1500:]!r})")


@pytest.fixture
def run_cli(tmp_path):
    def run(*args, env: dict | None = None, pythonpath: list[Path] = ()) -> Run:
        report = tmp_path / "imported.json"
        report.unlink(missing_ok=True)
        environment = dict(os.environ)
        # The settings under test are the CLI's own: nothing inherited from this test process
        # (which may have set TF_CPP_MIN_LOG_LEVEL itself by importing the backends).
        for name in ("TF_CPP_MIN_LOG_LEVEL", "GPT2REG_VERBOSE", "GPT2REG_DEBUG", "GRPC_VERBOSITY", "COLUMNS"):
            environment.pop(name, None)
        environment["PYTHONPATH"] = os.pathsep.join(
            [*map(str, pythonpath), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        environment.update(env or {})
        done = subprocess.run([sys.executable, "-c", RUNNER, str(report), *map(str, args)], capture_output=True,
                              text=True, env=environment, cwd=tmp_path, timeout=600)
        imported = json.loads(report.read_text()) if report.exists() else ["(the runner wrote no report)"]
        return Run(done, imported)

    return run
