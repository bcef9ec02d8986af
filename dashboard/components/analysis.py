"""Numbers behind the views, computed from stored tensors with numpy only."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from store.schema import PatchMap

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


def spread(values: np.ndarray, mapping: PatchMap, num_patches: int) -> np.ndarray:
    """Values over rows (sequence positions, cross-attention keys) carried onto the patches
    those rows read, by the map's weights: [..., R] -> [..., G]. A row's value is shared out
    whole (its weights sum to 1), so an attention share stays a share of the same row.
    Patches no row reads are NaN: nothing is known there, which is not zero."""
    values = np.asarray(values, dtype=np.float64)
    rows = np.unique(mapping.rows)
    rows = rows[rows < values.shape[-1]]
    weights = mapping.matrix(rows, num_patches).astype(np.float64)
    out = values[..., rows] @ weights
    read = weights.sum(axis=0) > 0
    return np.where(read, out, np.nan)


def patch_weights(mapping: PatchMap, patches: Sequence[int], length: int) -> np.ndarray:
    """[length] how much of each row reads any of ``patches`` (0 for rows that read none):
    the weights to sum attention columns with to get attention on those patches."""
    weights = np.zeros(length, np.float64)
    hit = np.isin(mapping.patches, list(patches)) & (mapping.rows < length)
    np.add.at(weights, mapping.rows[hit], mapping.weights[hit])
    return weights


def attention_to_patches(block: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Attention each query row pays to a set of patches: [..., r, c] columns weighted by
    how much of each column's token reads them ([c]) -> [..., r]."""
    return np.asarray(block, dtype=np.float64) @ np.asarray(weights, dtype=np.float64)


def vision_values(row: np.ndarray, sequence: np.ndarray, num_patches: int) -> np.ndarray:
    """A vision-tower row over its sequence's tokens placed on their patches ([V] -> [G]);
    NaN on patches the sequence does not hold (other tiles), CLS and padding left out."""
    out = np.full(num_patches, np.nan)
    sequence = np.asarray(sequence)
    on_patch = sequence >= 0
    out[sequence[on_patch]] = np.asarray(row, dtype=np.float64)[on_patch]
    return out


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


def grouped_sum(values: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Sum ``values`` over each group of positions (tokens -> words)."""
    values = np.asarray(values, dtype=np.float64)
    return np.array([values[list(g)].sum() for g in groups])


def relative_l1(a: np.ndarray, reference: np.ndarray) -> float | None:
    """``sum|a - reference| / sum|reference|``; ``None`` when the reference is all zero."""
    a, reference = np.asarray(a, np.float64), np.asarray(reference, np.float64)
    norm = float(np.abs(reference).sum())
    return None if norm == 0 else float(np.abs(a - reference).sum()) / norm
