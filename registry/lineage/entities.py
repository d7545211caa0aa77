"""What the lineage store hands out: frozen, session-free snapshots of rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class LineageVariant:
    """One registered model variant, identified by `ref` ("NAME/VERSION")."""

    id: int
    name: str
    version: int
    kind: str
    operation: str
    config: dict[str, Any]
    parameters: int
    size_bytes: int
    content_hash: str
    run_id: str | None
    artifact_uri: str | None
    metrics: dict[str, float]
    tags: dict[str, str]
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class LineageEdge:
    """Parent -> child derivation. Refs, not ids: ids mean nothing outside one database."""

    parent_ref: str
    child_ref: str
    operation: str
    role: str
    settings: dict[str, Any]
    metric_deltas: dict[str, float]
