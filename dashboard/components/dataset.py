"""Numbers and pictures over many traces: a compact summary per trace, their means, and maps
of different images on one normalised grid.

Traces of a dataset show different images of different sizes and patch grids, so their maps
cannot be added patch by patch. Each map is laid on a ``GRID`` x ``GRID`` grid spanning its
image's width and height (positions as fractions of the image, however many patches or tiles
it had; several tiles add up as on the page's stitched picture) and scaled to sum to 1: a
mean of such grids says *where in the frame* relevancy went on average, not how much.

A trace's summary (its [L, H] image attention shares and its normalised relevancy grid) is
small; the dataset view stores it in the index's ``trace_results`` the first time it reads
the trace's file, so later views aggregate from SQL alone.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence

import altair as alt
import numpy as np
import pandas as pd
from PIL import Image

from dashboard.components import analysis, overlay, stitch
from dashboard.components.overlay import OverlayStyle, Scale
from store import ImageGeometry, StoredTrace

GRID = 16  # cells per side of the normalised grid
PICTURE_PX = 288  # side of a drawn grid
NEUTRAL = 200  # grey under a normalised map: there is no one photo to draw it on
SHARE = "head_image_share"
RELEVANCY = "relevancy_grid"


def normalised_grid(
    geometry: ImageGeometry, values: np.ndarray, image: int = 0, size: int = GRID
) -> np.ndarray | None:
    """[size, size] of a per-patch map over image ``image``: its stitched field resampled
    (area average) onto the grid, NaN as 0, scaled to sum to 1; None when nothing is left."""
    field = stitch.field(geometry, values, stitch.View(image), (size, size))
    field = np.nan_to_num(np.clip(field, 0.0, None)).astype(np.float32)
    if field.shape != (size, size):
        picture = Image.fromarray(field, mode="F").resize((size, size), Image.Resampling.BOX)
        field = np.asarray(picture, np.float64)
    total = float(field.sum())
    return None if total <= 0 or not np.isfinite(total) else np.asarray(field, np.float64) / total


def relevancy_grid(trace: StoredTrace, tokens: Sequence[int] | None = None) -> np.ndarray | None:
    """The LM relevancy (mode ``llm``) of ``tokens`` (default: the whole answer), averaged,
    on the normalised grid of the first image; None without relevancy or image tokens."""
    relevancy = trace.relevancy
    if relevancy is None:
        return None
    chosen = list(range(trace.answer_length)) if tokens is None else list(tokens)
    row = np.asarray(relevancy.llm, np.float64)[chosen].mean(axis=0)
    geometry = trace.image
    patches = analysis.spread(row, geometry.token_patches, geometry.num_patches)
    return normalised_grid(geometry, patches)


def encode(array: np.ndarray | None) -> dict | None:
    """An array as JSON: its shape and its float32 bytes in base64. A 32 x 32 list of numbers
    parsed 4x slower than this (it is decoded for every trace of every aggregate)."""
    if array is None:
        return None
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(data.shape), "f32": base64.b64encode(data.tobytes()).decode("ascii")}


def decode(summary: dict | None, part: str) -> np.ndarray | None:
    """One part of a stored summary as float64, or None (absent, or not what we wrote)."""
    item = (summary or {}).get(part)
    try:
        raw = np.frombuffer(base64.b64decode(item["f32"], validate=True), dtype="<f4")
        return raw.reshape([int(n) for n in item["shape"]]).astype(np.float64)
    except (TypeError, KeyError, ValueError):
        return None


def summarise(trace: StoredTrace) -> dict:
    """What the dataset view keeps of a trace: [L, H] mean image attention share of its
    answer (from the trace's own summaries) and its normalised relevancy grid (or None)."""
    return {
        SHARE: encode(np.asarray(trace.summaries.head_image_attention, np.float64)),
        RELEVANCY: encode(relevancy_grid(trace)),
    }


def mean_of(summaries: Iterable[dict | None], part: str) -> tuple[np.ndarray | None, int]:
    """The mean of one part over the summaries that have it in the most common shape, and
    how many went into it (other shapes, e.g. another architecture, are left out)."""
    arrays = [a for s in summaries if (a := decode(s, part)) is not None]
    if not arrays:
        return None, 0
    shapes = [a.shape for a in arrays]
    common = max(set(shapes), key=shapes.count)
    same = [a for a in arrays if a.shape == common]
    return np.mean(same, axis=0), len(same)


def head_divergence(
    pairs: Iterable[tuple[dict | None, dict | None]],
) -> tuple[np.ndarray | None, int]:
    """Mean |right − left| image share per layer and head over paired questions (pairs whose
    two summaries have the same [L, H] shape), and how many pairs went into it."""
    deltas = []
    for left, right in pairs:
        a, b = decode(left, SHARE), decode(right, SHARE)
        if a is not None and b is not None and a.shape == b.shape:
            deltas.append(np.abs(b - a))
    return (np.mean(deltas, axis=0), len(deltas)) if deltas else (None, 0)


def grid_picture(grid: np.ndarray, style: OverlayStyle, scale: Scale) -> Image.Image:
    """A normalised grid drawn on neutral grey, its colour bar underneath."""
    base = np.full((PICTURE_PX, PICTURE_PX, 3), NEUTRAL, np.uint8)
    drawn = overlay.overlay(base, grid, style, scale, min_side=PICTURE_PX)
    return overlay.with_legend(drawn, style, scale)


def layer_head_chart(values: np.ndarray, title: str, value_title: str) -> alt.Chart:
    """[L, H] values as a layer x head heatmap (layer 0 at the bottom)."""
    layers, heads = values.shape
    frame = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(layers), heads),
            "head": np.tile(np.arange(heads), layers),
            "value": np.asarray(values, float).ravel(),
        }
    )
    return (
        alt.Chart(frame, title=title)
        .mark_rect()
        .encode(
            x=alt.X("head:O", title="head (index)"),
            y=alt.Y("layer:O", title="layer (index)", sort="descending"),
            color=alt.Color(
                "value:Q",
                title=value_title,
                scale=alt.Scale(scheme="inferno", domainMin=0),
                legend=alt.Legend(format="%", labelFontSize=13, titleFontSize=13),
            ),
            tooltip=["layer:O", "head:O", alt.Tooltip("value:Q", format=".2%")],
        )
        .properties(width=260, height=220)
    )


def accuracy_chart(frame: pd.DataFrame) -> alt.Chart:
    """Accuracy per tag (x) and checkpoint (colour) from columns tag, checkpoint, accuracy."""
    return (
        alt.Chart(frame, title="Accuracy per tag and checkpoint")
        .mark_bar()
        .encode(
            x=alt.X("tag:N", title="tag (question kind)", axis=alt.Axis(labelLimit=400)),
            xOffset="checkpoint:N",
            y=alt.Y(
                "accuracy:Q",
                title="accuracy (% of judged)",
                axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1]),
            ),
            color=alt.Color("checkpoint:N", title="checkpoint", legend=alt.Legend(labelLimit=400)),
            tooltip=["tag:N", "checkpoint:N", alt.Tooltip("accuracy:Q", format=".1%"), "judged:Q"],
        )
    )
