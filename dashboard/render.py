"""Drawing per-patch maps on the trace's images: the single path from values to pixels.

Every map reaches this module as one value per patch ([G], see ``store.schema``); which
pictures it becomes (each image with its tiles stitched, or one tile) is chosen once per page
with :func:`choose_views` and drawn by :mod:`dashboard.components.stitch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st
from PIL import Image

from dashboard import state
from dashboard.components import analysis, images, maps, overlay, stitch, text
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.components.stitch import View
from store import ImageGeometry, StoredTrace

STITCHED = "stitched"
ONE_TILE = "one tile"


@st.cache_data(show_spinner=False, max_entries=64)
def frame(trace_id: str, view: View, _geometry: ImageGeometry) -> stitch.Frame:
    """The pixels a view is drawn on (``_geometry`` is not hashed: ``trace_id`` names it)."""
    return stitch.frame(_geometry, view)


def picture(
    trace: StoredTrace,
    values: np.ndarray,
    view: View,
    style: OverlayStyle,
    scale: Scale,
    marked: Sequence[int] = (),
) -> Image.Image:
    """One view of a per-patch map; ``marked`` patches are outlined."""
    base = frame(trace.trace_id, view, trace.image)
    return maps.draw(trace.image, values, view, style, scale, marked, base=base)


side_by_side = maps.side_by_side


@st.cache_data(show_spinner=False, max_entries=1024)
def overlay_url(
    trace_id: str,
    values: np.ndarray,
    views: tuple[View, ...],
    style: OverlayStyle,
    scale: Scale,
    _trace: StoredTrace,
    legend: bool = False,
    marked: tuple[int, ...] = (),
) -> str:
    """A map's views side by side (with its colour bar underneath when ``legend``) as an
    inline JPEG URL, encoded once. Inline, the map arrives with the page's own message instead
    of one more HTTP request per image after it (Streamlit would also re-encode a Pillow image
    at JPEG quality 100 on every rerun). ``_trace`` is not hashed: ``trace_id`` names it."""
    drawn = side_by_side([picture(_trace, values, v, style, scale, marked) for v in views])
    return images.data_url(overlay.with_legend(drawn, style, scale) if legend else drawn, "JPEG")


@st.cache_data(show_spinner=False, max_entries=256)
def legend_url(style: OverlayStyle, scale: Scale) -> str:
    return images.data_url(overlay.legend(style, scale), "JPEG")


def choose_views(trace: StoredTrace, key: str = "tiles") -> tuple[View, ...]:
    """Stitched images or one tile (URL parameter ``tile``); no control for one-tile traces.

    Says how the stitched picture combines overlapping tiles, since that is a choice."""
    geometry = trace.image
    stitched = tuple(stitch.stitched_views(geometry))
    if len(geometry.tiles) == 1 or stitch.is_legacy(geometry):
        return stitched
    tiles = list(range(len(geometry.tiles)))
    asked = state.as_int(state.get(state.TILE))
    current = asked if asked in tiles else None
    mode = (
        st.segmented_control(
            "Tiles",
            [STITCHED, ONE_TILE],
            **state.widget(
                f"{key}:mode:{trace.trace_id}",
                STITCHED if current is None else ONE_TILE,
                lambda v: state.put(state.TILE, "0" if v == ONE_TILE else None),
            ),
        )
        or STITCHED
    )
    if mode == STITCHED:
        if stitch.has_overlaps(geometry):
            st.caption(stitch.COMBINE_NOTE)
        return stitched
    tile = st.selectbox(
        "Tile",
        tiles,
        format_func=lambda t: stitch.tile_label(geometry, t),
        **state.widget(
            f"{key}:tile:{trace.trace_id}", current or 0, lambda v: state.put(state.TILE, str(v))
        ),
    )
    return (View(geometry.tiles[tile].image, tile),)


def token_values(trace: StoredTrace, row: np.ndarray) -> np.ndarray:
    """[G]: a length-T row's values on the image tokens carried onto their patches."""
    geometry = trace.image
    return analysis.spread(row, geometry.token_patches, geometry.num_patches)


def gallery(
    trace: StoredTrace,
    maps: Sequence[np.ndarray],
    captions: Sequence[str],
    style: OverlayStyle,
    scale: Scale,
    views: Sequence[View],
    columns: int = 4,
    key: str = "heatmaps",
) -> None:
    """Per-patch maps on one shared colour scale, with one legend for all of them.

    A shared scale keeps the maps comparable; captions are Markdown-escaped because they
    carry token text.
    """
    with st.container(key=key):
        st.image(legend_url(style, scale), caption=None)
        slots = st.columns(columns)
        for i, (values, caption) in enumerate(zip(maps, captions, strict=True)):
            url = overlay_url(trace.trace_id, values, tuple(views), style, scale, trace)
            slots[i % columns].image(url, caption=text.markdown_literal(caption), width="stretch")


def heatmap(
    trace: StoredTrace,
    values: np.ndarray,
    style: OverlayStyle,
    scale: Scale,
    views: Sequence[View],
    key: str = "heatmap",
    marked: Sequence[int] = (),
) -> None:
    """One per-patch map with its legend underneath; ``marked`` patches are outlined."""
    with st.container(key=key):
        url = overlay_url(
            trace.trace_id,
            values,
            tuple(views),
            style,
            scale,
            trace,
            legend=True,
            marked=tuple(marked),
        )
        st.image(url, caption=_views_caption(trace.image, views))


def _views_caption(geometry: ImageGeometry, views: Sequence[View]) -> str | None:
    if len(geometry.images) == 1 and views[0].tile is None:
        return None
    return text.markdown_literal(", ".join(stitch.view_label(geometry, v) for v in views))
