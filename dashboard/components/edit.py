"""Counterfactual image edits: erase, blur or paint regions of a trace's image.

Asking the same question about an edited image shows what the answer depended on. The
regions come from rectangles drawn in the browser (Fabric.js objects from the drawable
canvas component, in displayed pixels) or typed as a box in image pixels; the
edit itself is plain Pillow, so it is tested without a browser and the image sent to the
model is exactly the one previewed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dashboard.components import images

ACTIONS = ("erase", "blur", "paint")
MAX_LISTED = 8  # regions named in a description; the queue keeps descriptions short
_HEX_COLOUR = re.compile(r"#([0-9a-fA-F]{6})")


@dataclass(frozen=True)
class Box:
    """A region in image pixels: ``x0 <= x < x1``, ``y0 <= y < y1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    def clipped(self, width: int, height: int) -> Box:
        return Box(
            min(max(self.x0, 0), width),
            min(max(self.y0, 0), height),
            min(max(self.x1, 0), width),
            min(max(self.y1, 0), height),
        )

    def label(self) -> str:
        return f"({self.x0}, {self.y0})-({self.x1}, {self.y1})"


@dataclass(frozen=True)
class Edit:
    """What to do inside the regions; ``colour`` for paint, ``radius`` (pixels) for blur."""

    action: str
    boxes: tuple[Box, ...]
    colour: tuple[int, int, int] = (0, 0, 0)
    radius: float = 8.0

    def describe(self) -> str:
        """The edit as one line, recorded with the new trace (``extra["edit"]``)."""
        detail = {"paint": f" {hex_colour(self.colour)}", "blur": f" radius {self.radius:g}"}
        shown = [b.label() for b in self.boxes[:MAX_LISTED]]
        more = len(self.boxes) - len(shown)
        regions = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        return f"{self.action}{detail.get(self.action, '')} {regions}"


def boxes_from_canvas(
    objects: Iterable[Mapping[str, Any]], scale: float, width: int, height: int
) -> list[Box]:
    """Image-pixel boxes of the rectangles drawn on a canvas ``scale`` times the image's size.

    Fabric keeps a rectangle's size and its resize factor apart (``width * scaleX``), and a
    rectangle dragged up or left may have a negative size; anything that is not a rectangle,
    or has no area inside the image, is left out.
    """
    boxes = []
    for shape in objects:
        if shape.get("type") != "rect":
            continue
        try:
            left, top = float(shape["left"]), float(shape["top"])
            w = float(shape["width"]) * float(shape.get("scaleX", 1.0))
            h = float(shape["height"]) * float(shape.get("scaleY", 1.0))
        except (KeyError, TypeError, ValueError):
            continue
        if not all(np.isfinite([left, top, w, h])) or scale <= 0:
            continue
        x0, x1 = sorted((left, left + w))
        y0, y1 = sorted((top, top + h))
        box = Box(
            int(np.floor(x0 / scale)),
            int(np.floor(y0 / scale)),
            int(np.ceil(x1 / scale)),
            int(np.ceil(y1 / scale)),
        ).clipped(width, height)
        if not box.empty:
            boxes.append(box)
    return boxes


def mask(size: tuple[int, int], boxes: Sequence[Box]) -> Image.Image:
    """A mode "L" mask of ``size`` (width, height): 255 inside any box, 0 elsewhere."""
    picture = Image.new("L", size, 0)
    draw = ImageDraw.Draw(picture)
    for box in boxes:
        clipped = box.clipped(*size)
        if not clipped.empty:
            draw.rectangle((clipped.x0, clipped.y0, clipped.x1 - 1, clipped.y1 - 1), fill=255)
    return picture


def apply(image: Image.Image | np.ndarray, edit: Edit) -> Image.Image:
    """The edited RGB image; outside the boxes every pixel is unchanged.

    erase: the image's mean colour (what a region with nothing in it looks like on average);
    blur: a Gaussian blur of the whole image, kept inside the boxes only (so the region's
    edge is blurred with its real surroundings); paint: ``edit.colour``.
    """
    if edit.action not in ACTIONS:
        raise ValueError(f"unknown edit {edit.action!r}; use one of {', '.join(ACTIONS)}")
    source = (
        image.convert("RGB")
        if isinstance(image, Image.Image)
        else Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    )
    region = mask(source.size, edit.boxes)
    if edit.action == "blur":
        filled = source.filter(ImageFilter.GaussianBlur(radius=max(edit.radius, 0.0)))
    else:
        colour = edit.colour if edit.action == "paint" else mean_colour(source)
        filled = Image.new("RGB", source.size, colour)
    return Image.composite(filled, source, region)


def mean_colour(image: Image.Image) -> tuple[int, int, int]:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    r, g, b = (round(float(c)) for c in pixels.mean(axis=0))
    return r, g, b


def parse_colour(value: str) -> tuple[int, int, int]:
    """``#rrggbb`` (what a colour picker returns) as an RGB triple."""
    match = _HEX_COLOUR.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a colour: {value!r} (expected #rrggbb)")
    digits = match.group(1)
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def hex_colour(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def canvas_drawing(image: Image.Image, width: int) -> tuple[dict[str, Any], int, float]:
    """A Fabric drawing holding ``image`` as its background, shown ``width`` pixels wide.

    The drawable canvas component (0.9.3) cannot place a background image itself on the
    app framework's 1.67 (it calls an ``image_to_url`` that moved), so the picture rides
    in the drawing it starts from, as an inline PNG. Returns the drawing, the
    canvas height and the scale from image to canvas pixels.
    """
    scale = width / image.width
    height = max(1, round(image.height * scale))
    shown = image.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
    background = {
        "type": "image",
        "version": "4.4.0",
        "originX": "left",
        "originY": "top",
        "left": 0,
        "top": 0,
        "width": width,
        "height": height,
        "scaleX": 1,
        "scaleY": 1,
        "src": images.data_url(shown, "PNG"),
    }
    return {"version": "4.4.0", "objects": [], "backgroundImage": background}, height, scale
