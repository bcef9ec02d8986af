"""Small derived arrays the dashboard reads instead of the full attention tensors."""

from __future__ import annotations

import numpy as np

from store.schema import TokenRole


def attention_shares(lm_attention: np.ndarray, roles: np.ndarray, prompt_length: int) -> np.ndarray:
    """[L, H, N, 3]: each answer token's attention on image / prompt text / earlier answer.

    Answer token ``k`` is produced by query row ``P-1+k``; the last prompt token counts as
    prompt text, so the three shares of every row sum to 1.
    """
    rows = lm_attention[:, :, prompt_length - 1 : -1, :].astype(np.float32)
    masks = [roles == TokenRole.IMAGE, roles == TokenRole.TEXT, roles == TokenRole.ANSWER]
    return np.stack([rows[..., mask].sum(-1) for mask in masks], axis=-1)
