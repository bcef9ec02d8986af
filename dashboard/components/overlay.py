"""Heatmap overlays on the processed image, composed with Pillow.

A map arrives as one value per LM image patch, laid out on the trace's own patch grid
(``grid_rows x grid_cols``; nothing assumes a square or 24x24 grid). Each cell covers an
equal share of the processed image, which is how the vision tower tiled it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dashboard.components import colormap


@dataclass(frozen=True)
class OverlayStyle:
    """How maps are drawn; one instance is shared by every view so they stay comparable."""

    colormap: str = "inferno"
    opacity: float = 0.6  # 0 shows only the image, 1 only the heatmap
    smooth: bool = False  # bilinear upsampling instead of crisp patch cells


@dataclass(frozen=True)
class Scale:
    """The value range a colour bar spans, with the quantity's name and unit for its legend."""

    vmin: float
    vmax: float
    title: str

    @classmethod
    def of(cls, values: np.ndarray, title: str, symmetric: bool = False) -> Scale:
        """A range covering ``values``; symmetric around 0 for difference maps."""
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return cls(0.0, 1.0, title)
        if symmetric:
            bound = float(np.abs(finite).max()) or 1.0
            return cls(-bound, bound, title)
        low, high = float(finite.min()), float(finite.max())
        return cls(low, high if high > low else low + 1.0, title)


def grid_values(values: np.ndarray, patch_index: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Scatter per-image-token ``values`` onto the [rows, cols] patch grid (row-major indices).

    Patches no image token landed on stay NaN and draw in the lowest colour.
    """
    grid = np.full(rows * cols, np.nan, dtype=np.float64)
    valid = (patch_index >= 0) & (patch_index < rows * cols)
    grid[patch_index[valid]] = np.asarray(values, dtype=np.float64)[valid]
    return grid.reshape(rows, cols)


def overlay(
    image: np.ndarray, grid: np.ndarray, style: OverlayStyle, scale: Scale, min_side: int = 336
) -> Image.Image:
    """Blend a [rows, cols] map over an [h, w, 3] image, each cell covering its patch.

    Small images are first enlarged (keeping their aspect ratio) to ``min_side`` pixels on the
    longer side, so maps of small crops are still readable.
    """
    base = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    factor = min_side / max(base.size)
    if factor > 1:
        size = (round(base.width * factor), round(base.height * factor))
        base = base.resize(size, Image.Resampling.LANCZOS)
    colours = colormap.apply(grid, style.colormap, scale.vmin, scale.vmax)
    resample = Image.Resampling.BILINEAR if style.smooth else Image.Resampling.NEAREST
    heat = Image.fromarray(colours, mode="RGB").resize(base.size, resample=resample)
    return Image.blend(base, heat, float(np.clip(style.opacity, 0.0, 1.0)))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def legend(style: OverlayStyle, scale: Scale, width: int = 336, height: int = 44) -> Image.Image:
    """A horizontal colour bar with the quantity's title and its min / mid / max values."""
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    margin, bar_top, bar_height = 6, 16, 10
    ramp = np.linspace(scale.vmin, scale.vmax, width - 2 * margin)
    bar = colormap.apply(np.tile(ramp, (bar_height, 1)), style.colormap, scale.vmin, scale.vmax)
    canvas.paste(Image.fromarray(bar, mode="RGB"), (margin, bar_top))
    draw.text((margin, 1), scale.title, fill="black", font=font)
    ticks = [(scale.vmin, "la"), ((scale.vmin + scale.vmax) / 2, "ma"), (scale.vmax, "ra")]
    for value, anchor in ticks:
        x = margin + (width - 2 * margin) * (value - scale.vmin) / (scale.vmax - scale.vmin)
        draw.text(
            (x, bar_top + bar_height + 2), f"{value:.3g}", fill="black", font=font, anchor=anchor
        )
    return canvas


def with_legend(picture: Image.Image, style: OverlayStyle, scale: Scale) -> Image.Image:
    """The overlay with its colour bar underneath, as one image."""
    bar = legend(style, scale, width=max(picture.width, 160))
    combined = Image.new(
        "RGB", (max(picture.width, bar.width), picture.height + bar.height), "white"
    )
    combined.paste(picture, (0, 0))
    combined.paste(bar, (0, picture.height))
    return combined
