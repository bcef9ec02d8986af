"""Small derived arrays the dashboard reads instead of the full attention tensors."""

from __future__ import annotations

import numpy as np

from store.schema import TokenRole


def attention_shares(answer_rows: np.ndarray, roles: np.ndarray) -> np.ndarray:
    """[L, H, N, 3]: each answer token's attention on image / prompt text / earlier answer.

    ``answer_rows`` [L, H, N, T] are the query rows that produced the answer tokens (row
    ``P-1+k`` for token k); the last prompt token counts as prompt text, so the three shares of
    every row sum to 1.
    """
    rows = np.asarray(answer_rows, dtype=np.float32)
    masks = [roles == TokenRole.IMAGE, roles == TokenRole.TEXT, roles == TokenRole.ANSWER]
    return np.stack([rows[..., mask].sum(-1) for mask in masks], axis=-1)
