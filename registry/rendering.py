"""What the CLI draws for people with rich: the variant table and the lineage tree.

Below the CLI so that other code that prints for people (the quickstart) draws
the same way without importing the command line. rich is imported on first use.

Example:
    >>> from registry import Registry
    >>> graph = Registry("mlruns").lineage_graph("quickstart")
    >>> console().print(lineage_tree(graph))
"""

from __future__ import annotations


def console():
    from rich.console import Console

    return Console(highlight=False)


VARIANT_COLUMNS = ("ref", "operation", "parents", "parameters", "size", "perplexity", "content hash")
# When the table is wider than the terminal (80 columns when piped), whole columns go, least useful
# first, rather than every cell being cut; the reference is what a user types next, so it always stays.
DROPPED_FIRST = ("content hash", "parents", "parameters", "size", "operation", "perplexity")


def variant_table(variants, title=None):
    """The variants as a table that fits the terminal with every cell whole."""
    from rich.table import Table

    rows = []
    for v in variants:
        perplexity = v.metrics.get("perplexity")
        rows.append(dict(zip(VARIANT_COLUMNS, (
            v.ref, v.operation, ", ".join(v.parents) or "-", f"{v.parameters:,}", human_size(v.size_bytes),
            f"{perplexity:,.2f}" if perplexity is not None else "-", v.content_hash[:12],
        ))))
    out = console()
    width = out.width
    unbounded = out.options.update_width(1_000_000)
    longest_ref = max((len(row["ref"]) for row in rows), default=0)
    columns = list(VARIANT_COLUMNS)
    dropped = iter(DROPPED_FIRST)
    while True:
        table = Table(title=title)
        for column in columns:
            is_ref = column == "ref"
            # Should even the reference alone not fit, it folds onto more lines rather than lose characters.
            table.add_column(column, justify="right" if column in ("parameters", "size", "perplexity") else "left",
                             no_wrap=not is_ref, overflow="fold" if is_ref else "ellipsis",
                             min_width=longest_ref if is_ref and len(columns) > 1 else None)
        for row in rows:
            table.add_row(*(row[column] for column in columns))
        if out.measure(table, options=unbounded).maximum <= width or len(columns) == 1:
            return table
        columns.remove(next(dropped))


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(size)


def lineage_tree(graph):
    """A `registry.lineage_graph.LineageGraph` as a rich tree, each variant under its parents."""
    from rich.tree import Tree

    def label(node, edge=None):
        perplexity = node.metrics.get("perplexity")
        text = f"[bold]{node.ref}[/bold] ({node.operation})  size {human_size(node.size_bytes or 0)}"
        if perplexity is not None:
            text += f"  perplexity {perplexity:,.2f}"
        if edge and "perplexity" in (edge.metric_deltas or {}):
            text += f" ({edge.metric_deltas['perplexity']:+,.2f})"
        if node.ref == graph.root:
            text += "  ◀"
        return text

    tree = Tree(f"lineage of {graph.root}")

    def add(branch, ref, seen):
        for edge in graph.children(ref):
            if edge.child in seen:
                continue
            child_branch = branch.add(label(graph.nodes[edge.child], edge))
            add(child_branch, edge.child, seen | {edge.child})

    for ref in graph.roots():
        add(tree.add(label(graph.nodes[ref])), ref, {ref})
    return tree
