"""Where a registry lives: its MLflow store, artifact root and lineage database.

`--home DIR`, else `$GPT2REG_HOME`, else `./mlruns`. Both stores can instead
be URLs for team use (`tracking_uri="http://host:5000"`,
`lineage_url="postgresql://..."`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from registry.errors import UsageError

DEFAULT_HOME = "mlruns"


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
            tracking_uri=tracking_uri or f"sqlite:///{path / 'mlflow.db'}",
            lineage_url=lineage_url or f"sqlite:///{path / 'lineage.db'}",
        )

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
        return self.tracking_uri.startswith("sqlite:")

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
        self.artifact_root.mkdir(exist_ok=True)
        self.staging.mkdir(exist_ok=True)
