"""Relevancy maps (Chefer et al. 2021, "Generic Attention-model Explainability").

For the logit ``y`` of one answer token, every attention layer ``A`` gets a gradient-weighted,
head-averaged map ``Ā = E_h[(∇A ⊙ A)⁺]`` (eq. 5), and relevancy accumulates as
``R ← R + Ā·R`` from ``R = I`` (eq. 6), so ``R = (I + Ā_L)···(I + Ā_1)``.

Why this is fast: the explained token needs one *row* of ``R``; pushing a row vector through
the product costs ``O(L·T²)`` instead of ``O(L·T³)``. One teacher-forced forward with frozen
parameters serves every answer token, and each token's backward is turned into its row at once,
so no per-token gradients are kept.

The modes (named as the seed tool, IntelLabs LVLM-Interpret, defines them):
- ``llm``: row ``P-1+k`` of the LM's ``R`` minus the identity, normalised to sum 1 (eqs. 8-9):
  each input token's share of the relevance.
- ``vision``: the same rule over the vision tower's layers that feed the LM, CLS row, patches.
- ``all``: the seed's map: the LM's image x image block of ``R`` (identity included), padded
  with the CLS token and pushed through the vision tower's ``R``, read at the CLS row:
  ``R_vit[0, 1:] · R_LM[img, img]``, normalised like ``vision`` (the CLS entry minus one counts
  in the sum). It does not depend on the answer token's own LM row; one row vector through the
  LM (``v · R_LM`` with ``v`` the vision CLS row placed on the image tokens) computes it.
- ``llm_through_vision``: the LM relevancy of each image token carried through the vision
  tower's ``R`` to the input patches (``r_img · R_vit``), rescaled to keep the image's share of
  the LM relevancy. The seed's unshown ``all_v2`` reads the vision tower's CLS row instead
  (``R_vit[0, 0] · r_img + R_vit[0, 1:]``); see bench/seed_relevancy.py for how close they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class RelevancyInputs:
    """What one teacher-forced forward pass leaves for relevancy."""

    answer_logits: torch.Tensor  # [N, vocab]: row k predicts answer token k
    answer_ids: torch.Tensor  # [N]
    language_attention: Sequence[torch.Tensor]  # L x [1, H, T, T], in the autograd graph
    vision_attention: Sequence[torch.Tensor]  # layers feeding the LM: Lv x [1, Hv, V, V]
    prompt_length: int
    image_positions: torch.Tensor  # [G] positions of image tokens in the sequence
    image_patches: torch.Tensor  # [G] patch index of each image token (-1: CLS kept as a token)


@dataclass(frozen=True)
class RelevancyMaps:
    llm: np.ndarray  # [N, T]
    vision: np.ndarray  # [N, G]
    all: np.ndarray  # [N, G]
    llm_through_vision: np.ndarray  # [N, G]


def gradient_weighted(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ``E_h[(∇A ⊙ A)⁺]`` over heads, [1, H, T, T] -> [T, T]."""
    return (gradient * attention).clamp(min=0).mean(dim=(0, 1))


def propagate_row(start: torch.Tensor, cams: Sequence[torch.Tensor]) -> torch.Tensor:
    """``start · (I + Ā_L)···(I + Ā_1) − start`` for layer maps given first layer first.

    The identity part is kept out of the running sum: relevancy mass off the diagonal is often
    1e-3 of it, and adding it to 1.0 in float32 would round most of it away.
    """
    delta = torch.zeros_like(start)
    for cam in reversed(cams):
        delta = delta + (start + delta) @ cam
    return delta


def share_of_total(row: torch.Tensor) -> torch.Tensor:
    """Eqs. 8-9 on one row of R - I: scale to sum 1 (an all-zero row stays 0)."""
    total = row.sum()
    return row / total if total > 0 else row


