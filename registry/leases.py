"""Leases: how `gpt2reg doctor` tells work in progress from what a dead process left behind.

A process takes a lease before it makes anything: a staging folder, an MLflow
run, a model version, a download. Everything it makes then names the lease (a
staging or download folder by its name, a run, model version or registered
model by its tag ``gpt2reg.lease`` = ``host:pid:lease id``), and `gpt2reg doctor`
leaves alone whatever names a lease that is still live.

- On this machine a lease is a file, ``<home>/.leases/<lease id>``, that the
  working process holds open under an exclusive `flock` for as long as the work
  lives. The kernel releases the lock when the process dies, however it dies, so
  a killed process's work is debris again at once. The file appears already
  locked (it is locked under a temporary name, then renamed), so no reader ever
  finds it unlocked while its owner lives.
- Through a tracking server (or any store other than the home's own SQLite
  files) the run also carries a heartbeat, the tag ``gpt2reg.heartbeat`` (UTC
  time), renewed every `heartbeat_seconds()` by a thread of the working process.
  A run whose heartbeat is younger than `MISSED_BEATS` periods is live; a run
  from another machine without a fresh heartbeat is stale.

Example (a lease is live while its block runs, and gone after it):

    >>> import tempfile
    >>> from registry.home import Home
    >>> home = Home.resolve(tempfile.mkdtemp())
    >>> with hold(home) as lease:
    ...     is_live(home, lease.tag)
    True
    >>> is_live(home, lease.tag)
    False
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from registry.errors import UsageError

if TYPE_CHECKING:
    from registry.home import Home

LEASE_TAG = "gpt2reg.lease"
HEARTBEAT_TAG = "gpt2reg.heartbeat"
HEARTBEAT_ENV = "GPT2REG_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 30.0
MISSED_BEATS = 3  # a heartbeat older than this many periods is a dead process's (or a lost machine's)
LEASE_ID = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger(__name__)

# The lease that covers each staging folder of this process, so that the recorder names
# the same lease on the run it starts in that folder.
_covering: dict[Path, "Lease"] = {}


def leases_folder(home: "Home") -> Path:
    return home.path / ".leases"


def this_host() -> str:
    return socket.gethostname()


@dataclass
class Lease:
    id: str
    host: str
    pid: int
    path: Path
    _descriptor: int

    @property
    def tag(self) -> str:
        """What a run, model version or registered model made under this lease carries as ``gpt2reg.lease``."""
        return f"{self.host}:{self.pid}:{self.id}"

    def release(self) -> None:
        # Removed while still locked: a reader finds the file locked, or no file.
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._descriptor)


def take(home: "Home") -> Lease:
    """A new lease of this process, locked from the moment its file has its name."""
    folder = leases_folder(home)
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        lease_id = uuid.uuid4().hex
        partial = folder / f".{lease_id}.new"
        descriptor = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _names(partial, descriptor):
                # doctor --repair locked and removed it in the instant before our lock, as a dead
                # process's: start over under a new name.
                os.close(descriptor)
                continue
            os.write(descriptor, json.dumps({"host": this_host(), "pid": os.getpid(), "started": _now()}).encode())
            path = folder / lease_id
            os.rename(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            os.close(descriptor)
            raise
        return Lease(id=lease_id, host=this_host(), pid=os.getpid(), path=path, _descriptor=descriptor)


def _names(path: Path, descriptor: int) -> bool:
    """Whether `path` is still the file open as `descriptor`."""
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def hold(home: "Home") -> Iterator[Lease]:
    """A lease held while the block runs."""
    lease = take(home)
    try:
        yield lease
    finally:
        lease.release()


def cover(folder: Path, lease: Lease) -> None:
    """Note that `lease` covers `folder` (a staging folder), for `covering_lease`."""
    _covering[folder] = lease


def lease_of(folder: Path) -> Lease | None:
    """The lease `cover` noted for `folder`, if any."""
    return _covering.get(folder)


def uncover(folder: Path) -> None:
    _covering.pop(folder, None)


@contextmanager
def covering_lease(home: "Home", folder: Path) -> Iterator[Lease]:
    """The lease this process holds for `folder` (a staging folder), else a new one for the block."""
    lease = _covering.get(folder)
    if lease is not None:
        yield lease
        return
    with hold(home) as lease:
        yield lease


def lease_id_of(folder_name: str) -> str | None:
    """The lease id a work folder's name carries (``<lease id>-...``), if any."""
    match = re.search(r"(?:^|-)([0-9a-f]{32})-", folder_name)
    return match.group(1) if match else None


