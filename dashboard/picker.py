"""Choosing image patches by clicking on the photo, with a list beside it for the keyboard.

The photo is drawn by ``streamlit-image-coordinates`` (an image in an iframe that reports the
clicked pixel and nothing else: no Markdown or HTML of ours goes through it). A click toggles
every patch under it: in a stitched image that is one patch of each tile covering the point
(the base view's and the crop's), in a per-tile view the tile's one patch. The selection is
the URL parameter ``patches`` that every view shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from dashboard import render, state
from dashboard.components import patches, stitch
from dashboard.components.stitch import View
from store import ImageGeometry, StoredTrace

SELECTED = "#00e5ff"
PHOTO_PX = 320  # displayed width of the photo clicked on


def _toggle(geometry: ImageGeometry, view: View, key: str) -> None:
    """A click arrived: toggle the patches under it (coordinates in displayed pixels)."""
    click = st.session_state.get(key) or {}
    width, height = click.get("width") or 0, click.get("height") or 0
    if not width or not height or "x" not in click:
        return
    under = stitch.patches_at(geometry, view, click["x"] / width, click["y"] / height)
    state.put_ints(state.PATCHES, set(state.ints(state.PATCHES)) ^ set(under))


def selected(geometry: ImageGeometry) -> list[int]:
    """The shared patch selection, limited to patches this trace has."""
    return [p for p in state.ints(state.PATCHES) if 0 <= p < geometry.num_patches]


def pick(trace: StoredTrace, views: Sequence[View], key: str = "picker") -> list[int]:
    """Photo(s) to click on and the same choice as a list; returns the selected patches."""
    geometry = trace.image
    chosen = selected(geometry)
    for view in views:
        base = render.frame(trace.trace_id, view, geometry)
        boxes = [
            (b, SELECTED)
            for p in chosen
            if (b := stitch.patch_fractions(geometry, view, p)) is not None
        ]
        photo = patches.highlight(base.pixels, boxes, dim=0.35 if boxes else 0.0)
        click_key = f"{key}:click:{trace.trace_id}:{view.image}:{view.tile}"
        if len(views) > 1:
            st.text(stitch.view_label(geometry, view))
        streamlit_image_coordinates(
            photo,
            width=PHOTO_PX,
            key=click_key,
            image_format="JPEG",
            jpeg_quality=90,
            cursor="crosshair",
            on_click=lambda v=view, k=click_key: _toggle(geometry, v, k),
        )
    listed = sorted({int(p) for v in views for p in stitch.view_patches(geometry, v)})
    st.multiselect(
        "Image patches (or click them on the photo)",
        listed,
        format_func=lambda p: stitch.patch_label(geometry, p),
        **state.widget(
            f"{key}:list:{trace.trace_id}",
            [p for p in chosen if p in set(listed)],
            lambda v: state.put_ints(state.PATCHES, v),
        ),
    )
    return selected(geometry)
