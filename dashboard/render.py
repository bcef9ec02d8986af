"""Drawing maps on the trace's image: the single path from a patch grid to pixels on screen."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

from dashboard.components import images, overlay, text
from dashboard.components.overlay import OverlayStyle, Scale
from store import StoredTrace


@st.cache_data(show_spinner=False, max_entries=1024)
def overlay_url(
    trace_id: str,
    grid: np.ndarray,
    style: OverlayStyle,
    scale: Scale,
    _image: np.ndarray,
    legend: bool = False,
    marked: int | None = None,
) -> str:
    """One overlay (with its colour bar underneath when ``legend``) as an inline JPEG URL,
    encoded once. Inline, the map arrives with the page's own message instead of one more
    HTTP request per image after it (Streamlit would also re-encode a Pillow image at JPEG
    quality 100 on every rerun). ``_image`` is the trace's processed image (not hashed:
    ``trace_id`` names it). ``marked`` outlines one patch."""
    picture = overlay.overlay(_image, grid, style, scale, marked=marked)
    return images.data_url(
        overlay.with_legend(picture, style, scale) if legend else picture, "JPEG"
    )


@st.cache_data(show_spinner=False, max_entries=256)
def legend_url(style: OverlayStyle, scale: Scale) -> str:
    return images.data_url(overlay.legend(style, scale), "JPEG")


def image_grid(trace: StoredTrace, row: np.ndarray) -> np.ndarray:
    """[rows, cols] map of a length-T row's values on the image tokens."""
    positions = trace.tokens.image_positions
    geometry = trace.image
    return overlay.grid_values(
        np.asarray(row)[positions],
        trace.tokens.image_patch[positions],
        geometry.grid_rows,
        geometry.grid_cols,
    )


def patch_grid(trace: StoredTrace, per_patch: np.ndarray) -> np.ndarray:
    """[rows, cols] map of values given per patch in row-major order (length G)."""
    geometry = trace.image
    return np.asarray(per_patch, dtype=np.float64).reshape(geometry.grid_rows, geometry.grid_cols)


def gallery(
    trace: StoredTrace,
    grids: Sequence[np.ndarray],
    captions: Sequence[str],
    style: OverlayStyle,
    scale: Scale,
    columns: int = 4,
    key: str = "heatmaps",
) -> None:
    """Overlays on one shared colour scale, with one legend for all of them.

    A shared scale keeps the maps comparable; captions are Markdown-escaped because they
    carry token text.
    """
    with st.container(key=key):
        st.image(legend_url(style, scale), caption=None)
        slots = st.columns(columns)
        for i, (grid, caption) in enumerate(zip(grids, captions, strict=True)):
            picture = overlay_url(trace.trace_id, grid, style, scale, trace.image.processed)
            slots[i % columns].image(
                picture, caption=text.markdown_literal(caption), width="stretch"
            )


def heatmap(
    trace: StoredTrace,
    grid: np.ndarray,
    style: OverlayStyle,
    scale: Scale,
    key: str = "heatmap",
    marked: int | None = None,
) -> None:
    """One overlay with its own legend underneath; ``marked`` outlines one patch."""
    with st.container(key=key):
        st.image(
            overlay_url(
                trace.trace_id,
                grid,
                style,
                scale,
                trace.image.processed,
                legend=True,
                marked=marked,
            )
        )


@st.cache_data(show_spinner=False, max_entries=64)
def photo_url(trace_id: str, _image: np.ndarray) -> str:
    """The processed image as an inline JPEG URL (for Vega charts drawn over the photo)."""
    return images.data_url(images.thumbnail(_image, size=max(_image.shape[:2])), "JPEG")
