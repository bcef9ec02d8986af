"""Heatmap overlays on a picture, composed with Pillow.

A map arrives as a 2-D array stretched over the whole picture: one tile's patch grid (any
shape; nothing assumes a square or 24x24 grid), or a field already drawn at the picture's
size by :mod:`dashboard.components.stitch` when several tiles make up an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from dashboard.components import colormap
from dashboard.components.fonts import drawable, font


@dataclass(frozen=True)
class OverlayStyle:
    """How maps are drawn; one instance is shared by every view so they stay comparable."""

    colormap: str = "inferno"
    opacity: float = 0.6  # 0 shows only the image, 1 only the heatmap (at its highest values)
    smooth: bool = False  # bilinear upsampling instead of crisp patch cells
    fade: bool = True  # opacity grows with the value: the photo stays visible where maps are low


@dataclass(frozen=True)
class Scale:
    """The value range a colour bar spans, with the quantity's name and unit for its legend."""

    vmin: float
    vmax: float
    title: str

    @classmethod
    def of(
        cls, values: np.ndarray, title: str, symmetric: bool = False, zero: bool = False
    ) -> Scale:
        """A range covering ``values``; symmetric around 0 for difference maps; from 0 when
        ``zero`` (weights and shares, where 0 means "none", not the smallest value seen)."""
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return cls(0.0, 1.0, title)
        if symmetric:
            bound = float(np.abs(finite).max()) or 1.0
            return cls(-bound, bound, title)
        low, high = float(finite.min()), float(finite.max())
        if zero:
            low = min(low, 0.0)
        return cls(low, high if high > low else low + 1.0, title)


def overlay(
    image: np.ndarray,
    grid: np.ndarray,
    style: OverlayStyle,
    scale: Scale,
    min_side: int = 336,
    outlines: Sequence[tuple[float, float, float, float]] = (),
) -> Image.Image:
    """Blend a [rows, cols] map over an [h, w, 3] image, the cells covering it evenly.

    Small images are first enlarged (keeping their aspect ratio) to ``min_side`` pixels on the
    longer side, so maps of small crops are still readable. With ``style.fade`` each cell's
    opacity grows with (the square root of) its value, so low values leave the photo as it
    is instead of darkening it with the colour map's darkest colour. ``outlines`` are boxes to
    frame (fractions of the picture's width and height), e.g. the query patch of a
    vision-tower map. NaN cells are left transparent.
    """
    base = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    factor = min_side / max(base.size)
    if factor > 1:
        size = (round(base.width * factor), round(base.height * factor))
        base = base.resize(size, Image.Resampling.LANCZOS)
    colours = colormap.apply(grid, style.colormap, scale.vmin, scale.vmax)
    resample = Image.Resampling.BILINEAR if style.smooth else Image.Resampling.NEAREST
    heat = Image.fromarray(colours, mode="RGB").resize(base.size, resample=resample)
    opacity = float(np.clip(style.opacity, 0.0, 1.0))
    alpha = np.full(np.shape(grid), opacity)
    if style.fade:
        values = np.asarray(grid, dtype=np.float64)
        if scale.vmin < 0 < scale.vmax:  # diverging (a difference): fade towards 0, not vmin
            level = np.abs(values) / max(-scale.vmin, scale.vmax)
        else:
            span = scale.vmax - scale.vmin
            level = (values - scale.vmin) / (span if span > 0 else 1.0)
        # square root: maps are peaked, so weak but real values must stay visible
        alpha = opacity * np.sqrt(np.clip(np.nan_to_num(level, nan=0.0), 0.0, 1.0))
    alpha = np.where(np.isfinite(np.asarray(grid, dtype=np.float64)), alpha, 0.0)
    mask = Image.fromarray(np.round(alpha * 255).astype(np.uint8), mode="L")
    picture = Image.composite(heat, base, mask.resize(base.size, resample=resample))
    outline(picture, outlines)
    return picture


def outline(
    picture: Image.Image,
    boxes: Sequence[tuple[float, float, float, float]],
    colour: str = "#00e5ff",
) -> None:
    """Frame each box (fractions of the picture's width and height) in place."""
    width, height = picture.size
    draw = ImageDraw.Draw(picture)
    line = max(2, round(min(width, height) / 120))
    for fx0, fy0, fx1, fy1 in boxes:
        box = (width * fx0, height * fy0, width * fx1 - 1, height * fy1 - 1)
        draw.rectangle(box, outline=colour, width=line)


LEGEND_FONT_PX = 13


def legend(
    style: OverlayStyle,
    scale: Scale,
    width: int = 336,
    height: int | None = None,
    font_px: int = LEGEND_FONT_PX,
) -> Image.Image:
    """A horizontal colour bar with the quantity's title and its min / mid / max values.

    Every distance grows with ``font_px`` (height 52 px at the default 13 px), so a figure
    exported at print resolution draws the same legend, larger, rather than a blurred one."""
    unit = font_px / LEGEND_FONT_PX
    height = round(52 * unit) if height is None else height
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    face = font(font_px)
    margin, bar_top, bar_height = round(6 * unit), round(19 * unit), round(12 * unit)
    ramp = np.linspace(scale.vmin, scale.vmax, width - 2 * margin)
    bar = colormap.apply(np.tile(ramp, (bar_height, 1)), style.colormap, scale.vmin, scale.vmax)
    canvas.paste(Image.fromarray(bar, mode="RGB"), (margin, bar_top))
    draw.text((margin, round(2 * unit)), drawable(scale.title, face), fill="black", font=face)
    for share, label, anchor in legend_ticks(scale):
        draw.text(
            (margin + (width - 2 * margin) * share, bar_top + bar_height + round(3 * unit)),
            label,
            fill="black",
            font=face,
            anchor=f"{anchor[0]}a",
        )
    return canvas


def legend_ticks(scale: Scale) -> list[tuple[float, str, str]]:
    """The colour bar's labels: (position along the bar 0-1, text, anchor "l"/"m"/"r") at
    min, middle and max; shared by the drawn legend and the vector (SVG) one."""
    middle = (scale.vmin + scale.vmax) / 2
    return [
        (0.0, f"{scale.vmin:.3g}", "l"),
        (0.5, f"{middle:.3g}", "m"),
        (1.0, f"{scale.vmax:.3g}", "r"),
    ]


def with_legend(picture: Image.Image, style: OverlayStyle, scale: Scale) -> Image.Image:
    """The overlay with its colour bar underneath, as one image."""
    bar = legend(style, scale, width=max(picture.width, 160))
    combined = Image.new(
        "RGB", (max(picture.width, bar.width), picture.height + bar.height), "white"
    )
    combined.paste(picture, (0, 0))
    combined.paste(bar, (0, picture.height))
    return combined
