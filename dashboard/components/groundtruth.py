"""Ground truth that demo traces carry (``TraceInfo.extra["ground_truth"]``), drawn on the image.

Boxes are given in the user's original image pixels; the picture drawn on may be a resized
or cropped part of it, so they are mapped through the region of the original it shows.
Anything malformed in ``extra`` (it is free-form JSON) is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from dashboard.components.fonts import drawable, font

BOX_COLOUR = "#00e5ff"


@dataclass(frozen=True)
class Truth:
    """One object the scene holds: what it is and where (original-image pixels)."""

    label: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1


def objects(extra: Mapping) -> list[Truth]:
    """The ground-truth objects of a trace; empty when it carries none."""
    truth = extra.get("ground_truth") if isinstance(extra, Mapping) else None
    found = truth.get("objects") if isinstance(truth, Mapping) else None
    out = []
    for item in found if isinstance(found, list) else []:
        box = item.get("box") if isinstance(item, Mapping) else None
        if not (isinstance(box, list) and len(box) == 4):
            continue
        try:
            coords = tuple(float(v) for v in box)
        except (TypeError, ValueError):
            continue
        words = [str(item.get(k)) for k in ("colour", "shape") if item.get(k) is not None]
        out.append(Truth(" ".join(words) or "object", coords))
    return out


def draw(
    image: np.ndarray,
    truths: list[Truth],
    patch_boxes: np.ndarray,
    min_side: int = 336,
) -> Image.Image:
    """The picture (enlarged to ``min_side``) with every object's box and name.

    ``patch_boxes`` (boxes in original-image pixels, e.g. the region the picture shows or
    its grid cells) say which part of the original the picture shows, so boxes land right
    after a resize or a crop.
    """
    base = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    factor = max(1.0, min_side / max(base.size))
    base = base.resize((round(base.width * factor), round(base.height * factor)))
    cells = np.asarray(patch_boxes, dtype=np.float64).reshape(-1, 4)
    left, top = cells[:, 0].min(), cells[:, 1].min()
    sx = base.width / max(cells[:, 2].max() - left, 1e-9)
    sy = base.height / max(cells[:, 3].max() - top, 1e-9)
    pen = ImageDraw.Draw(base)
    face = font(13)
    for truth in truths:
        x0, y0, x1, y1 = truth.box
        rect = ((x0 - left) * sx, (y0 - top) * sy, (x1 - left) * sx - 1, (y1 - top) * sy - 1)
        pen.rectangle(rect, outline=BOX_COLOUR, width=2)
        label = drawable(truth.label, face)
        tx0, ty0, tx1, ty1 = pen.textbbox((rect[0] + 3, rect[1] + 2), label, font=face)
        pen.rectangle((tx0 - 2, ty0 - 1, tx1 + 2, ty1 + 1), fill="black")
        pen.text((rect[0] + 3, rect[1] + 2), label, fill=BOX_COLOUR, font=face)
    return base
