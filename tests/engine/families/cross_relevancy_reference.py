"""A slow float64 reference for engine/cross_relevancy.py: the full relevancy matrix over the
joint token set (text positions, then every vision token of every image), built layer by layer
in forward order (``R ← R + Ā·R`` from ``R = I``: the vision tower's layers, then the LM's
self- and cross-attention layers), and read at the answer rows. No row pushing, no shortcuts:
what the fast module computes one row at a time, this computes whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ReferenceMaps:
    llm: np.ndarray  # [N, T]
    llm_keys: np.ndarray  # [N, K]
    vision: np.ndarray  # [N, G]
    llm_through_vision: np.ndarray  # [N, G]


def _cam(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """[H, q, k] -> [q, k]: the head mean of the positive part of gradient x attention."""
    return (attention.detach().double() * gradient.double()).clamp(min=0).mean(dim=0)


def reference_relevancy(
    logits: torch.Tensor,
    answer_ids: torch.Tensor,
    self_attention: Sequence[torch.Tensor],
    cross_attention: Sequence[torch.Tensor],
    cross_layers: Sequence[int],
    vision_layers: Sequence[torch.Tensor],
    vision_sequences: Sequence[np.ndarray],
    key_tokens: np.ndarray,
    prompt_length: int,
    num_patches: int,
) -> ReferenceMaps:
    """``vision_layers``: one [S, Hv, V, V] tensor per vision layer, batch row = sequence."""
    seq_len = self_attention[0].shape[-1]
    lengths = [len(s) for s in vision_sequences]
    offsets = np.concatenate([[0], np.cumsum(lengths)])[:-1] + seq_len
    size = seq_len + sum(lengths)
    keys = seq_len + np.asarray(key_tokens)
    patch_of = np.full(size, -1)
    for offset, sequence in zip(offsets, vision_sequences, strict=True):
        patch_of[offset : offset + len(sequence)] = sequence
    on_patch = np.flatnonzero(patch_of >= 0)
    targets = [*self_attention, *cross_attention, *vision_layers]
    out: dict[str, list[np.ndarray]] = {m: [] for m in ReferenceMaps.__dataclass_fields__}
    for k in range(len(answer_ids)):
        grads = torch.autograd.grad(
            logits[k, answer_ids[k]], targets, retain_graph=True, allow_unused=True
        )
        grads = [
            torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads, strict=True)
        ]
        g_self = grads[: len(self_attention)]
        g_cross = grads[len(self_attention) : len(self_attention) + len(cross_attention)]
        g_vision = grads[len(self_attention) + len(cross_attention) :]

        eye = torch.eye(size, dtype=torch.float64)
        r_vision = eye.clone()
        for attention, gradient in zip(vision_layers, g_vision, strict=True):
            layer = torch.zeros(size, size, dtype=torch.float64)
            for s, offset in enumerate(offsets):
                block = slice(offset, offset + lengths[s])
                layer[block, block] = _cam(attention[s], gradient[s])
            r_vision = r_vision + layer @ r_vision

        lm_layers = []
        cross = dict(zip(cross_layers, zip(cross_attention, g_cross, strict=True), strict=True))
        selfs = iter(zip(self_attention, g_self, strict=True))
        for index in range(len(self_attention) + len(cross_attention)):
            layer = torch.zeros(size, size, dtype=torch.float64)
            if index in cross:
                attention, gradient = cross[index]
                layer[:seq_len, keys] = _cam(attention[0], gradient[0])
            else:
                attention, gradient = next(selfs)
                layer[:seq_len, :seq_len] = _cam(attention[0], gradient[0])
            lm_layers.append(layer)
        r_lm, r_all = eye.clone(), r_vision
        for layer in lm_layers:
            r_lm, r_all = r_lm + layer @ r_lm, r_all + layer @ r_all
        q = prompt_length - 1 + k
        text = r_lm[q, :seq_len] - eye[q, :seq_len]
        key_values = r_lm[q, keys]
        total = text.sum() + key_values.sum()
        out["llm"].append((text / total).numpy())
        out["llm_keys"].append((key_values / total).numpy())

        summary_rows = torch.zeros(size, dtype=torch.float64)
        for offset, sequence in zip(offsets, vision_sequences, strict=True):
            start = torch.zeros(size, dtype=torch.float64)
            mine = offset + np.flatnonzero(sequence >= 0)
            start[mine] = 1.0 / len(mine)
            summary_rows += start @ r_vision - start
        vision = np.zeros(num_patches)
        np.add.at(vision, patch_of[on_patch], (summary_rows[on_patch] / summary_rows.sum()).numpy())
        out["vision"].append(vision)

        spread = np.zeros(num_patches)
        np.add.at(spread, patch_of[on_patch], r_all[q, on_patch].numpy())
        out["llm_through_vision"].append(spread * float(key_values.sum() / total) / spread.sum())
    return ReferenceMaps(**{m: np.stack(v) for m, v in out.items()})
