"""Draw a lineage graph as a PNG, for the MLflow UI.

It reads the typed graph every renderer reads (`registry.lineage_graph`).
Nodes are laid out by generation (roots on the left, each column centred);
each node shows its reference, operation and perplexity. An edge names the
parent's role when it is not plain "parent" (a distillation's teacher and
student_init). The graph's ``root`` (the variant whose run holds the picture)
is highlighted. ``omitted_children`` (``{ref: count}``) adds one "+N more"
node under each variant whose children were left out to keep it readable.

Drawn with Pillow rather than matplotlib: a parent's picture is redrawn each
time a child is registered, and Pillow draws a busy one (24 children) in a
third of matplotlib's time (measured on 2 CPU cores: 0.07 s of CPU against
0.26 s), most of it in PNG compression.

Example:
    >>> draw(LineageGraph(root="base/1", nodes={"base/1": LineageNode(ref="base/1", operation="create")}),
    ...      Path("lineage.png"))
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

from registry.lineage_graph import LineageEdge, LineageGraph, LineageNode

SCALE = 2  # drawn at twice the size, then halved: smooth lines and text without an anti-aliasing renderer
COLUMN_WIDTH = 240  # pixels per generation
ROW_HEIGHT = 62  # pixels per node of the tallest column
MARGIN = 16
FONT_SIZE = 12
PADDING = 6  # between a node's text and its box
COLOURS = {"root": "#ffe8b0", "node": "#e8f0ff", "more": "#eeeeee", "line": "#555555", "border": "#333333"}
SNAP = 4  # a palette entry this close (in each channel) to a drawing colour becomes that colour


def draw(graph: LineageGraph, destination: Path) -> Path:
    from PIL import Image, ImageDraw, ImageFont

    nodes = dict(graph.nodes)
    edges = [edge for edge in graph.edges if edge.parent in nodes and edge.child in nodes]
    more = set()
    for parent, count in graph.omitted_children.items():
        if parent in nodes and count > 0:
            label = f"+{count} more"
            nodes[label] = LineageNode(ref=label, operation="older children")
            edges.append(LineageEdge(parent=parent, child=label, operation=""))
            more.add(label)

    columns = _columns(nodes, edges)
    tallest = max(len(refs) for refs in columns.values())
    centre = {ref: (MARGIN + (column + 0.5) * COLUMN_WIDTH,
                    MARGIN + (row + (tallest - len(refs)) / 2 + 0.5) * ROW_HEIGHT)
              for column, refs in columns.items() for row, ref in enumerate(refs)}
    width = 2 * MARGIN + len(columns) * COLUMN_WIDTH
    height = 2 * MARGIN + tallest * ROW_HEIGHT

    image = Image.new("RGB", (width * SCALE, height * SCALE), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=FONT_SIZE * SCALE)
    small = ImageFont.load_default(size=(FONT_SIZE - 2) * SCALE)
    labels, boxes = {}, {}
    for ref, (x, y) in centre.items():
        node = nodes[ref]
        labels[ref] = f"{ref}\n{node.operation}"
        if "perplexity" in node.metrics:
            labels[ref] += f"\nppl {node.metrics['perplexity']:,.1f}"
        left, top, right, bottom = pen.multiline_textbbox((x * SCALE, y * SCALE), labels[ref], font=font, anchor="mm",
                                                          align="center")
        boxes[ref] = (left - PADDING * SCALE, top - PADDING * SCALE, right + PADDING * SCALE, bottom + PADDING * SCALE)
    # Arrows first and boxes over them: an arrow that skips a generation passes behind the boxes between.
    for edge in edges:
        parent_box, child_box = boxes[edge.parent], boxes[edge.child]
        start = (parent_box[2], (parent_box[1] + parent_box[3]) / 2)
        end = (child_box[0], (child_box[1] + child_box[3]) / 2)
        _arrow(pen, start, end, dashed=edge.child in more)
        if edge.role != "parent":  # a child's box names its operation; roles tell parents apart
            # Near the child, where arrows into one node are still apart and clear of other boxes.
            at = (end[0] - 0.3 * (end[0] - start[0]), end[1] - 0.3 * (end[1] - start[1]) - 3 * SCALE)
            pen.text(at, edge.role, font=small, fill=COLOURS["line"], anchor="md")
    for ref, (x, y) in centre.items():
        fill = COLOURS["root"] if ref == graph.root else COLOURS["more" if ref in more else "node"]
        pen.rounded_rectangle(boxes[ref], radius=4 * SCALE, fill=fill, outline=COLOURS["border"], width=SCALE)
        pen.multiline_text((x * SCALE, y * SCALE), labels[ref], font=font, fill="black", anchor="mm", align="center")
    _in_palette(image.reduce(SCALE)).save(destination, format="PNG", compress_level=1)  # faster; the file stays small
    return destination


def _in_palette(image):
    """`image` in 256 colours, the ones it was drawn with exactly.

    The picture's few colours and their anti-aliased edges fit a palette, and a palette PNG is
    written in a third of the time of an RGB one (no per-row filtering) and is a third of the
    size: a busy parent's picture (24 children) is otherwise mostly PNG encoding. The quick
    octree quantizer gives a colour the mean of its neighbours (a fill one shade off), so an
    entry within SNAP of a drawing colour is set to that colour; only anti-aliased edges move,
    by a few shades.
    """
    from PIL import Image

    quantized = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    palette, snapped = quantized.getpalette(), _drawing_colours_near()
    for start in range(0, len(palette), 3):
        entry = tuple(palette[start:start + 3])
        palette[start:start + 3] = snapped.get(entry, entry)
    quantized.putpalette(palette)
    return quantized


@functools.cache
def _drawing_colours_near() -> dict[tuple[int, ...], tuple[int, ...]]:
    """Each colour within SNAP (in every channel) of a drawing colour, mapped to that colour."""
    from PIL import ImageColor

    near = {}
    for colour in ("white", "black", *COLOURS.values()):
        red, green, blue = ImageColor.getrgb(colour)
        for offsets in itertools.product(range(-SNAP, SNAP + 1), repeat=3):
            near[(red + offsets[0], green + offsets[1], blue + offsets[2])] = (red, green, blue)
    return near


def _columns(nodes: dict, edges: list[LineageEdge]) -> dict[int, list[str]]:
    """Refs by column: a node sits one column right of its latest parent."""
    parents: dict[str, list[str]] = {ref: [] for ref in nodes}
    for edge in edges:
        parents[edge.child].append(edge.parent)
    depth: dict[str, int] = {}

    def generation(ref: str, seen=()) -> int:
        if ref not in depth:
            known = [p for p in parents[ref] if p not in seen]
            depth[ref] = 1 + max((generation(p, seen + (ref,)) for p in known), default=-1)
        return depth[ref]

    for ref in nodes:
        generation(ref)
    # A second root (a distilled student's initialisation) sits just left of its child, not in the
    # first column, so that its arrow does not cross the generations between.
    children: dict[str, list[str]] = {}
    for edge in edges:
        children.setdefault(edge.parent, []).append(edge.child)
    for ref in nodes:
        if not parents[ref] and ref in children:
            depth[ref] = max(depth[ref], min(depth[child] for child in children[ref]) - 1)
    columns: dict[int, list[str]] = {}
    for ref in nodes:
        columns.setdefault(depth[ref], []).append(ref)
    return dict(sorted(columns.items()))


def _arrow(pen, start: tuple[float, float], end: tuple[float, float], *, dashed: bool) -> None:
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    if dashed:
        dash = 6 * SCALE
        for offset in range(0, int(length), 2 * dash):
            stop = min(offset + dash, length)
            pen.line((x0 + ux * offset, y0 + uy * offset, x0 + ux * stop, y0 + uy * stop), fill=COLOURS["line"],
                     width=SCALE)
    else:
        pen.line((x0, y0, x1, y1), fill=COLOURS["line"], width=SCALE)
    head, spread = 8 * SCALE, 4 * SCALE
    base = (x1 - ux * head, y1 - uy * head)
    pen.polygon([(x1, y1), (base[0] - uy * spread, base[1] + ux * spread), (base[0] + uy * spread, base[1] - ux * spread)],
                fill=COLOURS["line"])
