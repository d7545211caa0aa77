"""What reaches the terminal: the command's own output and errors, nothing from TensorFlow, absl, XLA or Keras.

Each case runs `gpt2reg` in a fresh interpreter, as a user's shell would: the chatter
comes from TensorFlow's start-up, which happens once per process. The runner also
reports which heavy packages the command imported, so a test can tell that bad input
was refused before TensorFlow was loaded (what makes the refusal immediate).
"""

from __future__ import annotations

import re
import textwrap

import pytest

from tests.conftest import REPO
from tests.registry.conftest import HEAVY

STARTUP_LINE = re.compile(r"^([IWEF]0000 |WARNING: All log messages)|oneDNN|cuda drivers", re.MULTILINE)


def test_a_successful_generate_prints_only_its_text(run_cli, imported_home):
    # Through Keras: the silence is not for want of TensorFlow (the float32 default decodes without it).
    result = run_cli("generate", "fx", "The meaning of", "--max-new-tokens", "4", "--runtime", "keras",
                     "--home", imported_home)
    assert result.code == 0, result
    assert result.stdout.startswith("The meaning of") and len(result.stdout) > len("The meaning of\n"), result
    assert "tensorflow" in result.imported, result
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
    result = run_cli(*flag, "generate", "fx", "Hello", "--max-new-tokens", "1", "--runtime", "keras",
                     "--home", imported_home, env=env)
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
    args = ["generate", "fx", "Hello", "--max-new-tokens", "1", "--runtime", "keras", "--home", imported_home]

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

