"""Figures as records: a title, a caption and a way to draw PNG or SVG at any resolution.

Two families of figure share one record, :class:`Figure`:

* **pictures** (heatmap overlays, galleries, the causal graph): pixels composed with Pillow.
  A board (title, panels with labels, colour bar, caption) is laid out once per scale as a
  list of placed items; the PNG backend paints them, the SVG backend writes the same layout
  with each picture embedded as a PNG ``<image>`` and every text as escaped vector text, so
  titles and legends stay sharp and searchable in print.
* **charts** (Altair): converted by ``vl-convert`` (Vega's own SVG renderer, then resvg for
  PNG) with ``allowed_base_urls=[]``, so a spec can never fetch anything; fonts are the
  machine's own (fontdb), nothing is downloaded.

``scale`` is output pixels per CSS pixel: 1 is screen size, 2 (the default) is 192 dpi and
about print quality for a column-wide figure; PNGs carry the matching dpi. Everything drawn
comes from a model, a user or a file as *text*: Pillow paints glyphs, SVG text is XML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import numpy as np
import vl_convert
from PIL import Image, ImageDraw

from dashboard.components import colormap, overlay
from dashboard.components.fonts import drawable, font
from dashboard.components.overlay import OverlayStyle, Scale

DEFAULT_SCALE = 2.0
BASE_DPI = 96.0  # CSS pixels per inch: a scale-s PNG carries s * 96 dpi
MIN_SCALE, MAX_SCALE = 0.25, 8.0
TITLE_PX, LABEL_PX, CAPTION_PX = 16, 13, 12
PAD, GAP = 12, 10  # board margin and gap between panels, CSS px
SVG_FONTS = "Liberation Sans, Arial, Helvetica, DejaVu Sans, sans-serif"
SLACK = 0.9  # lines are wrapped to 90 % of the width: an SVG viewer's font may be wider
# XML 1.0 forbids most control characters even escaped; a token may hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def check_scale(scale: float | None = None, dpi: float | None = None) -> float:
    """The scale asked for (``dpi`` wins: ``dpi / 96``), refused outside 0.25-8."""
    value = DEFAULT_SCALE if scale is None else scale
    if dpi is not None:
        value = float(dpi) / BASE_DPI
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise ValueError(f"scale must be a finite number, got {value!r}")
    if not MIN_SCALE <= value <= MAX_SCALE:
        raise ValueError(f"scale must be {MIN_SCALE}-{MAX_SCALE} (dpi 24-768), got {value:g}")
    return float(value)


@dataclass(frozen=True)
class Figure:
    """One exportable figure. ``name`` is a file-name stem (letters, digits, ``-``, ``_``);
    ``kind`` is ``"map"`` (overlays on the image), ``"chart"`` (Altair) or ``"graph"`` /
    ``"picture"`` (other Pillow drawings). Render with :meth:`png` / :meth:`svg`; each call
    draws afresh at the scale asked for (nothing is cached in the record)."""

    name: str
    title: str
    caption: str
    kind: str
    draw_png: Callable[[float], bytes] = field(repr=False, compare=False)
    draw_svg: Callable[[float], str] = field(repr=False, compare=False)

    def png(self, scale: float | None = None, *, dpi: float | None = None) -> bytes:
        """PNG bytes at ``scale`` output pixels per CSS pixel (or at ``dpi``)."""
        return self.draw_png(check_scale(scale, dpi))

    def svg(self, scale: float | None = None, *, dpi: float | None = None) -> str:
        """SVG text; ``scale`` sets the resolution of embedded pictures (charts are vector)."""
        return self.draw_svg(check_scale(scale, dpi))

    def _repr_png_(self) -> bytes:
        """Notebooks show a figure as itself (screen resolution)."""
        return self.png(1.0)

    def data_url(self, fmt: str = "png", scale: float | None = None) -> str:
        """The figure as a ``data:`` URL (for a self-contained HTML report)."""
        if fmt == "svg":
            body, mime = self.svg(scale).encode("utf-8"), "image/svg+xml"
        elif fmt == "png":
            body, mime = self.png(scale), "image/png"
        else:
            raise ValueError(f"format is 'png' or 'svg', not {fmt!r}")
        return f"data:{mime};base64,{base64.b64encode(body).decode('ascii')}"

    def save(self, path: str | Path, scale: float | None = None) -> Path:
        """Write to ``path``; its suffix (``.png`` or ``.svg``) picks the format."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".png":
            path.write_bytes(self.png(scale))
        elif suffix == ".svg":
            path.write_text(self.svg(scale), encoding="utf-8")
        else:
            raise ValueError(f"save as .png or .svg, not {path.name!r}")
        return path