# ---------------------------------------------------------------- judging


def held(path: Path) -> bool | None:
    """Whether the lease file is locked by a live process (None: there is no such file).

    A file this process cannot open is taken as held: doctor must never remove what it cannot judge.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # closing releases the lock if it was taken
    return False


def folder_is_live(home: "Home", folder_name: str) -> bool:
    """Whether a staging or download folder's lease (named in the folder's name) is held."""
    lease_id = lease_id_of(folder_name)
    return bool(lease_id and held(leases_folder(home) / lease_id))


def is_live(home: "Home", lease_tag: str | None, heartbeat: str | None = None, *, now: float | None = None) -> bool:
    """Whether the work that carries `lease_tag` (and `heartbeat`, for a run) is still in progress.

    On this machine the lease file decides; where there is none here (work done through
    another home, or released) a process that is gone is dead and a running one is judged
    by its heartbeat, as work from another machine is.
    """
    if not lease_tag:
        return False
    host, _, rest = lease_tag.partition(":")
    pid_text, _, lease_id = rest.partition(":")
    if host == this_host() and LEASE_ID.fullmatch(lease_id):
        state = held(leases_folder(home) / lease_id)
        if state is not None:
            return state
        if not (pid_text.isdigit() and _process_exists(int(pid_text))):
            return False
    return heartbeat_is_fresh(heartbeat, now=now)


def heartbeat_is_fresh(heartbeat: str | None, *, now: float | None = None) -> bool:
    if not heartbeat:
        return False
    try:
        beat = datetime.fromisoformat(heartbeat)
    except ValueError:
        return False
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=timezone.utc)
    age = (now if now is not None else time.time()) - beat.timestamp()
    return age < MISSED_BEATS * heartbeat_seconds()


def dead_lease_files(home: "Home") -> list[Path]:
    """Lease files (and half-made ones) left by processes that ended without releasing them."""
    folder = leases_folder(home)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if held(path) is False)


def remove_dead_lease(path: Path) -> None:
    """Remove a lease file, once this process holds its lock (a dead owner's lease stays dead)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass  # taken again by now: not ours to remove
    finally:
        os.close(descriptor)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


# ---------------------------------------------------------------- heartbeat


def heartbeat_seconds() -> float:
    """The heartbeat period: `$GPT2REG_HEARTBEAT_SECONDS`, else 30 seconds."""
    text = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not text:
        return DEFAULT_HEARTBEAT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(f"{HEARTBEAT_ENV}={text!r} is not a number of seconds above 0; set it to e.g. 30, or unset it")
    return seconds


def heartbeat_now() -> str:
    return _now()


class Heartbeat:
    """Calls ``beat(now)`` every `period` seconds from a thread, between `start` and `stop`
    (no thread at all for a period of None: work whose lease file is judge enough).

    A beat that fails (a server that hiccups) is logged and tried again at the next period:
    the work itself goes on, and a heartbeat that stays away long makes the work stale.
    """

    def __init__(self, beat: Callable[[str], None], period: float | None):
        self.beat = beat
        self.period = period
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Heartbeat":
        if self.period is None:
            return self
        self._thread = threading.Thread(target=self._keep_beating, name="gpt2reg-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _keep_beating(self) -> None:
        while not self._stopped.wait(self.period):
            try:
                self.beat(_now())
            except Exception as error:
                log.debug("heartbeat not recorded: %s", error)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