def token_relevancy(
    cams_lm: Sequence[torch.Tensor],
    cams_vision: Sequence[torch.Tensor],
    query_position: int,
    image_positions: torch.Tensor,
    image_patches: torch.Tensor,
    num_patches: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four maps (llm, vision, all, llm_through_vision) of one answer token."""
    seq_len = cams_lm[0].shape[-1]
    start = torch.zeros(seq_len, dtype=cams_lm[0].dtype, device=cams_lm[0].device)
    start[query_position] = 1.0
    llm = share_of_total(propagate_row(start, cams_lm))

    vision_len = cams_vision[0].shape[-1]
    cls = torch.zeros(vision_len, dtype=cams_vision[0].dtype, device=cams_vision[0].device)
    cls[0] = 1.0
    cls_row = propagate_row(cls, cams_vision)  # R_vit[0] - e_0
    vision = share_of_total(cls_row)[1 : num_patches + 1]

    on_patches = image_patches >= 0
    positions, patches = image_positions[on_patches], image_patches[on_patches]
    on_image = torch.zeros_like(start)
    on_image[positions] = cls_row[1 + patches]
    through_lm = on_image + propagate_row(on_image, cams_lm)  # (R_vit[0, 1:] placed) · R_LM
    seed_row = torch.zeros_like(cls)
    seed_row[0] = cls_row[0]
    seed_row[1 + patches] = through_lm[positions]
    every = share_of_total(seed_row)[1 : num_patches + 1]

    carried = torch.zeros_like(cls)
    carried[1 + patches] = llm[positions]
    image_share = carried.sum()
    spread = (carried + propagate_row(carried, cams_vision))[1 : num_patches + 1]
    total = spread.sum()
    through_vision = spread * (image_share / total) if total > 0 else spread
    return llm, vision, every, through_vision


@contextmanager
def _one_intra_op_thread(enabled: bool) -> Iterator[None]:
    """Let each backward pass run on one core (restoring torch's thread count afterwards)."""
    previous = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def compute_relevancy(
    inputs: RelevancyInputs,
    num_patches: int,
    on_token: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> RelevancyMaps:
    """Relevancy of every answer token in every mode, one backward pass per token.

    On a CPU, token backward passes run side by side on ``workers`` threads (default: torch's
    intra-op thread count), one core each: the autograd engine releases the GIL, and a
    backward pass is full of small element-wise ops that two intra-op threads share poorly
    (measured on 2 idle cores, mid-size model: 1.07 s instead of 1.16 s per token).
    Batching tokens with ``is_grads_batched`` was 2x slower per token and is not used. On
    an accelerator the passes run one after another.
    """
    attentions = [*inputs.language_attention, *inputs.vision_attention]
    num_lm = len(inputs.language_attention)
    num_answer = int(inputs.answer_ids.shape[0])
    on_cpu = inputs.answer_logits.device.type == "cpu"
    workers = (workers or torch.get_num_threads()) if on_cpu else 1

    def explain(k: int) -> list[np.ndarray]:
        target = inputs.answer_logits[k, inputs.answer_ids[k]]
        gradients = torch.autograd.grad(target, attentions, retain_graph=True)
        with torch.no_grad():
            cams = [
                gradient_weighted(a.float(), g.float())
                for a, g in zip(attentions, gradients, strict=True)
            ]
            maps = token_relevancy(
                cams[:num_lm],
                cams[num_lm:],
                inputs.prompt_length - 1 + k,
                inputs.image_positions,
                inputs.image_patches,
                num_patches,
            )
        return [values.cpu().numpy().astype(np.float32) for values in maps]

    rows: list[list[np.ndarray]] = []
    with _one_intra_op_thread(workers > 1), ThreadPoolExecutor(workers) as pool:
        for k, maps in enumerate(pool.map(explain, range(num_answer))):
            rows.append(maps)
            if on_token is not None:
                on_token(k + 1, num_answer)
    return RelevancyMaps(*(np.stack(mode) for mode in zip(*rows, strict=True)))
