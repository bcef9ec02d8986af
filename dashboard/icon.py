"""The app's icon, drawn here so no page load asks the internet for one."""

from __future__ import annotations

from functools import cache

from PIL import Image, ImageDraw


@cache
def picture(size: int = 64) -> Image.Image:
    """An eye over a patch grid: a dark square, a white lens and an inferno-orange pupil."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, size - 1, size - 1), radius=size // 6, fill="#28104e")
    draw.ellipse((size * 0.12, size * 0.28, size * 0.88, size * 0.72), fill="white")
    draw.ellipse((size * 0.36, size * 0.32, size * 0.64, size * 0.68), fill="#f57d15")
    return image
