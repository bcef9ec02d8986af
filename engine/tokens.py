"""Token text and word grouping that work for any tokenizer.

Sub-word markers differ per tokenizer ('▁' for SentencePiece, 'Ġ' for byte-level BPE, '##' for
WordPiece), so instead of parsing markers we let the tokenizer decode growing prefixes and look
at what each token adds: a token starts a new word when its text begins with whitespace, when
the text before it ended with whitespace, or when it or its predecessor is punctuation.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np


def _is_punctuation(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and all(unicodedata.category(ch).startswith("P") for ch in stripped)


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token decoded on its own (special tokens kept, so '<image>' reads as such)."""
    return [tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids]


def word_ids(tokenizer, ids: Sequence[int]) -> np.ndarray:
    """Word index of each token in one contiguous run of text (0-based within the run)."""
    special = set(getattr(tokenizer, "all_special_ids", []))
    result = np.zeros(len(ids), dtype=np.int32)
    word = -1
    previous_text = ""
    previous_added = ""
    for k, token in enumerate(ids):
        text = tokenizer.decode([int(t) for t in ids[: k + 1]], skip_special_tokens=False)
        added = text[len(previous_text) :] if text.startswith(previous_text) else text
        starts_word = (
            k == 0
            or int(token) in special
            or int(ids[k - 1]) in special
            or added[:1].isspace()
            or previous_text[-1:].isspace()
            or _is_punctuation(added)
            or _is_punctuation(previous_added)
        )
        if starts_word:
            word += 1
        result[k] = word
        previous_text, previous_added = text, added
    return result