# -- pictures: boards laid out once, painted as PNG or written as SVG -------------------------


@dataclass(frozen=True)
class Panel:
    """One picture of a board and its label; ``draw(scale)`` returns it at that scale."""

    draw: Callable[[float], Image.Image]
    label: str = ""


@dataclass(frozen=True)
class _Text:
    x: float
    y: float  # top of the line
    text: str
    size: int
    colour: str = "#000000"


@dataclass(frozen=True)
class _Picture:
    x: float
    y: float
    image: Image.Image
    stretch: tuple[float, float] | None = None  # drawn at this size instead of its own


@dataclass(frozen=True)
class _Board:
    width: int
    height: int
    items: list[_Text | _Picture]


def wrap(text: str, size: int, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels at ``size`` px (the bundled font's
    widths; SVG viewers' fonts are close enough, lines get a little slack)."""
    face = font(size)
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            while face.getlength(drawable(word, face)) > width and len(word) > 1:
                cut = max(1, int(len(word) * width / face.getlength(drawable(word, face))) - 1)
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:cut])
                word = word[cut:]
            trial = f"{line} {word}" if line else word
            if line and face.getlength(drawable(trial, face)) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return [ln for ln in lines if ln] or [""]


def _text_block(
    items: list, text: str, x: float, y: float, size: int, width: float, colour: str
) -> float:
    """Wrapped lines placed from ``y`` down; returns the y below them."""
    if not text:
        return y
    step = round(size * 1.35)
    for line in wrap(text, size, width * SLACK):
        items.append(_Text(x, y, line, size, colour))
        y += step
    return y


def _legend_items(style: OverlayStyle, scale: Scale, x: float, y: float, width: float, s: float):
    """The colour bar as items (title, ramp, min/mid/max): raster in PNG, vector text in SVG;
    the same proportions as :func:`dashboard.components.overlay.legend`."""
    size = round(overlay.LEGEND_FONT_PX * s)
    margin, bar_top, bar_height = 6 * s, 19 * s, 12 * s
    ramp = colormap.apply(
        np.linspace(scale.vmin, scale.vmax, 256)[None, :], style.colormap, scale.vmin, scale.vmax
    )
    bar_width = width - 2 * margin
    items: list[_Text | _Picture] = [
        _Text(x + margin, y + 2 * s, scale.title, size),
        _Picture(x + margin, y + bar_top, Image.fromarray(ramp, "RGB"), (bar_width, bar_height)),
    ]
    face = font(size)
    for share, label, anchor in overlay.legend_ticks(scale):
        length = face.getlength(label)
        left = x + margin + bar_width * share - {"l": 0, "m": length / 2, "r": length}[anchor]
        items.append(_Text(left, y + bar_top + bar_height + 3 * s, label, size))
    return items, y + 52 * s


def board(
    title: str,
    caption: str,
    panels: Sequence[Panel],
    legend: tuple[OverlayStyle, Scale] | None,
    columns: int,
    s: float,
) -> _Board:
    """Title, a grid of labelled panels, the colour bar and the caption, at scale ``s``."""
    pad, gap = PAD * s, GAP * s
    pictures = [p.draw(s) for p in panels]
    cols = max(1, min(columns, len(pictures)))
    cell_w = max((p.width for p in pictures), default=round(336 * s))
    cell_h = max((p.height for p in pictures), default=0)
    grid_w = cols * cell_w + (cols - 1) * gap
    legend_w = min(max(grid_w, 240 * s), 480 * s) if legend else 0
    inner = max(grid_w, legend_w, 320 * s)
    items: list[_Text | _Picture] = []
    y = _text_block(items, title, pad, pad, round(TITLE_PX * s), inner, "#000000") + 4 * s
    label_size = round(LABEL_PX * s)
    label_lines = max(
        (len(wrap(p.label, label_size, cell_w)) for p in panels if p.label), default=0
    )
    row_h = cell_h + (label_lines * round(label_size * 1.35) + 4 * s if label_lines else 0)
    for i, (panel, picture) in enumerate(zip(panels, pictures, strict=True)):
        row, col = divmod(i, cols)
        x, top = pad + col * (cell_w + gap), y + row * (row_h + gap)
        items.append(_Picture(x, top, picture))
        if panel.label:
            _text_block(items, panel.label, x, top + cell_h + 4 * s, label_size, cell_w, "#222")
    rows = math.ceil(len(pictures) / cols)
    y += rows * row_h + max(rows - 1, 0) * gap + 6 * s
    if legend:
        legend_items, y = _legend_items(*legend, pad, y, legend_w, s)
        items += legend_items
    y = _text_block(items, caption, pad, y + 2 * s, round(CAPTION_PX * s), inner, "#333333")
    return _Board(math.ceil(inner + 2 * pad), math.ceil(y + pad), items)


