"""Keep TensorFlow, XLA, absl and Keras chatter off the terminal.

TensorFlow's C++ side logs through absl before anyone calls
`absl::InitializeLog`, so its start-up notes (oneDNN, CUDA probing, CPU
features) go straight to file descriptor 2 whatever `TF_CPP_MIN_LOG_LEVEL`
says. They are caught at that level, only while they can happen: an import
hook points fd 2 at a temporary file during the first import of each noisy
package (and of the first tensor allocation in TFLite, which logs once per
process); afterwards fd 2 is restored and whatever was written meanwhile goes
back to it, less the libraries' log lines, so a traceback or a note that is not
theirs still reaches the user. `muted()` does the same around any other call.
The Python side (the `tensorflow`, `absl` and Keras loggers, `warnings` raised
in those packages) is filtered by level and module.

Outside those moments fd 2 is left alone: progress bars, the CLI's own
warnings and errors, and tracebacks under GPT2REG_DEBUG=1 reach the terminal
as written. A process killed by a signal while fd 2 is redirected loses what
it wrote there.

`GPT2REG_VERBOSE=1` (or `gpt2reg --verbose`) lets everything through, for
debugging TensorFlow itself.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from typing import Iterator

VERBOSE_ENV = "GPT2REG_VERBOSE"

# Importing any of these the first time runs native start-up code that logs to fd 2.
NOISY_PACKAGES = frozenset({
    "tensorflow", "tf_keras", "keras", "keras_hub", "tensorflow_text", "tf2onnx", "ai_edge_litert", "jax", "jaxlib",
})
# Calls whose first run in a process logs to fd 2 from C++ (TFLite's "Created TensorFlow Lite XNNPACK
# delegate for CPU.", once per process, at the first tensor allocation): muted until one has finished.
NOISY_FIRST_CALLS = {
    module: (("Interpreter", "allocate_tensors"), ("Interpreter", "invoke"), ("SignatureRunner", "__call__"))
    for module in ("ai_edge_litert.interpreter", "tensorflow.lite.python.interpreter")
}
NOISY_LOGGERS = ("tensorflow", "absl", "keras", "keras_hub", "h5py", "jax", "tf2onnx")
# `warnings` attributed to these modules (keras raises most of its own with stacklevel inside keras_hub or keras).
NOISY_WARNING_MODULES = r"(tensorflow|tf_keras|keras|keras_hub|absl|jax|jaxlib|tf2onnx|ml_dtypes|h5py)(\..*)?$"

_ABSL_LINE = re.compile(
    rb"^(?:"
    rb"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s:\]]+:\d+\] .*"  # absl: I0000 00:00:1712.5 123 port.cc:153] ...
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\] .*"  # TensorFlow's older own format
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    rb"|(?:INFO|VERBOSE|WARNING): .*"  # TFLite's minimal logger (WARNING: covers absl's pre-init note too)
    rb"|(?:WARNING|INFO|ERROR):(?:tensorflow|absl):.*"
    rb")\r?$"
)

_verbose: bool | None = None  # None: follow the environment variable
_installed = False
_saved_levels: dict[str, int] = {}
_warning_filter: tuple | None = None
_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_capture = None


def verbose() -> bool:
    """Whether the libraries may talk: `gpt2reg --verbose` or GPT2REG_VERBOSE set to anything but 0/false/no/off."""
    if _verbose is not None:
        return _verbose
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def install() -> None:
    """Filter the libraries' loggers and warnings, and mute the first import of each noisy package."""
    global _installed, _warning_filter
    if _installed or verbose():
        return
    _installed = True
    # Read by TensorFlow's own C++ logging (after absl is set up) and by its Python side at import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        _saved_levels[name] = logger.level
        # Errors too: TensorFlow logs some that are not (unused TensorArrays), and a real one comes
        # with an exception the CLI reports on its own line.
        logger.setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=NOISY_WARNING_MODULES)
    _warning_filter = warnings.filters[0]
    if not any(isinstance(finder, _MutedImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MutedImports())


def set_verbose(value: bool) -> None:
    """Let everything through (True) or filter again (False); undoes `install` where it can."""
    global _verbose, _installed
    _verbose = value
    if value:
        os.environ[VERBOSE_ENV] = "1"  # child processes (mlflow serve, workers) follow
        if _installed:
            if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3":
                os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
            for name, level in _saved_levels.items():
                logging.getLogger(name).setLevel(level)
            with contextlib.suppress(ValueError):
                warnings.filters.remove(_warning_filter)
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _MutedImports)]
            _installed = False
    else:
        os.environ.pop(VERBOSE_ENV, None)
        install()


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """While the block runs, fd 2 goes to a temporary file; afterwards all but absl-style log lines come back.

    Nested and concurrent blocks share one redirection (the last to leave restores fd 2).
    Another thread's stderr output written meanwhile is delayed, not lost.
    """
    if verbose() or not _enter():
        yield
        return
    try:
        yield
    finally:
        _leave()


def chatter_removed(text: bytes) -> bytes:
    """`text` without the lines TensorFlow, absl and XLA log; everything else as it was."""
    return b"".join(line for line in text.splitlines(keepends=True) if not _ABSL_LINE.match(line.rstrip(b"\n")))


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


def _enter() -> bool:
    global _depth, _saved_fd, _capture
    with _lock:
        if _depth:
            _depth += 1
            return True
        try:
            capture = tempfile.TemporaryFile()
        except OSError:
            return False
        _flush()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all (a daemon): nothing to protect
            capture.close()
            return False
        os.dup2(capture.fileno(), 2)
        _saved_fd, _capture, _depth = saved, capture, 1
        return True


def _leave() -> None:
    global _depth, _saved_fd, _capture
    with _lock:
        _depth -= 1
        if _depth:
            return
        _flush()
        os.dup2(_saved_fd, 2)
        os.close(_saved_fd)
        capture, _saved_fd, _capture = _capture, None, None
    try:
        capture.seek(0)
        kept = chatter_removed(capture.read())
    finally:
        capture.close()
    while kept:
        try:
            kept = kept[os.write(2, kept):]
        except OSError:
            return


class _MutedLoader(importlib.abc.Loader):
    """Runs the wrapped loader's module code with fd 2 muted; everything else is the wrapped loader's."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            with muted():
                self._loader.exec_module(module)
            _mute_first_calls(module)
        finally:
            # The module keeps its real loader (importlib.resources and pkgutil ask it for files).
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _MutedImports(importlib.abc.MetaPathFinder):
    """Finds a noisy top-level package as the other finders would, and mutes its first import."""

    _finding = threading.local()

    def find_spec(self, name, path, target=None):
        if name not in NOISY_PACKAGES and name not in NOISY_FIRST_CALLS:
            return None
        if verbose() or getattr(self._finding, "active", False):  # the latter: a finder asking again
            return None
        self._finding.active = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._finding.active = False
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _MutedLoader(spec.loader)
        return spec


def _mute_first_calls(module) -> None:
    methods = NOISY_FIRST_CALLS.get(module.__name__, ())
    done = threading.Event()  # one per module: each native library logs its note once per process

    def muting(method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            if done.is_set():
                return method(*args, **kwargs)
            with muted():
                result = method(*args, **kwargs)
            done.set()
            return result

        return call

    for class_name, method_name in methods:
        cls = getattr(module, class_name, None)
        method = getattr(cls, method_name, None) if cls is not None else None
        if method is not None:
            setattr(cls, method_name, muting(method))
