"""What every trace figure shares: checked arguments, labels, names, one map as a panel.

Arguments mirror the dashboard pages' controls: answer tokens are answer indices k (0 = the
first generated token), layers and heads are indices, ``style`` is the sidebar's
:class:`OverlayStyle`, ``views`` the pictures a map is drawn on (default: every image, tiles
stitched back). A request the trace cannot answer raises :class:`ValueError`, one line.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from dashboard.components import maps, stitch, text
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.figures.layout import Figure, Panel, picture_figure
from store import StoredTrace

SCORE = "relevancy (normalised score)"
WEIGHT = "attention weight (share of row)"
MAP_SIDE = 336  # CSS px: the longer side of one map (the dashboard's overlay size)
GALLERY_SIDE = 224  # CSS px: a map in a gallery of heads or tokens
CROP_PX = 40  # CSS px: an image patch's crop in a causal graph node (the Causal page's)
COMPARE_SOURCES = ("attention", "relevancy")


def answer_labels(trace: StoredTrace) -> list[str]:
    """The answer's tokens as visible labels (index k -> label)."""
    return [text.token_label(t) for t in trace.tokens.text[trace.tokens.prompt_length :]]


def check_tokens(trace: StoredTrace, tokens: Sequence[int] | None) -> list[int]:
    """Answer token indices, checked; the first token when none is given."""
    count = trace.tokens.answer_length
    if count == 0:
        raise ValueError("this trace has no answer tokens")
    chosen = sorted({int(k) for k in tokens}) if tokens else [0]
    bad = [k for k in chosen if not 0 <= k < count]
    if bad:
        raise ValueError(f"answer token {bad[0]} out of range 0-{count - 1}")
    return chosen


def check_index(value: int, size: int, what: str) -> int:
    if not 0 <= int(value) < size:
        raise ValueError(f"{what} {value} out of range 0-{size - 1}")
    return int(value)


def tokens_text(trace: StoredTrace, tokens: Sequence[int]) -> str:
    labels = answer_labels(trace)
    return ", ".join(f"{k}: {labels[k]}" for k in tokens)


def source_line(trace: StoredTrace) -> str:
    info = trace.info
    return f"Trace {text.short_id(info.trace_id)}, {info.model_id} @ {info.model_revision}."


def figure_name(trace: StoredTrace, *parts: object) -> str:
    return "-".join([text.short_id(trace.trace_id), *(str(p) for p in parts)])


def shown_views(trace: StoredTrace, views: Sequence[stitch.View] | None) -> tuple[stitch.View, ...]:
    return tuple(views) if views else tuple(stitch.stitched_views(trace.image))


def fit(picture: Image.Image, side: int) -> Image.Image:
    """``picture`` with its longer side exactly ``side`` pixels."""
    factor = side / max(picture.size)
    if abs(factor - 1) < 1e-9:
        return picture
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    return picture.resize(size, Image.Resampling.LANCZOS)


def map_panel(
    trace: StoredTrace,
    values: np.ndarray,
    style: OverlayStyle,
    scale: Scale,
    views: Sequence[stitch.View] | None = None,
    marked: Sequence[int] = (),
    label: str = "",
    side: int = MAP_SIDE,
) -> Panel:
    """One [G] map over the trace's views, each ``side`` CSS px on its longer side."""
    geometry, shown = trace.image, shown_views(trace, views)
    values = np.asarray(values, np.float64)

    def draw(s: float) -> Image.Image:
        target = max(1, round(side * s))
        pictures = [
            fit(maps.draw(geometry, values, v, style, scale, marked, min_side=target), target)
            for v in shown
        ]
        return maps.side_by_side(pictures, gap=max(1, round(maps.GAP_PX * s)))

    return Panel(draw, label)


def views_caption(trace: StoredTrace, views: Sequence[stitch.View] | None) -> str:
    """What the pictures show, when that is not simply the one image."""
    geometry, shown = trace.image, shown_views(trace, views)
    if len(geometry.images) == 1 and shown[0].tile is None:
        return ""
    note = (
        f" {stitch.COMBINE_NOTE}" if shown[0].tile is None and stitch.has_overlaps(geometry) else ""
    )
    return "Pictures: " + "; ".join(stitch.view_label(geometry, v) for v in shown) + "." + note


def best_layer(trace: StoredTrace) -> int:
    """The layer whose heads look at the image most (the Raw attention page's default)."""
    return int(np.argmax(trace.summaries.head_image_attention.mean(axis=1)))


def answer_rows(trace: StoredTrace, layer: int, tokens: list[int]) -> np.ndarray:
    """[H, T] attention of the answer tokens at one layer, averaged over the tokens."""
    rows = [trace.tokens.answer_row(k) for k in tokens]
    return trace.attention_rows(rows, layers=[layer])[0].mean(axis=1)


def require_image_tokens(trace: StoredTrace) -> None:
    if not trace.image.token_patches.rows.size:
        raise ValueError(
            "this model reads the image through cross-attention: use cross_attention_figure"
        )


def map_figure(
    trace: StoredTrace,
    values: np.ndarray,
    *,
    name: str,
    title: str,
    caption: str = "",
    scale: Scale | None = None,
    style: OverlayStyle | None = None,
    views: Sequence[stitch.View] | None = None,
    marked: Sequence[int] = (),
    scale_title: str = WEIGHT,
) -> Figure:
    """Any per-patch map ([G] values) as a figure with its colour bar (scale from the values,
    starting at 0, unless given)."""
    style = style or OverlayStyle()
    scale = scale or Scale.of(values, scale_title, zero=True)
    panel = map_panel(trace, values, style, scale, views, marked)
    full = " ".join(p for p in (caption, views_caption(trace, views), source_line(trace)) if p)
    return picture_figure(name, title, full, [panel], (style, scale), columns=1)
