"""One registered model version, as the SDK reads it and the CLI and the recorder pass it around.

Example:
    >>> from registry import Registry
    >>> v = Registry("mlruns").get("quickstart/1")
    >>> v.ref, v.uri
    ('quickstart/1', 'models:/quickstart/1')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Variant:
    """One registered model version (`NAME/VERSION`) with its lineage facts."""

    name: str
    version: int
    kind: str
    operation: str
    parents: tuple[str, ...]
    parameters: int
    size_bytes: int
    content_hash: str
    run_id: str | None
    artifact_uri: str | None
    metrics: dict[str, float]
    config: dict[str, Any]
    tags: dict[str, str]
    created_at: Any
    # The registry.sdk.Registry that read it (`load()` goes through it); this module sits below the SDK.
    _registry: Any = field(repr=False, compare=False, default=None)

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def uri(self) -> str:
        """The MLflow model URI: `mlflow.pyfunc.load_model(v.uri)`."""
        return f"models:/{self.name}/{self.version}"

    @property
    def parent(self) -> str | None:
        return self.parents[0] if self.parents else None

    def load(self):
        """The variant as a KerasHub `GPT2CausalLM`."""
        return self._registry.load(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "operation": self.operation,
            "parents": list(self.parents),
            "parameters": self.parameters,
            "size_bytes": self.size_bytes,
            "content_hash": self.content_hash,
            "metrics": dict(self.metrics),
            "config": dict(self.config),
            "tags": dict(self.tags),
            "run_id": self.run_id,
            "uri": self.uri,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }
