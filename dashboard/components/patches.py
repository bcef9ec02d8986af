"""Patch geometry on the processed image: where each LM image patch's pixels are.

The vision tower tiles the processed image into ``grid_rows x grid_cols`` cells (any shape,
not only square). Cell edges are rounded from exact fractions, so an image whose size is not
a multiple of the grid still gets every pixel covered exactly once. The stored
``patch_boxes`` give the same cells in the user's original file; they name patches for
people ("x 0-21, y 0-21 px"), since the original pixels themselves are not stored.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), pixels, x1/y1 exclusive


def cell_boxes(width: int, height: int, rows: int, cols: int) -> list[Box]:
    """Row-major pixel boxes of every grid cell on a ``width x height`` image."""
    xs = np.round(np.linspace(0, width, cols + 1)).astype(int)
    ys = np.round(np.linspace(0, height, rows + 1)).astype(int)
    return [
        (int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1]))
        for r in range(rows)
        for c in range(cols)
    ]


def crop(image: np.ndarray, rows: int, cols: int, patch: int, size: int = 40) -> Image.Image:
    """Patch ``patch`` cut from the image and scaled to fit ``size`` pixels (nearest: crisp)."""
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    cell = picture.crop(cell_boxes(picture.width, picture.height, rows, cols)[patch])
    factor = size / max(cell.size)
    target = (max(1, round(cell.width * factor)), max(1, round(cell.height * factor)))
    return cell.resize(target, Image.Resampling.NEAREST)


def highlight(
    image: np.ndarray,
    rows: int,
    cols: int,
    colours: Mapping[int, str],
    min_side: int = 336,
    dim: float = 0.65,
) -> Image.Image:
    """The image dimmed except the patches in ``colours``, each outlined in its colour.

    Dimming the rest (rather than tinting the chosen cells) keeps the chosen patches' own
    pixels visible, which is what a reader checks an explanation against.
    """
    base = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    factor = min_side / max(base.size)
    if factor > 1:
        base = base.resize(
            (round(base.width * factor), round(base.height * factor)), Image.Resampling.LANCZOS
        )
    shaded = Image.blend(base, Image.new("RGB", base.size, "white"), dim)
    boxes = cell_boxes(base.width, base.height, rows, cols)
    line = max(2, round(min(base.size) / 150))
    for patch in colours:
        if 0 <= patch < len(boxes):
            shaded.paste(base.crop(boxes[patch]), boxes[patch][:2])
    draw = ImageDraw.Draw(shaded)
    for patch, colour in colours.items():
        if 0 <= patch < len(boxes):
            x0, y0, x1, y1 = boxes[patch]
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=line)
    return shaded


def original_label(boxes: np.ndarray, patch: int, cols: int) -> str:
    """Where a patch sits, as grid cell and pixel box in the user's original image."""
    x0, y0, x1, y1 = (round(float(v)) for v in np.asarray(boxes)[patch])
    return f"row {patch // cols}, col {patch % cols} · x {x0}–{x1}, y {y0}–{y1} px"
