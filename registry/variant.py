"""One registered model version, as the SDK reads it and the CLI and the recorder pass it around.

A `Variant` is facts: what the lineage store holds about one version. The one thing it
can do beyond reporting them, `load()`, it does through the `loader` that whoever read
it handed it (the SDK hands its `Registry.load`); a variant carries no registry.

Example:
    >>> from registry import Registry
    >>> v = Registry("mlruns").get("quickstart/1")
    >>> v.ref, v.uri
    ('quickstart/1', 'models:/quickstart/1')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.errors import UsageError

if TYPE_CHECKING:
    from registry.lineage import LineageStore, LineageVariant


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
    # How `load()` loads it, given by the reader that made it (the SDK's `Registry.load`).
    # Not a fact about the variant: left out of comparisons, the repr and `to_dict()`.
    loader: Callable[[Variant], Any] | None = field(default=None, repr=False, compare=False, kw_only=True)

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
        if self.loader is None:
            raise UsageError(f"{self.ref} was not read from a registry, so it cannot load itself; "
                             "use Registry.load(variant)")
        return self.loader(self)

    def to_dict(self) -> dict[str, Any]:
        return _document(self.name, self.version, self.kind, self.operation, list(self.parents), self.parameters,
                         self.size_bytes, self.content_hash, dict(self.metrics), dict(self.config), dict(self.tags),
                         self.run_id, self.created_at)


def _document(name: str, version: int, kind: str, operation: str, parents: list[str], parameters: int,
              size_bytes: int, content_hash: str, metrics: dict, config: dict, tags: dict, run_id: str | None,
              created_at) -> dict[str, Any]:
    """A variant as `show --json` prints it (`Variant.to_dict`, `document_from_row`: one layout)."""
    return {
        "ref": f"{name}/{version}",
        "name": name,
        "version": version,
        "kind": kind,
        "operation": operation,
        "parents": parents,
        "parameters": parameters,
        "size_bytes": size_bytes,
        "content_hash": content_hash,
        "metrics": metrics,
        "config": config,
        "tags": tags,
        "run_id": run_id,
        "uri": f"models:/{name}/{version}",
        "created_at": created_at.isoformat() if created_at else None,
    }


def document_from_row(row: LineageVariant, parents: Iterable[str]) -> dict[str, Any]:
    """`variant_from_row(row, parents).to_dict()`, made without the `Variant` between: a listing of
    thousands prints them, and the object and its copies were a fifth of `list --json`. The row's
    dicts go into the document as they are: for rows read afresh (`registry.lineage.reads`)."""
    return _document(row.name, row.version, row.kind, row.operation, list(parents), row.parameters,
                     row.size_bytes, row.content_hash, row.metrics, row.config, row.tags, row.run_id, row.created_at)


def variant_from_row(row: LineageVariant, parents: Iterable[str], *,
                     loader: Callable[[Variant], Any] | None = None) -> Variant:
    """The `Variant` of a lineage row, given the refs of its parents (oldest edge first)."""
    return Variant(
        name=row.name, version=row.version, kind=row.kind, operation=row.operation, parents=tuple(parents),
        parameters=row.parameters, size_bytes=row.size_bytes, content_hash=row.content_hash,
        run_id=row.run_id, artifact_uri=row.artifact_uri, metrics=dict(row.metrics), config=dict(row.config),
        tags=dict(row.tags), created_at=row.created_at, loader=loader,
    )


def read_variant(store: LineageStore, row: LineageVariant, *,
                 loader: Callable[[Variant], Any] | None = None) -> Variant:
    """The `Variant` of a row of `store`, its parents read from the same store."""
    parents = (edge.parent_ref for edge in store.parents(row.name, row.version))
    return variant_from_row(row, parents, loader=loader)