def paint_png(layout: _Board, s: float) -> bytes:
    """The board painted with Pillow, saved with its dpi."""
    canvas = Image.new("RGB", (layout.width, layout.height), "white")
    draw = ImageDraw.Draw(canvas)
    for item in layout.items:
        if isinstance(item, _Picture):
            picture = item.image
            if item.stretch:
                size = (max(1, round(item.stretch[0])), max(1, round(item.stretch[1])))
                picture = picture.resize(size, Image.Resampling.BILINEAR)
            canvas.paste(picture.convert("RGB"), (round(item.x), round(item.y)))
        else:
            face = font(item.size)
            draw.text((item.x, item.y), drawable(item.text, face), fill=item.colour, font=face)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", dpi=(BASE_DPI * s, BASE_DPI * s), optimize=False)
    return buffer.getvalue()


def xml_text(text: str) -> str:
    """Text safe inside an XML element or attribute: escaped, forbidden characters replaced."""
    return html.escape(_NOT_XML.sub("\ufffd", text), quote=True)


def _png_url(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_svg(layout: _Board, s: float, title: str) -> str:
    """The board as SVG in CSS pixels: pictures embedded as PNG at scale ``s``, text as text."""
    width, height = layout.width / s, layout.height / s
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'version="1.1" width="{width:.1f}" height="{height:.1f}" '
        f'viewBox="0 0 {width:.1f} {height:.1f}" font-family="{SVG_FONTS}">',
        f"<title>{xml_text(title)}</title>",
        f'<rect width="{width:.1f}" height="{height:.1f}" fill="white"/>',
    ]
    for item in layout.items:
        if isinstance(item, _Picture):
            w, h = item.stretch or item.image.size
            parts.append(
                f'<image x="{item.x / s:.2f}" y="{item.y / s:.2f}" width="{w / s:.2f}" '
                f'height="{h / s:.2f}" preserveAspectRatio="none" '
                f'href="{_png_url(item.image)}"/>'
            )
        else:
            size = item.size / s
            parts.append(
                f'<text x="{item.x / s:.2f}" y="{item.y / s + size * 0.8:.2f}" '
                f'font-size="{size:.1f}" fill="{item.colour}" xml:space="preserve">'
                f"{xml_text(item.text)}</text>"
            )
    parts.append("</svg>")
    return "\n".join(parts)


def picture_figure(
    name: str,
    title: str,
    caption: str,
    panels: Sequence[Panel],
    legend: tuple[OverlayStyle, Scale] | None = None,
    columns: int = 4,
    kind: str = "map",
) -> Figure:
    """A figure of Pillow-drawn panels (one or a gallery) with an optional shared colour bar."""
    panels = list(panels)

    def png(s: float) -> bytes:
        return paint_png(board(title, caption, panels, legend, columns, s), s)

    def svg(s: float) -> str:
        return write_svg(board(title, caption, panels, legend, columns, s), s, title)

    return Figure(name, title, caption, kind, png, svg)


# -- charts -----------------------------------------------------------------------------------

CHART_WRAP = 90  # characters per title/caption line of a chart


def chart_spec(chart: alt.TopLevelMixin, title: str, caption: str) -> dict:
    """The chart's Vega-Lite spec with the figure's title and caption (as subtitle lines);
    data inline, whatever its row count (Altair refuses > 5,000 rows by default)."""
    titled = chart.properties(
        title=alt.TitleParams(
            text=textwrap.wrap(title, CHART_WRAP) or [""],
            subtitle=textwrap.wrap(caption, CHART_WRAP + 20),
            anchor="start",
            fontSize=TITLE_PX,
            subtitleFontSize=CAPTION_PX,
            subtitleColor="#333333",
        )
    )
    with alt.data_transformers.disable_max_rows():
        return titled.to_dict()


def chart_figure(chart: alt.TopLevelMixin, name: str, title: str, caption: str) -> Figure:
    """An Altair chart as a figure (SVG vector, PNG rendered at the scale asked for)."""
    spec = chart_spec(chart, title, caption)

    def png(s: float) -> bytes:
        # vl-convert draws scale * ppi / 72 pixels per CSS pixel and records ppi as the dpi
        return vl_convert.vegalite_to_png(
            spec, scale=72 / BASE_DPI, ppi=BASE_DPI * s, allowed_base_urls=[]
        )

    def svg(_: float) -> str:
        return vl_convert.vegalite_to_svg(spec, allowed_base_urls=[])

    return Figure(name, title, caption, "chart", png, svg)
