"""The report's HTML page: one file, no network, every piece of text escaped here.

The page carries a Content-Security-Policy that allows nothing but ``data:`` images and its
own stylesheet (pinned by hash): no script, no font, no frame, no fetch, no form can run or
load even if some text escaped its escaping. Text reaches HTML only through :func:`esc`
(``html.escape`` with quotes), and markup is built from numbers, fixed words and escaped
text, never from Markdown, so ``<script>``, ``onerror=``, ``javascript:`` links, Markdown
and LaTeX in prompts, answers, tags, notes or model ids show as the characters they are.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Iterable, Sequence

CSS = """
body { font: 15px/1.45 "Liberation Sans", Arial, Helvetica, sans-serif; color: #111;
       margin: 0 auto; max-width: 1180px; padding: 0 24px 48px; background: #fff; }
header { border-bottom: 2px solid #333; margin-bottom: 16px; }
h1 { font-size: 26px; margin: 24px 0 4px; }
h2 { font-size: 21px; margin: 32px 0 8px; border-bottom: 1px solid #bbb; }
h3 { font-size: 17px; margin: 20px 0 6px; }
h4 { font-size: 15px; margin: 14px 0 4px; }
.meta, .empty, figcaption { color: #444; font-size: 13px; }
nav ol { columns: 2; font-size: 13px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0; }
dl.facts dt { font-weight: bold; }
dl.facts dd { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 10px 0 18px; break-inside: avoid; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
img.thumb { width: 72px; height: auto; border: 1px solid #ddd; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f7f7f7; padding: 8px;
      font-size: 12px; }
del { background: #fdd; } ins { background: #dfd; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.modes { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 0 18px; }
section.trace { break-before: page; }
@media print { nav { display: none; } body { max-width: none; } }
""".strip()


def esc(value: object) -> str:
    """Any value as HTML text: escaped, quotes included (safe in attributes too)."""
    return html.escape(str(value), quote=True)


def csp(style: str) -> str:
    """The page's policy: only ``data:`` images and this exact stylesheet."""
    digest = base64.b64encode(hashlib.sha256(style.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; img-src data:; "
        f"style-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )


def page(title: str, subtitle: str, toc: Sequence[tuple[str, str]], body: str) -> str:
    """The whole document. ``toc``: (anchor id, label) pairs; ids are made by the caller
    from hex trace ids and fixed words only."""
    links = "".join(f'<li><a href="#{esc(a)}">{esc(label)}</a></li>' for a, label in toc)
    nav = f"<nav><ol>{links}</ol></nav>" if toc else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp(CSS))}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head><body>\n"
        f'<header><h1>{esc(title)}</h1><p class="meta">{esc(subtitle)}</p></header>\n'
        f"{nav}\n<main>\n{body}\n</main>\n</body></html>\n"
    )


def section(anchor: str, title: str, body: str, level: int = 2, kind: str = "") -> str:
    """A titled section; ``kind`` names it for tests and styles (a fixed word)."""
    cls = f' class="{esc(kind)}"' if kind else ""
    return (
        f'<section id="{esc(anchor)}" data-section="{esc(title)}"{cls}>'
        f"<h{level}>{esc(title)}</h{level}>{body}</section>"
    )


def facts(pairs: Iterable[tuple[str, object]]) -> str:
    """A definition list of (label, value); values shown as text, line breaks kept."""
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs)
    return f'<dl class="facts">{rows}</dl>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], raw: int | None = None) -> str:
    """A table of text cells; numbers right-aligned. Column ``raw`` holds markup the caller
    built (a thumbnail ``<img>``), every other cell is escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i == raw:
                cells.append(f"<td>{cell}</td>")
            elif isinstance(cell, int | float) and not isinstance(cell, bool):
                cells.append(f'<td class="num">{esc(number(cell))}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def number(value: float) -> str:
    """A number as tables show it: integers whole, others to 4 significant digits."""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def figure(url: str, title: str, caption: str) -> str:
    """A figure embedded as a ``data:`` image, its title and caption repeated as text (for
    search, screen readers and copy-paste)."""
    if not url.startswith("data:image/"):
        raise ValueError("figures are embedded as data: images only")
    return (
        f'<figure><img src="{esc(url)}" alt="{esc(title)}">'
        f"<figcaption><b>{esc(title)}</b> {esc(caption)}</figcaption></figure>"
    )


def empty(message: str) -> str:
    return f'<p class="empty">{esc(message)}</p>'


def json_text(value: object, limit: int = 20_000) -> str:
    """Free-form JSON shown as text, cut at ``limit`` characters (and saying so)."""
    dumped = json.dumps(value, indent=1, ensure_ascii=False, default=str)
    if len(dumped) > limit:
        dumped = dumped[:limit] + f"\n… ({len(dumped) - limit:,} more characters)"
    return f"<pre>{esc(dumped)}</pre>"
