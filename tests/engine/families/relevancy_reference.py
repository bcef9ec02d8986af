"""A slow relevancy reference for any family, written from the definitions with full matrices.

Shares no arithmetic with ``engine.relevancy``: for each answer token it runs a fresh forward
over the prefix that produced it (no KV cache, no hooks on the LM: the model's own
``output_attentions``), takes gradients with autograd and multiplies full float64 matrices:

    Ā_l = E_h[(∇A_l ⊙ A_l)⁺]            (eq. 5)
    R = (I + Ā_L)···(I + Ā_1)            (eq. 6)

per LM and per vision sequence (a tile, or an image; windows of Qwen2.5-VL are placed in their
image's matrix). With the dense token -> patch matrix ``W`` [T, G] and each vision sequence's
summary start ``u_s`` (its CLS, or uniform over the tokens that read patches):

    vision              = concat_s(u_s R_s − u_s)[patches] / total
    all                 = Wᵀ (W v) R_LM  / (its sum + the non-patch summary entries),
                          v = concat_s(u_s R_s − u_s)[patches]
    llm                 = (e_q R_LM − e_q) / its sum
    llm_through_vision  = concat_s((Wᵀ llm)_s R_s)[patches], scaled to sum (Wᵀ llm)

The vision attention comes through the same capture as the recorder's (transformers'
``AttentionInterface``) and the adapter's ``vision_pieces`` and geometry, which the family
tests check separately against the model itself.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.capture import capture_vision_attention
from store.schema import ImageGeometry


def _full(cams: list[torch.Tensor]) -> torch.Tensor:
    size = cams[0].shape[-1]
    relevancy = torch.eye(size, dtype=torch.float64)
    for cam in cams:
        relevancy = relevancy + cam @ relevancy
    return relevancy


def _cam(attention: torch.Tensor, gradient: torch.Tensor | None) -> torch.Tensor:
    if gradient is None:
        return torch.zeros(attention.shape[-2:], dtype=torch.float64)
    weighted = (gradient.double() * attention.double()).clamp(min=0)
    return weighted.reshape(-1, *weighted.shape[-2:]).mean(dim=0)


def _share(row: torch.Tensor) -> torch.Tensor:
    return row / row.sum() if row.sum() > 0 else row


def reference_relevancy(loaded, inputs: dict, sequence: np.ndarray, geometry: ImageGeometry):
    """(llm [N, T], vision [N, G], all [N, G], llm_through_vision [N, G]) per answer token."""
    model, adapter = loaded.model, loaded.adapter
    sequence = torch.as_tensor(sequence)
    prompt_length = inputs["input_ids"].shape[1]
    total = len(sequence)
    weights = torch.as_tensor(
        geometry.token_patches.matrix(np.arange(total), geometry.num_patches), dtype=torch.float64
    )
    feeding = adapter.vision_layers_feeding_lm()
    rows: list[list[torch.Tensor]] = [[], [], [], []]
    for k in range(total - prompt_length):
        prefix = sequence[: prompt_length + k]
        forced = adapter.forced_inputs(inputs, prefix)
        for name in adapter.pixel_inputs():
            if name in forced:
                forced[name] = forced[name].clone().requires_grad_(True)
        with torch.enable_grad(), capture_vision_attention(model) as calls:
            output = model(**forced, output_attentions=True)
        logit = output.logits[0, -1, sequence[prompt_length + k]]
        lm = list(output.attentions)
        gradients = torch.autograd.grad(logit, [*lm, *calls], allow_unused=True)
        r_lm = _full([_cam(a, g) for a, g in zip(lm, gradients[: len(lm)], strict=True)])
        query = prompt_length + k - 1
        start = torch.zeros(len(prefix), dtype=torch.float64)
        start[query] = 1.0
        llm = _share(start @ r_lm - start)

        pieces = adapter.vision_pieces(list(calls), geometry)
        sequences = geometry.vision_sequences
        cams = [
            [torch.zeros(len(s), len(s), dtype=torch.float64) for _ in range(feeding)]
            for s in sequences
        ]
        for piece in pieces:
            if piece.layer >= feeding:
                continue
            gradient = gradients[len(lm) + piece.call]
            cam = _cam(
                calls[piece.call][piece.batch],
                None if gradient is None else gradient[piece.batch],
            )
            index = (
                torch.arange(len(sequences[piece.sequence]))
                if piece.tokens is None
                else torch.as_tensor(piece.tokens).long()
            )
            cams[piece.sequence][piece.layer][index[:, None], index[None, :]] += cam
        r_vit = [_full(c) for c in cams]

        w = weights[: len(prefix)]
        summary_rows, summary_total, kept = [], 0.0, 0.0
        v = torch.zeros(geometry.num_patches, dtype=torch.float64)
        for patches, r in zip(sequences, r_vit, strict=True):
            patches = torch.as_tensor(patches).long()
            u = torch.zeros(len(patches), dtype=torch.float64)
            if geometry.vision_summary == "cls":
                u[0] = 1.0
            else:
                u[patches >= 0] = 1.0 / int((patches >= 0).sum())
            row = u @ r - u
            summary_rows.append(row)
            summary_total += float(row.detach().sum())
            kept += float(row[patches < 0].detach().sum())
            v[patches[patches >= 0]] += row[patches >= 0]
        vision = v / summary_total
        back = ((w @ v) @ r_lm) @ w
        every = back / (back.sum() + kept)

        carried = llm @ w
        spread = torch.zeros(geometry.num_patches, dtype=torch.float64)
        for patches, r in zip(sequences, r_vit, strict=True):
            patches = torch.as_tensor(patches).long()
            c = torch.zeros(len(patches), dtype=torch.float64)
            c[patches >= 0] = carried[patches[patches >= 0]]
            s = c @ r
            spread[patches[patches >= 0]] += s[patches >= 0]
        through = spread * carried.sum() / spread.sum()

        padded = torch.zeros(total, dtype=torch.float64)
        padded[: len(llm)] = llm
        for out, values in zip(rows, (padded, vision, every, through), strict=True):
            out.append(values.detach())
    return tuple(torch.stack(r).numpy() for r in rows)
