"""A causal graph (PAG) drawn with Pillow: image patches as crops, words as text, PAG marks.

Nodes sit on a circle in token order (clockwise from the top), so the causal order reads
around the ring and no two edges overlap along a line, as they would in a single row.
Everything is pixels: token text reaches the browser as part of a PNG, never as markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from dashboard.components.fonts import drawable, font

TARGET_COLOUR = "#111111"
OTHER_COLOUR = "#9e9e9e"
RADIUS_COLOURS = ("#e6550d", "#3182bd", "#31a354", "#756bb1", "#d6616b", "#8c6d31")
EDGE_COLOUR = "#555555"
MARKS = ("arrow", "circle", "tail")


def radius_colour(radius: int) -> str:
    """Colour of the patches and nodes first reached at PDS distance ``radius`` (1-based)."""
    return RADIUS_COLOURS[(radius - 1) % len(RADIUS_COLOURS)]


@dataclass(frozen=True)
class GraphNode:
    """One token of the graph: a patch crop (image token) or its text (word)."""

    position: int
    label: str
    colour: str
    picture: Image.Image | None = None


@dataclass(frozen=True)
class Edge:
    """PAG edge between token positions, with the mark at each end (``MARKS``)."""

    a: int
    b: int
    mark_a: str
    mark_b: str


def _short(label: str, limit: int) -> str:
    """A label cut to fit a node box; the table under the graph has the full text."""
    label = " ".join(label.split()) or "_"
    return label if len(label) <= limit else label[: limit - 2] + ".."


def _end_mark(
    draw: ImageDraw.ImageDraw,
    tip: tuple[float, float],
    angle: float,
    mark: str,
    size: float,
    unit: float = 1.0,
) -> None:
    """Draw ``mark`` at ``tip``; ``angle`` points from the edge into the node."""
    x, y = tip
    if mark == "arrow":
        spread = 0.45
        back = [
            (x - size * math.cos(angle + s), y - size * math.sin(angle + s))
            for s in (spread, -spread)
        ]
        draw.polygon([tip, *back], fill=EDGE_COLOUR)
    elif mark == "circle":
        r = size / 2.6
        cx, cy = x - r * math.cos(angle), y - r * math.sin(angle)
        draw.ellipse(
            (cx - r, cy - r, cx + r, cy + r),
            fill="white",
            outline=EDGE_COLOUR,
            width=round(2 * unit),
        )


def _layout(count: int, node: int, unit: float) -> tuple[int, list[tuple[float, float]]]:
    """Canvas side and node centres on a ring wide enough to keep nodes apart."""
    radius = max(140.0 * unit, count * node * 1.35 / (2 * math.pi))
    side = int(2 * radius + 2.6 * node)
    centre = side / 2
    points = [
        (
            centre + radius * math.sin(2 * math.pi * i / count),
            centre - radius * math.cos(2 * math.pi * i / count),
        )
        for i in range(count)
    ]
    return side, points


def _draw_node(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    node: GraphNode,
    at: tuple[float, float],
    size: int,
    unit: float,
) -> None:
    x, y = at
    half = size / 2
    box = (x - half, y - half, x + half, y + half)
    border = round((4 if node.colour == TARGET_COLOUR else 3) * unit)
    if node.picture is not None:
        picture = node.picture
        canvas.paste(picture, (round(x - picture.width / 2), round(y - picture.height / 2)))
        draw.rectangle(box, outline=node.colour, width=border)
    else:
        draw.rounded_rectangle(
            box, radius=round(6 * unit), fill="white", outline=node.colour, width=border
        )
        face = font(round(13 * unit))
        label = drawable(_short(node.label, 6), face)
        draw.text((x, y), label, fill="black", font=face, anchor="mm")
    draw.text(
        (x, y + half + 2 * unit),
        f"{node.position}",
        fill="#444",
        font=font(round(13 * unit)),
        anchor="ma",
    )


def _legend(width: int, radii: int, unit: float = 1.0) -> Image.Image:
    """Edge marks and node colours, explained in one strip under the graph."""
    legend = Image.new("RGB", (width, round(70 * unit)), "white")
    draw = ImageDraw.Draw(legend)
    face = font(round(13 * unit))

    def u(value: float) -> float:
        return value * unit

    meanings = {
        "arrow": "arrowhead: not an ancestor",
        "tail": "tail: an ancestor",
        "circle": "circle: undetermined",
    }
    x = u(10)
    for mark, meaning in meanings.items():
        draw.line((x, u(14), x + u(40), u(14)), fill=EDGE_COLOUR, width=round(u(2)))
        _end_mark(draw, (x + u(40), u(14)), 0.0, mark, u(11), unit)
        draw.text((x + u(48), u(14)), meaning, fill="black", font=face, anchor="lm")
        x += u(48) + int(draw.textlength(meaning, font=face)) + u(24)
    swatches = [("explained token", TARGET_COLOUR)]
    swatches += [(f"radius {r}", radius_colour(r)) for r in range(1, radii + 1)]
    swatches += [("outside the explanation", OTHER_COLOUR)]
    x = u(10)
    for name, colour in swatches:
        draw.rectangle((x, u(40), x + u(14), u(54)), outline=colour, width=round(u(3)))
        draw.text((x + u(20), u(47)), name, fill="black", font=face, anchor="lm")
        x += u(20) + int(draw.textlength(name, font=face)) + u(18)
    return legend


def draw_graph(
    nodes: Sequence[GraphNode],
    edges: Sequence[Edge],
    radii: int,
    node_size: int = 54,
    unit: float = 1.0,
) -> Image.Image:
    """The graph with its legend underneath, as one image.

    Edges are drawn first and shortened to stop at each node's border, so marks stay
    visible next to the crops. Nodes are drawn in ``position`` order around the ring.
    ``unit`` scales every size (text, lines, marks, nodes) for print resolution; node
    pictures are pasted as given, so pass crops drawn at ``unit`` times their size.
    """
    ordered = sorted(nodes, key=lambda n: n.position)
    node_size = round(node_size * unit)
    side, points = _layout(max(len(ordered), 1), node_size, unit)
    where = {n.position: p for n, p in zip(ordered, points, strict=True)}
    canvas = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(canvas)
    stop = node_size * 0.62
    for edge in edges:
        if edge.a not in where or edge.b not in where:
            continue
        (xa, ya), (xb, yb) = where[edge.a], where[edge.b]
        angle = math.atan2(yb - ya, xb - xa)
        length = math.hypot(xb - xa, yb - ya)
        if length <= 2 * stop:
            continue
        start = (xa + stop * math.cos(angle), ya + stop * math.sin(angle))
        end = (xb - stop * math.cos(angle), yb - stop * math.sin(angle))
        draw.line((start, end), fill=EDGE_COLOUR, width=round(2 * unit))
        _end_mark(draw, end, angle, edge.mark_b, 12 * unit, unit)
        _end_mark(draw, start, angle + math.pi, edge.mark_a, 12 * unit, unit)
    for node in ordered:
        _draw_node(canvas, draw, node, where[node.position], node_size, unit)
    legend = _legend(max(side, round(720 * unit)), radii, unit)
    framed = Image.new("RGB", (legend.width, side + legend.height), "white")
    framed.paste(canvas, ((legend.width - side) // 2, 0))
    framed.paste(legend, (0, side))
    return framed
