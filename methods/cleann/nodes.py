"""Choose which tokens become graph nodes for explaining one token.

Learning a graph over all ~700 tokens is neither affordable nor readable, so
(as in the LVLM-Interpret seed tool, ``utils_causal_discovery.handle_causality``)
the graph is restricted to the tokens the explained token attends to: the top
image tokens, the text tokens above an attention threshold, and the explained
token itself. As there, the number of image tokens is the number of tokens of
the whole row above the threshold, and the threshold is 0.01.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.01
DEFAULT_MAX_IMAGE_TOKENS = 50
MIN_IMAGE_TOKENS = 2


def select_nodes(
    attention_row: np.ndarray,
    image_positions: np.ndarray,
    text_positions: np.ndarray,
    target: int,
    threshold: float = DEFAULT_THRESHOLD,
    max_image_tokens: int = DEFAULT_MAX_IMAGE_TOKENS,
) -> np.ndarray:
    """Sorted token positions to use as graph nodes for ``target``.

    ``k`` image tokens with the highest attention are kept, where ``k`` is the
    number of tokens of the row (any role) strictly above ``threshold``, clipped
    to ``[2, max_image_tokens]`` (fewer only if the image has fewer tokens): a
    token that barely looks at the image still gets two image nodes so its
    graph can say so. Text tokens are kept when strictly above ``threshold``.
    Ties in attention are broken by position, so the result is deterministic.
    """
    row = np.asarray(attention_row, dtype=np.float64).ravel()
    image = np.asarray(image_positions, dtype=np.int64).ravel()
    text = np.asarray(text_positions, dtype=np.int64).ravel()
    t = int(target)
    if not 0 <= t < row.size:
        raise ValueError(f"target {t} is outside the attention row of length {row.size}")
    for name, pos in (("image_positions", image), ("text_positions", text)):
        if pos.size and (pos.min() < 0 or pos.max() >= row.size):
            raise ValueError(f"{name} must lie in [0, {row.size}); got {pos.min()}..{pos.max()}")
    if max_image_tokens < MIN_IMAGE_TOKENS:
        raise ValueError(f"max_image_tokens must be >= {MIN_IMAGE_TOKENS}, got {max_image_tokens}")

    image = image[image != t]
    weights = row[image]
    k = int(np.count_nonzero(row > threshold))
    k = min(max(k, MIN_IMAGE_TOKENS), max_image_tokens, image.size)
    top_image = image[np.lexsort((image, -weights))[:k]]

    text = text[text != t]
    kept_text = text[row[text] > threshold]
    return np.unique(np.concatenate([top_image, kept_text, [t]]).astype(np.int64))
