"""Tokens as people read them: visible labels, words, Markdown-safe strings, answer diffs."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from store import TokenRole

_MARKDOWN_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")


def token_label(text: str) -> str:
    """A token as a short visible label: whitespace made visible, never empty."""
    visible = text.replace("\n", "↵").replace("\t", "⇥").strip()
    return visible or "␣"


def distinct(labels: Sequence[str]) -> list[str]:
    """Labels a widget can tell apart: a repeated label gets its index (``the #6``).

    Streamlit's pills and select boxes map a click back to an option through its label, so
    of two options labelled "the" a click on the first selected the last."""
    counts = Counter(labels)
    return [f"{label} #{i}" if counts[label] > 1 else label for i, label in enumerate(labels)]


def markdown_literal(text: str) -> str:
    """Backslash-escape every ASCII punctuation mark so Streamlit Markdown shows ``text`` as is.

    Widget option labels and image captions are Markdown; a token such as ``![x](http://...)``
    or ``:red[x]`` must appear literally rather than become an image, link or directive.
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text.replace("\n", " "))


@dataclass(frozen=True)
class Word:
    """Consecutive positions sharing a word id within one role segment."""

    index: int  # order of the word within its selection (answer or prompt)
    positions: tuple[int, ...]  # sequence positions of its tokens
    text: str


def words(texts: Sequence[str], roles: np.ndarray, word_ids: np.ndarray, role: int) -> list[Word]:
    """Group the positions of ``role`` into words.

    Word ids restart in every role segment (a run of equal roles), so a word is keyed by
    (segment, word id); positions without a word id (-1) become words of their own.
    """
    segment = np.concatenate([[0], np.cumsum(roles[1:] != roles[:-1])])
    groups: dict[tuple[int, int], list[int]] = {}
    for position in np.flatnonzero(roles == role):
        wid = int(word_ids[position])
        key = (int(segment[position]), wid if wid >= 0 else -1 - int(position))
        groups.setdefault(key, []).append(int(position))
    ordered = sorted(groups.values(), key=lambda ps: ps[0])
    return [
        Word(i, tuple(ps), "".join(texts[p] for p in ps).strip() or token_label(texts[ps[0]]))
        for i, ps in enumerate(ordered)
    ]


@dataclass(frozen=True)
class DiffPiece:
    """A run of an answer diff; ``op``: "equal", "delete" (only in A) or "insert" (only in B)."""

    op: str
    text: str


def answer_diff(a: str, b: str) -> list[DiffPiece]:
    """Word-level diff of two answers, as runs in reading order."""
    words_a, words_b = a.split(), b.split()
    pieces: list[DiffPiece] = []
    matcher = difflib.SequenceMatcher(a=words_a, b=words_b, autojunk=False)
    for op, i0, i1, j0, j1 in matcher.get_opcodes():
        if op in ("equal", "delete", "replace") and i1 > i0:
            pieces.append(
                DiffPiece("equal" if op == "equal" else "delete", " ".join(words_a[i0:i1]))
            )
        if op in ("insert", "replace") and j1 > j0:
            pieces.append(DiffPiece("insert", " ".join(words_b[j0:j1])))
    return pieces


_SPECIAL = re.compile(r"^<[^<>\s]*>$")


def template_positions(
    texts: Sequence[str], roles: np.ndarray, prompt_length: int, user_prompt: str
) -> set[int]:
    """Prompt positions that belong to the chat template, not to the user's question.

    The user's prompt is found in the prompt's text tokens by its non-space characters
    (tokenisers add spaces and markers such as "▁"); every text token outside that span
    (``<s>``, "USER", ":", "ASSISTANT", line breaks) is template. When the prompt cannot be
    found, only special tokens like ``<s>`` count as template.
    """
    positions = [p for p in range(prompt_length) if roles[p] != TokenRole.IMAGE]
    pieces = ["".join(texts[p].replace("▁", "").split()) for p in positions]
    target = "".join(user_prompt.split())
    joined = "".join(pieces)
    start = joined.find(target) if target else -1
    if start < 0:
        return {p for p, piece in zip(positions, pieces, strict=True) if _SPECIAL.match(piece)}
    end, offset, template = start + len(target), 0, set()
    for position, piece in zip(positions, pieces, strict=True):
        inside = piece and offset >= start and offset + len(piece) <= end
        if not inside:
            template.add(position)
        offset += len(piece)
    return template


def short_id(trace_id: str) -> str:
    """The first 8 hex digits: enough to tell traces apart on screen (links keep all 32)."""
    return trace_id[:8]


def short_time(iso: str) -> str:
    """An ISO-8601 UTC timestamp to the second, as people read it: "2026-11-29 10:31:05 UTC"."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    zone = " UTC" if moment.utcoffset() == timedelta(0) else moment.strftime(" %z")
    return moment.strftime("%Y-%m-%d %H:%M:%S") + zone
