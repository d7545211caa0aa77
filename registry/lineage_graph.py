"""The lineage graph, typed: what `gpt2reg lineage` prints, `--json` gives and the pictures draw.

One reading of the lineage store becomes one `LineageGraph`; the renderers
(`registry.rendering.lineage_tree`, `registry.lineage_picture.draw`) read it,
and `LineageGraph.to_dict()` is the JSON document (`lineage --json`, the
`lineage.json` artifact).

Example:
    >>> from registry import Registry
    >>> graph = Registry("mlruns").lineage_graph("quickstart-merge")
    >>> [edge.operation for edge in graph.children("quickstart/1")]
    ['finetune']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.variant import Variant, read_variant

if TYPE_CHECKING:
    from registry.lineage import LineageStore


@dataclass(frozen=True)
class LineageNode:
    """One variant in a graph: what the renderers show, and its whole document when read from the store."""

    ref: str
    operation: str
    metrics: dict[str, float] = field(default_factory=dict)
    size_bytes: int | None = None
    document: dict[str, Any] | None = None  # `Variant.to_dict()`; None for a variant not registered yet

    @classmethod
    def of(cls, variant: Variant) -> LineageNode:
        return cls(ref=variant.ref, operation=variant.operation, metrics=dict(variant.metrics),
                   size_bytes=variant.size_bytes, document=variant.to_dict())

    def to_dict(self) -> dict[str, Any]:
        if self.document is not None:
            return dict(self.document)
        return {"ref": self.ref, "operation": self.operation, "metrics": dict(self.metrics)}


@dataclass(frozen=True)
class LineageEdge:
    """One (parent, child, operation) with the variant's role and, when recorded, the settings and deltas."""

    parent: str
    child: str
    operation: str
    role: str = "parent"
    settings: dict[str, Any] | None = None
    metric_deltas: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"parent": self.parent, "child": self.child, "operation": self.operation,
                                    "role": self.role}
        if self.settings is not None:
            document["settings"] = self.settings
        if self.metric_deltas is not None:
            document["metric_deltas"] = self.metric_deltas
        return document


@dataclass
class LineageGraph:
    """Variants by ref and the edges among them, around one `root` variant."""

    root: str
    nodes: dict[str, LineageNode] = field(default_factory=dict)
    edges: list[LineageEdge] = field(default_factory=list)
    # parent ref -> children left out of a drawing (a busy parent shows its newest ones)
    omitted_children: dict[str, int] = field(default_factory=dict)
    # facts about the reading kept with the JSON (when it began, how many children there were)
    extras: dict[str, Any] = field(default_factory=dict)

    def add(self, other: LineageGraph) -> None:
        """Take in `other`'s nodes and the edges this graph does not have yet."""
        self.nodes.update(other.nodes)
        self.edges.extend(edge for edge in other.edges if edge not in self.edges)

    def children(self, ref: str) -> list[LineageEdge]:
        return [edge for edge in self.edges if edge.parent == ref]

    def parents(self, ref: str) -> list[LineageEdge]:
        return [edge for edge in self.edges if edge.child == ref]

    def roots(self) -> list[str]:
        """The refs with no parent in the graph, in the graph's order."""
        children = {edge.child for edge in self.edges}
        return [ref for ref in self.nodes if ref not in children]

    def to_dict(self) -> dict[str, Any]:
        document = {"root": self.root, "nodes": [node.to_dict() for node in self.nodes.values()],
                    "edges": [edge.to_dict() for edge in self.edges]}
        if self.omitted_children:
            document["omitted_children"] = dict(self.omitted_children)
        document.update(self.extras)
        return document


def read_lineage(store: LineageStore, variant: Variant, *, descendants: bool = True) -> LineageGraph:
    """`variant`'s family in `store`: its ancestors and (unless ``descendants=False``) its descendants."""
    rows, edges = store.graph(variant.name, variant.version, descendants=descendants)
    return LineageGraph(
        root=variant.ref,
        nodes={row.ref: LineageNode.of(read_variant(store, row)) for row in rows},
        edges=[LineageEdge(parent=e.parent_ref, child=e.child_ref, operation=e.operation, role=e.role,
                           settings=e.settings, metric_deltas=e.metric_deltas) for e in edges],
    )
