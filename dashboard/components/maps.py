"""A per-patch map drawn on one view of a trace's images: the one path from values to pixels.

The dashboard (through its cached frames) and exported figures (at any resolution) both draw
here, so a figure in a report is the picture the page showed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from dashboard.components import overlay, patches, stitch
from dashboard.components.overlay import OverlayStyle, Scale
from store import ImageGeometry

GAP_PX = 8  # between the images of a multi-image map


def draw(
    geometry: ImageGeometry,
    values: np.ndarray,
    view: stitch.View,
    style: OverlayStyle,
    scale: Scale,
    marked: Sequence[int] = (),
    base: stitch.Frame | None = None,
    min_side: int = 336,
) -> Image.Image:
    """One view of a [G] map; ``marked`` patches are outlined. ``base`` is the view's frame
    when the caller holds it already (the dashboard caches frames); ``min_side`` enlarges
    small pictures (see :func:`dashboard.components.overlay.overlay`)."""
    base = base or stitch.frame(geometry, view)
    grid = stitch.field(geometry, values, view, base.pixels.shape[:2], smooth=style.smooth)
    boxes = [b for p in marked if (b := stitch.patch_fractions(geometry, view, p)) is not None]
    return overlay.overlay(base.pixels, grid, style, scale, min_side=min_side, outlines=boxes)


def side_by_side(pictures: Sequence[Image.Image], gap: int = GAP_PX) -> Image.Image:
    """Pictures in a row, top-aligned: one map over several images."""
    if len(pictures) == 1:
        return pictures[0]
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    row = Image.new("RGB", (width, max(p.height for p in pictures)), "white")
    x = 0
    for p in pictures:
        row.paste(p, (x, 0))
        x += p.width + gap
    return row


def highlight(
    geometry: ImageGeometry,
    view: stitch.View,
    colours: dict[int, str],
    min_side: int = 336,
) -> Image.Image:
    """One view with the coloured patches it shows (every tile's patch), the rest dimmed:
    how a causal explanation's patches are drawn."""
    boxes = [
        (box, colour)
        for patch, colour in colours.items()
        if (box := stitch.patch_fractions(geometry, view, patch)) is not None
    ]
    return patches.highlight(stitch.frame(geometry, view).pixels, boxes, min_side=min_side)
