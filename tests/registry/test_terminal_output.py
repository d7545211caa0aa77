"""What reaches the terminal: the command's own output and errors, nothing from TensorFlow, absl, XLA or Keras.

Each case runs `gpt2reg` in a fresh interpreter, as a user's shell would: the chatter
comes from TensorFlow's start-up, which happens once per process. The runner also
reports which heavy packages the command imported, so a test can tell that bad input
was refused before TensorFlow was loaded (what makes the refusal immediate).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

# A line any of these libraries would print: absl's prefix (I0000 00:00:...), its pre-init notice,
# the Python loggers' "WARNING:tensorflow:", Keras and TensorFlow warnings (their file paths),
# retracing notes, XLA, oneDNN, CUDA probing and TFLite's delegate note. Case matters for "keras":
# the CLI's own messages name "KerasHub", a library's path or logger is lower case.
LIBRARY_LINE = re.compile(
    r"tensorflow|TensorFlow|oneDNN|cuda|CUDA|absl|XLA|[IWEF]0000 |retracing|keras|"
    r"WARNING: All log messages|XNNPACK|cpu_feature_guard"
)
STARTUP_LINE = re.compile(r"^([IWEF]0000 |WARNING: All log messages)|oneDNN|cuda drivers", re.MULTILINE)
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


def test_a_successful_generate_prints_only_its_text(run_cli, imported_home):
    result = run_cli("generate", "fx", "The meaning of", "--max-new-tokens", "4", "--home", imported_home)
    assert result.code == 0, result
    assert result.stdout.startswith("The meaning of") and len(result.stdout) > len("The meaning of\n"), result
    assert "tensorflow" in result.imported, result  # the model ran, so the silence is not for want of TensorFlow
    assert result.library_lines() == [], result
    assert result.stderr == "", result


@pytest.mark.parametrize(
    "args, message",
    [
        (["import", "x", "/nonexistent/dir"], "/nonexistent/dir does not exist"),
        (["generate", "no-such-model", "hello"], "no variant no-such-model"),
        (["finetune", "fx", "--data", "missing.txt", "--steps", "1"],
         "missing.txt does not exist; check the path given to --data"),
        (["quantize", "fx", "--mode", "int3"], "unknown --mode 'int3'"),
        (["export", "fx", "--format", "pdf", "--out", "exported"], "unknown --format 'pdf'"),
        (["lora", "fx", "--data", "{readme}", "--device", "warp-drive"], "no plugin provides device 'warp-drive'"),
    ],
)
def test_bad_input_is_one_line_refused_before_tensorflow_loads(run_cli, imported_home, args, message):
    args = [a.format(readme=REPO / "README.md") for a in args]
    result = run_cli(*args, "--home", imported_home)
    assert result.code == 2, result
    # One line, the CLI's own: no room for a library's (the message itself may name formats like keras).
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result
    assert message in result.stderr, result
    assert not set(HEAVY) & set(result.imported), result


def test_with_home_before_the_command_a_bad_path_is_refused_before_tensorflow_loads(run_cli, tmp_path):
    home = tmp_path / "never-made"
    result = run_cli("--home", home, "import", "x", "/nonexistent/dir")
    assert result.code == 2, result
    assert result.stderr == ("error: /nonexistent/dir does not exist; give a checkpoint folder, a KerasHub preset "
                             "name or hf://org/repo\n"), result
    assert result.imported == [], result
    assert not home.exists()


@pytest.mark.parametrize("how", ["--verbose", "GPT2REG_VERBOSE=1"])
def test_verbose_lets_the_libraries_talk(run_cli, imported_home, how):
    flag, env = ([how], None) if how.startswith("--") else ([], dict([how.split("=")]))
    result = run_cli(*flag, "generate", "fx", "Hello", "--max-new-tokens", "1", "--home", imported_home, env=env)
    assert result.code == 0, result
    assert result.library_lines(), result


# A broken install: keras_hub writes to stderr and fails while it imports, which happens while
# fd 2 is muted; the note and the traceback must still reach the user.
BROKEN_KERAS_HUB = """
    import os, sys, warnings
    warnings.warn("a library's own warning, filtered out")
    os.write(2, b"keras_hub: a note written by native code\\n")
    raise ImportError("this keras_hub is broken")
"""


def test_a_traceback_while_tensorflow_loads_still_reaches_the_terminal(run_cli, imported_home, tmp_path):
    fake = tmp_path / "broken-site"
    (fake / "keras_hub").mkdir(parents=True)
    (fake / "keras_hub" / "__init__.py").write_text(textwrap.dedent(BROKEN_KERAS_HUB))
    args = ["generate", "fx", "Hello", "--max-new-tokens", "1", "--home", imported_home]

    debug = run_cli(*args, env={"GPT2REG_DEBUG": "1"}, pythonpath=[fake])
    assert debug.code == 1, debug
    assert "Traceback (most recent call last)" in debug.stderr, debug
    assert "ImportError: this keras_hub is broken" in debug.stderr, debug
    assert "keras_hub: a note written by native code" in debug.stderr, debug
    assert "filtered out" not in debug.stderr, debug
    # TensorFlow was imported (by keras) in the same muted stretch: its start-up lines stay out.
    assert not STARTUP_LINE.search(debug.stderr), debug

    plain = run_cli(*args, pythonpath=[fake])
    assert plain.code == 1, plain
    errors = [line for line in plain.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "this keras_hub is broken" in errors[0] and "GPT2REG_DEBUG=1" in errors[0], plain

