"""Text drawn into pictures (legends, graph labels): one font, and only glyphs it has.

Pillow's bundled font covers basic Latin; a character it lacks (U+2212 minus, CJK, most
accents) draws as an empty box, so labels go through :func:`drawable` first.
"""

from __future__ import annotations

import unicodedata
from functools import cache

from PIL import ImageFont

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont

# Typographic characters the bundled font lacks, with their closest ASCII form.
_SUBSTITUTES = str.maketrans(
    {"−": "-", "–": "-", "—": "-", "×": "x", "·": "-", "…": "...", "≤": "<=", "≥": ">="}
)


@cache
def font(size: int) -> Font:
    """Pillow's bundled font at ``size`` pixels (no system font files, works offline)."""
    return ImageFont.load_default(size=size)


def drawable(text: str, face: Font) -> str:
    """``text`` with every character ``face`` cannot draw replaced (typographic dashes by
    ASCII ones, accented letters by plain ones, anything else by "?"), so no label shows an
    empty box."""
    text = unicodedata.normalize("NFKD", text.translate(_SUBSTITUTES))
    text = "".join(c for c in text if not unicodedata.combining(c))
    missing = bytes(face.getmask("\uffff"))
    return "".join(
        c if c.isspace() or c.isascii() or bytes(face.getmask(c)) != missing else "?" for c in text
    )
