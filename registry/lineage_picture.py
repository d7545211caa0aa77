"""Draw a lineage graph as a PNG (matplotlib, no display), for the MLflow UI.

Nodes are laid out by generation (roots on the left); each node shows its
reference, operation and perplexity, each edge its operation.
"""

from __future__ import annotations

from pathlib import Path


def draw(graph: dict, destination: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = {node["ref"]: node for node in graph["nodes"]}
    parents: dict[str, list[str]] = {ref: [] for ref in nodes}
    for edge in graph["edges"]:
        parents.setdefault(edge["child"], []).append(edge["parent"])

    depth: dict[str, int] = {}

    def generation(ref: str, seen=()) -> int:
        if ref not in depth:
            known = [p for p in parents.get(ref, []) if p in nodes and p not in seen]
            depth[ref] = 1 + max((generation(p, seen + (ref,)) for p in known), default=-1)
        return depth[ref]

    columns: dict[int, list[str]] = {}
    for ref in nodes:
        columns.setdefault(generation(ref), []).append(ref)
    position = {ref: (column, -row) for column, refs in columns.items() for row, ref in enumerate(refs)}

    width = max(4.0, 3.2 * len(columns))
    height = max(2.0, 1.3 * max(len(refs) for refs in columns.values()))
    figure, axes = plt.subplots(figsize=(width, height), dpi=100)
    for edge in graph["edges"]:
        if edge["parent"] in position and edge["child"] in position:
            (x0, y0), (x1, y1) = position[edge["parent"]], position[edge["child"]]
            axes.annotate("", xy=(x1 - 0.32, y1), xytext=(x0 + 0.32, y0),
                          arrowprops={"arrowstyle": "->", "color": "#555555"})
            axes.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.08, edge["operation"], ha="center", fontsize=8, color="#555555")
    root = graph.get("root")
    for ref, (x, y) in position.items():
        node = nodes[ref]
        label = f"{ref}\n{node['operation']}"
        if "perplexity" in node["metrics"]:
            label += f"\nppl {node['metrics']['perplexity']:,.1f}"
        axes.text(x, y, label, ha="center", va="center", fontsize=8,
                  bbox={"boxstyle": "round", "facecolor": "#ffe8b0" if ref == root else "#e8f0ff", "edgecolor": "#333333"})
    axes.set_xlim(-0.6, max(columns) + 0.6)
    axes.set_ylim(-max(len(refs) for refs in columns.values()) + 0.4, 0.6)
    axes.axis("off")
    figure.tight_layout()
    figure.savefig(destination)
    plt.close(figure)
    return destination
