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

from registry.variant import Variant, variant_from_row

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
        # By key, not by `in self.edges`: that compares each new edge with every edge (a deep family has thousands).
        have = {_key(edge) for edge in self.edges}
        for edge in other.edges:
            if _key(edge) not in have:
                have.add(_key(edge))
                self.edges.append(edge)
        for ref in other.extras.get("oldest_drawn", ()):
            if ref not in self.extras.setdefault("oldest_drawn", []):
                self.extras["oldest_drawn"].append(ref)

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


def _key(edge: LineageEdge) -> tuple[str, str, str, str]:
    return edge.parent, edge.child, edge.operation, edge.role


def read_lineage(store: LineageStore, variant: Variant, *, descendants: bool = True,
                 generations: int | None = None) -> LineageGraph:
    """`variant`'s family in `store`: its ancestors and (unless ``descendants=False``) its descendants;
    with ``generations=N`` only those at most N generations away.

    Where that leaves older ancestors out, ``extras["oldest_drawn"]`` lists the variants whose parents
    are not in the graph although they have some (with ``descendants=False``).
    """
    rows, edges = store.graph(variant.name, variant.version, descendants=descendants, generations=generations)
    # The nodes' parents in one query: a descendant's other parents (a distillation's) may lie outside the family.
    parents = store.parent_refs(row.id for row in rows)
    graph = LineageGraph(
        root=variant.ref,
        nodes={row.ref: LineageNode.of(variant_from_row(row, parents.get(row.id, ()))) for row in rows},
        edges=[LineageEdge(parent=e.parent_ref, child=e.child_ref, operation=e.operation, role=e.role,
                           settings=e.settings, metric_deltas=e.metric_deltas) for e in edges],
    )
    if generations is not None and not descendants:
        cut = [ref for ref, node in graph.nodes.items()
               if any(parent not in graph.nodes for parent in (node.document or {}).get("parents", ()))]
        if cut:
            graph.extras["oldest_drawn"] = cut
    return graph
