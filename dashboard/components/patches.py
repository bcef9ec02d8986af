"""Patches cut out of, or picked out on, a picture.

Where a patch lies on a picture comes from :func:`dashboard.components.stitch.patch_fractions`
as fractions of the picture's width and height, so the same code serves a whole original
image, one tile of it and the processed image of an old trace.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

Fractions = tuple[float, float, float, float]  # (x0, y0, x1, y1) as shares of width, height


def pixel_box(fractions: Fractions, width: int, height: int) -> tuple[int, int, int, int]:
    """A fractional box in whole pixels of a ``width x height`` picture (x1/y1 exclusive);
    rounding the edges the same way for neighbours covers every pixel exactly once."""
    x0, y0, x1, y1 = fractions
    return (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))


def crop(image: np.ndarray, fractions: Fractions, size: int = 40) -> Image.Image:
    """A patch cut from the picture and scaled to fit ``size`` pixels (nearest: crisp)."""
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    x0, y0, x1, y1 = pixel_box(fractions, picture.width, picture.height)
    cell = picture.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
    factor = size / max(cell.size)
    target = (max(1, round(cell.width * factor)), max(1, round(cell.height * factor)))
    return cell.resize(target, Image.Resampling.NEAREST)


def highlight(
    image: np.ndarray,
    boxes: Sequence[tuple[Fractions, str]],
    min_side: int = 336,
    dim: float = 0.65,
) -> Image.Image:
    """The picture dimmed except the given boxes, each outlined in its colour.

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
    pixels = [pixel_box(fractions, base.width, base.height) for fractions, _ in boxes]
    line = max(2, round(min(base.size) / 150))
    for box in pixels:
        shaded.paste(base.crop(box), box[:2])
    draw = ImageDraw.Draw(shaded)
    for (x0, y0, x1, y1), (_, colour) in zip(pixels, boxes, strict=True):
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=line)
    return shaded
