"""The only place the dashboard writes HTML; every piece of model or user text is escaped here.

Continuous colour (answer tokens shaded by image reliance) and inline diffs have no native
Streamlit element, so these few fragments are built by hand: text goes through
:func:`html.escape`, styles are built from numbers only.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from dashboard.components import colormap
from dashboard.components.text import DiffPiece


def _text_colour(rgb: np.ndarray) -> str:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "#000" if luminance > 140 else "#fff"


def shaded_tokens(
    texts: Sequence[str], values: np.ndarray, cmap: str, vmin: float = 0.0, vmax: float = 1.0
) -> str:
    """Tokens as spans whose background encodes ``values``, each with its value as a tooltip."""
    colours = colormap.apply(np.asarray(values), cmap, vmin, vmax)
    spans = []
    for text, value, rgb in zip(texts, values, colours, strict=True):
        style = (
            f"background:rgb({int(rgb[0])},{int(rgb[1])},{int(rgb[2])});"
            f"color:{_text_colour(rgb)};padding:1px 2px;border-radius:3px;white-space:pre-wrap"
        )
        spans.append(f'<span title="{float(value):.3f}" style="{style}">{html.escape(text)}</span>')
    return f'<div class="lvlm-tokens" style="line-height:1.9">{"".join(spans)}</div>'


_DIFF_TAGS = {
    "equal": ("<span>", "</span>"),
    "delete": ('<del style="background:#fdd">', "</del>"),
    "insert": ('<ins style="background:#dfd">', "</ins>"),
}
_BARE_TAGS = {
    "equal": ("<span>", "</span>"),
    "delete": ("<del>", "</del>"),
    "insert": ("<ins>", "</ins>"),
}


def diff(pieces: Sequence[DiffPiece], inline_style: bool = True) -> str:
    """An answer diff with deletions struck through and insertions underlined.

    ``inline_style=False`` leaves colours to the page's stylesheet (a report whose
    Content-Security-Policy allows no ``style`` attributes)."""
    tags = _DIFF_TAGS if inline_style else _BARE_TAGS
    body = " ".join(f"{tags[p.op][0]}{html.escape(p.text)}{tags[p.op][1]}" for p in pieces)
    return f'<div class="lvlm-diff">{body}</div>'


def marked_tokens(texts: Sequence[str], marked: Sequence[int], note: str) -> str:
    """Tokens as text, the ``marked`` ones (indices into ``texts``) highlighted with ``note``
    as their tooltip: the answer with its flagged words."""
    chosen = set(marked)
    spans = [
        f'<mark title="{html.escape(note)}" style="background:#fdd;border-bottom:2px solid '
        f'#d62728;white-space:pre-wrap">{html.escape(t)}</mark>'
        if i in chosen
        else f'<span style="white-space:pre-wrap">{html.escape(t)}</span>'
        for i, t in enumerate(texts)
    ]
    return f'<div class="lvlm-tokens" style="line-height:1.9">{"".join(spans)}</div>'
