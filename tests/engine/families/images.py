"""Test images: random noise (every patch differs) and the same with a red square painted on."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def noise_image(height: int = 40, width: int = 56, seed: int = 0) -> Image.Image:
    """A random RGB image, wider than tall (so tiled families pick a non-square canvas)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def painted(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``image`` with a red square over ``box`` (x0, y0, x1, y1, inclusive)."""
    copy = image.copy()
    ImageDraw.Draw(copy).rectangle(box, fill=(255, 0, 0))
    return copy
