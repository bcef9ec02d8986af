"""Two answers aligned word by word, not token by token or position by position.

Two checkpoints (or one model on an edited image) answer the same question with answers
whose k-th tokens need not be the same word: one inserts a word, tokenisers split a word
differently ("umbrella" vs "umb" + "rella"). Comparing per position would set unrelated
words side by side, so the words of each answer (tokens grouped by the trace's word ids)
are normalised (case, Unicode form, sub-word markers, surrounding punctuation) and aligned
with :class:`difflib.SequenceMatcher`, which keeps the longest common runs in order, so a
repeated word pairs with the occurrence that keeps the rest of the answer in line.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dashboard.components.text import DiffPiece, Word

EQUAL, CHANGED, DELETED, INSERTED = "equal", "changed", "deleted", "inserted"
_MARKERS = str.maketrans({"\u2581": " ", "\u0120": " ", "\u010a": " "})  # ▁ Ġ Ċ


def normalise(text: str) -> str:
    """A word's matching key: NFKC, sub-word markers as spaces, no inner or surrounding
    space, case folded, surrounding punctuation dropped unless the word is punctuation."""
    folded = "".join(unicodedata.normalize("NFKC", text).translate(_MARKERS).split()).casefold()
    stripped = folded.strip("".join({c for c in folded if unicodedata.category(c)[0] == "P"}))
    return stripped or folded


@dataclass(frozen=True)
class Aligned:
    """One step of the alignment: a word of each answer, or of one of them."""

    op: str  # EQUAL, CHANGED, DELETED (left only) or INSERTED (right only)
    left: Word | None
    right: Word | None


def align(left: Sequence[Word], right: Sequence[Word]) -> list[Aligned]:
    """The words of two answers in reading order, paired where they match; inside a block
    of changed words the i-th left word pairs with the i-th right word and the rest of the
    longer side is deleted or inserted."""
    keys_left = [normalise(w.text) for w in left]
    keys_right = [normalise(w.text) for w in right]
    matcher = difflib.SequenceMatcher(a=keys_left, b=keys_right, autojunk=False)
    out: list[Aligned] = []
    for op, i0, i1, j0, j1 in matcher.get_opcodes():
        lefts, rights = list(left[i0:i1]), list(right[j0:j1])
        if op == "equal":
            out += [Aligned(EQUAL, a, b) for a, b in zip(lefts, rights, strict=True)]
            continue
        common = min(len(lefts), len(rights))
        out += [Aligned(CHANGED, lefts[i], rights[i]) for i in range(common)]
        out += [Aligned(DELETED, a, None) for a in lefts[common:]]
        out += [Aligned(INSERTED, None, b) for b in rights[common:]]
    return out


def diff_pieces(alignment: Sequence[Aligned]) -> list[DiffPiece]:
    """The alignment as runs for :func:`dashboard.components.html.diff`: a changed word is
    its left form struck through, then its right form inserted."""
    pieces: list[DiffPiece] = []

    def add(op: str, text: str) -> None:
        if pieces and pieces[-1].op == op:
            pieces[-1] = DiffPiece(op, f"{pieces[-1].text} {text}")
        else:
            pieces.append(DiffPiece(op, text))

    for step in alignment:
        if step.op == EQUAL:
            add("equal", step.left.text)
            continue
        if step.left is not None:
            add("delete", step.left.text)
        if step.right is not None:
            add("insert", step.right.text)
    return pieces


def partners(alignment: Sequence[Aligned], left_tokens: Sequence[int]) -> tuple[int, ...]:
    """The right answer's tokens aligned with the left words that hold ``left_tokens``."""
    chosen = set(left_tokens)
    found = {
        k
        for step in alignment
        if step.left is not None and step.right is not None and chosen & set(step.left.positions)
        for k in step.right.positions
    }
    return tuple(sorted(found))


def word_probability(word: Word, chosen_prob: np.ndarray) -> float:
    """The probability the model gave the whole word: the product over its tokens."""
    return float(np.prod(np.asarray(chosen_prob, np.float64)[list(word.positions)]))


def top_k_probability(
    top_text: Sequence[Sequence[str]], top_probs: np.ndarray, k: int, token: str
) -> float | None:
    """The probability step ``k`` gave a token spelled ``token`` (normalised), if that token
    was among its logged top-k; None when it was not."""
    key = normalise(token)
    for text, prob in zip(top_text[k], np.asarray(top_probs)[k], strict=False):
        if normalise(text) == key:
            return float(prob)
    return None
