"""Where a registry lives: its MLflow store, artifact root and lineage database.

`--home DIR`, else `$GPT2REG_HOME`, else `./mlruns`. Both stores can instead
be URLs for team use (`tracking_uri="http://host:5000"`,
`lineage_url="postgresql://..."`). The home folder is then still where this
machine keeps its work folders and its cache of downloaded variants.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from registry.errors import MASK, UsageError, masked

DEFAULT_HOME = "mlruns"
# Tracking URIs that name a database MLflow opens itself (no tracking server between).
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


@dataclass(frozen=True)
class Home:
    path: Path
    tracking_uri: str
    lineage_url: str

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None, *, tracking_uri: str | None = None,
                lineage_url: str | None = None) -> "Home":
        path = Path(home or os.environ.get("GPT2REG_HOME") or DEFAULT_HOME).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise UsageError(f"home {path} is a file; give a folder with --home")
        if (tracking_uri is None or lineage_url is None) and any(c in str(path) for c in "?#%"):
            # The stores' sqlite URLs would read '?' and '#' as URL syntax and write elsewhere.
            raise UsageError(f"home {str(path)!r} contains '?', '#' or '%', which a database URL cannot hold; "
                             "give a folder without them with --home")
        return cls(
            path=path,
            tracking_uri=with_installed_driver(_checked_uri(tracking_uri, "--tracking-uri"))
            if tracking_uri else f"sqlite:///{path / 'mlflow.db'}",
            lineage_url=with_installed_driver(_checked_uri(lineage_url, "--lineage-url"))
            if lineage_url else f"sqlite:///{path / 'lineage.db'}",
        )

    def __repr__(self) -> str:  # a URL's password stays out of tracebacks and logs
        return (f"Home(path={str(self.path)!r}, tracking_uri={shown_url(self.tracking_uri)!r}, "
                f"lineage_url={shown_url(self.lineage_url)!r})")

    @property
    def artifact_root(self) -> Path:
        return self.path / "artifacts"

    @property
    def staging(self) -> Path:
        """Work folders of runs in progress; anything left here after a crash is debris."""
        return self.path / ".staging"

    @property
    def runtimes(self) -> Path:
        """Decoder graphs built for onnxruntime and LiteRT, by weights digest (safe to delete)."""
        return self.path / "runtimes"

    @property
    def checkpoints(self) -> Path:
        """Training checkpoints of unfinished runs, by run fingerprint (kept for --resume)."""
        return self.path / "checkpoints"

    @property
    def is_local(self) -> bool:
        """Whether MLflow's store is a SQLite file of this machine (the home's own, by default)."""
        return self.tracking_uri.startswith("sqlite:")

    @property
    def tracking_server(self) -> bool:
        """Whether MLflow is reached through a tracking server (which then also holds the artifacts)."""
        return _scheme(self.tracking_uri) not in _DATABASE_SCHEMES

    def exists(self) -> bool:
        if not self.lineage_url.startswith("sqlite:"):
            return True
        return (self.path / "lineage.db").exists()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the home's lock file (an exclusive `flock`) while the block runs.

        Taken while a store is opened, so that processes opening a brand-new home
        at once run MLflow's schema migrations one after another, not together
        (together, every one but the first fails on "duplicate column").
        """
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.tracking_server:  # a tracking server keeps the artifacts itself
            self.artifact_root.mkdir(exist_ok=True)
        self.staging.mkdir(exist_ok=True)


def _scheme(url: str) -> str:
    """`postgresql` for `postgresql+psycopg2://...`: the database, whatever the driver."""
    return url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""


def _checked_uri(url: str, option: str) -> str:
    scheme = _scheme(url)
    if scheme in ("", "file") or ("://" not in url and not scheme.startswith("databricks")):
        # MLflow would take a bare path for its file store, which it refuses since 3.13.
        raise UsageError(f"{option} {shown_url(url)!r} is not a URL: give an MLflow server (http://host:5000) "
                         "or a database (postgresql://user@host/db, sqlite:////path/to/file.db), "
                         "or use --home DIR for a local registry")
    return url


def with_installed_driver(url: str) -> str:
    """A `postgresql://` URL spelled with the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3, while the `postgres`
    extra installs psycopg2: the driver is named explicitly so that both work.
    Any other URL is returned as given. With only psycopg2 installed,
    `postgresql://team@db.example/registry` becomes
    `postgresql+psycopg2://team@db.example/registry`.
    """
    import importlib.util

    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in ("postgresql", "postgres"):
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise UsageError("a postgresql:// store needs a PostgreSQL driver: pip install 'gpt2-registry[postgres]' "
                     "(psycopg2-binary)")


def shown_url(url: str) -> str:
    """The URL with any password masked, for messages and documents.

    `postgresql://team:***@db.example/registry`, as SQLAlchemy's
    `render_as_string(hide_password=True)` shows it; http(s) URLs and query
    credentials too (see `registry.errors.masked`). A URL given without its
    scheme (`team:secret@db.example`) is masked all the same.
    """
    credentials, at, address = url.rpartition("@")
    if at and "://" not in url and ":" in credentials:
        url = f"{credentials.split(':', 1)[0]}:{MASK}@{address}"
    return masked(url)


def connection_problem(url: str, error: BaseException, option: str) -> str:
    """One line naming why a database server refused a connection, and what to do about it."""
    cause = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    reason = masked(lines[0]) if lines else type(cause).__name__  # a driver may quote its connection string
    if "does not exist" in reason:
        fix = f"create it (`createdb NAME` on the server) or correct {option}"
    elif "authentication failed" in reason or "password" in reason:
        fix = f"check the user and password in {option}"
    else:
        fix = f"start the database server, or correct {option}"
    return f"cannot connect to the database {shown_url(url)}: {reason.rstrip('.')}; {fix}"
