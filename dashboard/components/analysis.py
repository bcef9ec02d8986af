"""Numbers behind the views, computed from stored tensors with numpy only."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

SHARE_CATEGORIES = ("image", "question", "earlier answer")  # order of Summaries.attention_shares


def image_share(rows: np.ndarray, image_positions: np.ndarray) -> np.ndarray:
    """Attention mass on image tokens per leading index (e.g. [H, T] -> [H])."""
    return np.asarray(rows, dtype=np.float64)[..., image_positions].sum(axis=-1)


def rank_heads(shares: np.ndarray) -> np.ndarray:
    """Head indices, most image-attending first (stable, so ties keep head order)."""
    return np.argsort(-np.asarray(shares), kind="stable")


def token_shares(attention_shares: np.ndarray, answer_tokens: Sequence[int]) -> np.ndarray:
    """[L, H, 3] share on image / question / earlier answer, averaged over ``answer_tokens``."""
    return np.asarray(attention_shares, dtype=np.float64)[:, :, list(answer_tokens), :].mean(axis=2)


def attention_to_patches(block: np.ndarray) -> np.ndarray:
    """Attention each query row pays to a set of patch columns: [..., r, c] -> [..., r]."""
    return np.asarray(block, dtype=np.float64).sum(axis=-1)


def rollout(layers: Iterable[np.ndarray], residual: float = 0.5) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) through [H, V, V] layers, first to last.

    Heads are averaged, the residual connection is modelled as ``residual * I`` and rows are
    renormalised; the product over layers says how much each input position flows into each
    output position. Layers are consumed one at a time, so a whole tower never sits in memory.
    """
    result: np.ndarray | None = None
    for layer in layers:
        heads = np.asarray(layer, dtype=np.float64).mean(axis=0)
        size = heads.shape[-1]
        mixed = (1.0 - residual) * heads + residual * np.eye(size)
        mixed /= mixed.sum(axis=-1, keepdims=True)
        result = mixed if result is None else mixed @ result
    if result is None:
        raise ValueError("rollout needs at least one layer")
    return result


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint) of two distributions."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    q = np.clip(np.asarray(q, dtype=np.float64), 0.0, None)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / m[mask])).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def layer_divergence(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-layer JS divergence of two [L, X] distributions (compared over common layers)."""
    layers = min(len(a), len(b))
    return np.array([js_divergence(a[i], b[i]) for i in range(layers)])


def relevancy_image_share(llm: np.ndarray, image_positions: np.ndarray) -> np.ndarray:
    """Per answer token: share of its positive relevancy on image tokens ([N, T] -> [N])."""
    positive = np.clip(np.asarray(llm, dtype=np.float64), 0.0, None)
    total = positive.sum(axis=-1)
    on_image = positive[..., image_positions].sum(axis=-1)
    return np.divide(on_image, total, out=np.zeros_like(total), where=total > 0)


def grouped_sum(values: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Sum ``values`` over each group of positions (tokens -> words)."""
    values = np.asarray(values, dtype=np.float64)
    return np.array([values[list(g)].sum() for g in groups])


def relative_l1(a: np.ndarray, reference: np.ndarray) -> float | None:
    """``sum|a - reference| / sum|reference|``; ``None`` when the reference is all zero."""
    a, reference = np.asarray(a, np.float64), np.asarray(reference, np.float64)
    norm = float(np.abs(reference).sum())
    return None if norm == 0 else float(np.abs(a - reference).sum()) / norm
