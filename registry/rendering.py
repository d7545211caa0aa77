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
    fast = _fitted_plain_table(rows, width, out) if title is None else None
    if fast is not None:
        return fast
    unbounded = out.options.update_width(1_000_000)
    longest_ref = max((len(row["ref"]) for row in rows), default=0)
    columns = list(VARIANT_COLUMNS)
    dropped = iter(DROPPED_FIRST)
    while True:
        table = Table(title=title)
        for column in columns:
            is_ref = column == "ref"
            # Should even the reference alone not fit, it folds onto more lines rather than lose characters.
            table.add_column(column, justify="right" if column in RIGHT_ALIGNED else "left",
                             no_wrap=not is_ref, overflow="fold" if is_ref else "ellipsis",
                             min_width=longest_ref if is_ref and len(columns) > 1 else None)
        for row in rows:
            table.add_row(*(row[column] for column in columns))
        if out.measure(table, options=unbounded).maximum <= width or len(columns) == 1:
            return table
        columns.remove(next(dropped))


RIGHT_ALIGNED = ("parameters", "size", "perplexity")


def _fitted_plain_table(rows, width, out):
    """The variant table as rich would draw it, with the same columns dropped, drawn without rich's
    layout engine, or None where rich has to lay it out (the reference alone is too wide, or the
    terminal cannot show the box characters).

    Every cell is plain ASCII kept whole on one line, so a column is as wide as its widest cell and
    each line is known without measuring: 10,000 variants take rich about 10 s to measure and draw,
    and this a few hundredths of that.
    """
    if not out.encoding.lower().startswith("utf"):
        return None
    columns = list(VARIANT_COLUMNS)
    widths = {column: max([len(column)] + [len(row[column]) for row in rows]) for column in columns}
    dropped = iter(DROPPED_FIRST)
    # Each column has one space of padding on either side and a border on its right; the table one on its left.
    while sum(widths[column] + 3 for column in columns) + 1 > width:
        if len(columns) == 1:
            return None
        columns.remove(next(dropped))
    return _PlainTable([(column, widths[column], column in RIGHT_ALIGNED) for column in columns], rows)


class _PlainTable:
    """Lines of a rich `Table` with its default box (heavy head), drawn directly; see `_fitted_plain_table`."""

    def __init__(self, columns, rows):
        self.columns = columns  # (name, width, right-aligned)
        self.rows = rows

    def _cells(self, values):
        return [f" {value.rjust(width) if right else value.ljust(width)} "
                for value, (_, width, right) in zip(values, self.columns)]

    def _rule(self, left, fill, joint, right):
        return left + joint.join(fill * (width + 2) for _, width, _ in self.columns) + right

    def _head(self):
        from rich.segment import Segment
        from rich.style import Style

        bold = Style(bold=True)
        yield Segment(self._rule("┏", "━", "┳", "┓") + "\n")
        yield Segment("┃")
        for cell in self._cells([name for name, _, _ in self.columns]):
            yield Segment(cell, bold)
            yield Segment("┃")
        yield Segment("\n" + self._rule("┡", "━", "╇", "┩") + "\n")

    def _body(self):
        """The rows' lines and the bottom rule, each ending in a newline."""
        names = [name for name, _, _ in self.columns]
        for row in self.rows:
            yield "│" + "│".join(self._cells([row[name] for name in names])) + "│\n"
        yield self._rule("└", "─", "┴", "┘") + "\n"

    def __rich_console__(self, console, options):
        from rich.segment import Segment

        yield from self._head()
        yield from map(Segment, self._body())  # a segment per line: rich splits a segment's text at each newline

    def print_to(self, out) -> None:
        """What `out.print(self)` prints, the rows written straight to the console's file: every line is
        whole and fits, and rich would pass each through its layout (0.07 s for 10,000 rows)."""
        out.print(_Segments(list(self._head())), end="")
        out.file.write("".join(self._body()))
        out.file.flush()



class _Segments:
    """Segments already laid out, for `Console.print`."""

    def __init__(self, segments):
        self.segments = segments

    def __rich_console__(self, console, options):
        yield from self.segments


def print_variant_table(variants, out=None) -> None:
    """`out.print(variant_table(variants))`, a long plain table's rows written in one piece (see `_PlainTable`)."""
    out = out if out is not None else console()
    table = variant_table(variants)
    if isinstance(table, _PlainTable):
        table.print_to(out)
    else:
        out.print(table)


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(size)


# A straight stretch of a family (each variant the only child of the one before) longer than this is
# drawn as its first and last CHAIN_ENDS generations and one line for those between: a chain a thousand
# generations deep would otherwise indent past any terminal (and past Python's recursion limit).
LONGEST_CHAIN_DRAWN = 10
CHAIN_ENDS = 3


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

    children, parent_count = {}, {}
    for edge in graph.edges:  # indexed once: asking the graph per node reads every edge each time
        children.setdefault(edge.parent, []).append(edge)
        parent_count[edge.child] = parent_count.get(edge.child, 0) + 1

    def only_child(ref):
        """The edge to `ref`'s one child when that child has no other parent, else None."""
        edges = children.get(ref, [])
        return edges[0] if len(edges) == 1 and parent_count.get(edges[0].child) == 1 else None

    def chain(edge, seen):
        """The straight stretch of edges from `edge` on (each child the only one of its parent), up to the root."""
        stretch, inside = [edge], {edge.child}
        while edge.child != graph.root and (edge := only_child(edge.child)) is not None \
                and edge.child not in seen and edge.child not in inside:
            stretch.append(edge)
            inside.add(edge.child)
        return stretch

    tree = Tree(f"lineage of {graph.root}")
    # Depth first with a stack of (branch, ref, refs on the path to it): no recursion, whatever the depth.
    stack = [(tree.add(label(graph.nodes[ref])), ref, frozenset([ref])) for ref in graph.roots()]
    stack.reverse()
    while stack:
        branch, ref, seen = stack.pop()
        later = []
        for edge in children.get(ref, []):
            if edge.child in seen:
                continue
            stretch = chain(edge, seen)
            if len(stretch) <= LONGEST_CHAIN_DRAWN:
                stretch = stretch[:1]
            shown = stretch[:CHAIN_ENDS] + stretch[-CHAIN_ENDS:] if len(stretch) > 1 else stretch
            at, path = branch, seen
            for index, step in enumerate(shown):
                if index == CHAIN_ENDS:
                    middle = stretch[CHAIN_ENDS:-CHAIN_ENDS]
                    at = at.add(f"… {len(middle):,} generations, {middle[0].child} to {middle[-1].child}, "
                                "each the only child of the one before (all of them in --json)")
                    path |= {e.child for e in middle}
                at, path = at.add(label(graph.nodes[step.child], step)), path | {step.child}
            later.append((at, shown[-1].child, path))
        stack.extend(reversed(later))
    return tree
