"""Relevancy through cross-attention (Chefer et al. 2021, bi-modal rules), for families whose
image never enters the LM's self-attention sequence (Mllama: the text attends to the vision
states through cross-attention layers only).

Two token sets: the text ``s`` (the LM sequence, ``T`` positions) and the image ``q`` (the
vision tower's tokens; the cross-attention keys are some of them). ``R^{ss}`` starts at ``I``,
``R^{sq}`` at 0, and each LM layer, in order, updates them (``Ā`` the gradient-weighted,
head-averaged attention of eq. 5):

- self-attention (eqs. 6-7): ``R^{ss} += Ā^{ss}·R^{ss}`` and ``R^{sq} += Ā^{ss}·R^{sq}``;
- cross-attention (eq. 10): ``R^{sq} += Ā^{sq}·R^{qq}``. Eq. 11 (``R^{ss} += Ā^{sq}·R^{qs}``)
  adds nothing: the image never attends to the text, so ``R^{qs} = 0``. Eq. 10's extra factor
  ``(R̄^{ss})ᵀ`` and its normalisations are left out: with them the update is no longer the
  plain rule ``R ← R + Ā·R`` on the joint token set, which is what makes the text and image
  sides (and this module and engine/relevancy.py) add up in the same units.

``R^{qq}`` is the image side's own relevancy. The LM never updates the image tokens, so
``R^{sq} = R^{sq}|_{R^{qq}=I} · R^{qq}``: one row pushed through the LM with ``R^{qq} = I``
gives the answer token's relevancy on the keys, and pushing those key values through the vision
tower's ``R`` gives it on the patches. The modes, for answer token ``k`` (row ``P-1+k``):

- ``llm``: the row of ``R^{ss} - I`` and the row of ``R^{sq}`` with ``R^{qq} = I`` (one value
  per cross-attention key), together scaled to sum 1 (eqs. 8-9): each input token's and each
  key's share of the relevance. ``llm_keys`` holds the key part; spread over the patches by the
  trace's key -> patch map (CLS keys read no patch) it is the "llm" image map.
- ``vision``: the vision tower's own relevancy, read at each image's summary row (the mean of
  the rows of its patch tokens: every tile has its own CLS, none stands for the image), as in
  engine/relevancy.py.
- ``llm_through_vision``: ``llm_keys`` placed on the vision tokens the keys are and carried
  through the vision tower's ``R`` (``R^{qq}`` of eq. 10) to the patch tokens, rescaled to keep
  the image's share of the LM relevancy. CLS keys reach the patches this way too.
- ``all`` (the seed's map, ``R_vit[s] · R_LM[img, img]``) does not carry over: the LM's
  image-by-image block is the identity here, so it would be the ``vision`` map again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.relevancy import (
    VisionInputs,
    VisionSequence,
    VisionSummary,
    backward_maps,
    each_answer_token,
    through_vision,
)
from store.schema import answer_row


@dataclass(frozen=True)
class CrossRelevancyInputs:
    """What one teacher-forced forward pass leaves, every attention tensor in the graph."""

    answer_logits: torch.Tensor  # [N, vocab]: row k predicts answer token k
    answer_ids: torch.Tensor  # [N]
    self_attention: Sequence[torch.Tensor]  # LM self-attention layers in order: [1, H, T, T]
    cross_attention: Sequence[torch.Tensor]  # LM cross-attention layers in order: [1, H, T, K]
    cross_layers: Sequence[int]  # the LM layer of each cross block; self blocks fill the rest
    vision: VisionInputs  # the vision tower's calls, pieces, sequences and summary
    key_tokens: np.ndarray  # [K]: each key's token in the vision sequences laid end to end
    prompt_length: int
    num_patches: int


@dataclass(frozen=True)
class CrossRelevancyMaps:
    llm: np.ndarray  # [N, T] text shares of the answer row
    llm_keys: np.ndarray  # [N, K] key shares (llm and llm_keys sum to 1 per answer token)
    vision: np.ndarray  # [N, G]
    llm_through_vision: np.ndarray  # [N, G]


@dataclass(frozen=True)
class LmBlock:
    """One LM attention block's map for one answer token: [T, T] self, or [T, K] cross."""

    cam: torch.Tensor
    cross: bool


def lm_blocks(
    self_cams: Sequence[torch.Tensor],
    cross_cams: Sequence[torch.Tensor],
    cross_layers: Sequence[int],
) -> list[LmBlock]:
    """The blocks in LM layer order: cross blocks at ``cross_layers``, self blocks between."""
    total = len(self_cams) + len(cross_cams)
    where = dict(zip(cross_layers, cross_cams, strict=True))
    selfs = iter(self_cams)
    return [
        LmBlock(where[i], True) if i in where else LmBlock(next(selfs), False) for i in range(total)
    ]


def propagate_joint(
    start: torch.Tensor, blocks: Sequence[LmBlock], num_keys: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``start · (I + Ā_L)···(I + Ā_1)`` over text + keys with ``R^{qq} = I``, last layer
    first: the text part minus ``start`` (kept apart from the identity, as in
    :func:`engine.relevancy.propagate_row`) and the key part."""
    delta = torch.zeros_like(start)
    keys = start.new_zeros(num_keys)
    for block in reversed(blocks):
        if block.cross:
            keys = keys + (start + delta) @ block.cam
        else:
            delta = delta + (start + delta) @ block.cam
    return delta, keys


def token_cross_relevancy(
    blocks: Sequence[LmBlock],
    sequences: Sequence[VisionSequence],
    query_position: int,
    key_tokens: torch.Tensor,
    num_patches: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The maps (llm, llm_keys, vision, llm_through_vision) of one answer token."""
    seq_len = blocks[0].cam.shape[0]
    start = torch.zeros(seq_len, dtype=blocks[0].cam.dtype, device=blocks[0].cam.device)
    start[query_position] = 1.0
    text, keys = propagate_joint(start, blocks, len(key_tokens))
    total = text.sum() + keys.sum()
    if total > 0:
        text, keys = text / total, keys / total
    vision = VisionSummary.of(sequences, num_patches).vision
    lengths = [len(sequence.patches) for sequence in sequences]
    placed = keys.new_zeros(sum(lengths)).index_add_(0, key_tokens, keys)
    carried = through_vision(placed.split(lengths), sequences, num_patches)
    return text, keys, vision, carried


def compute_cross_relevancy(
    inputs: CrossRelevancyInputs, on_token: Callable[[int, int], None] | None = None
) -> CrossRelevancyMaps:
    """Relevancy of every answer token, one backward pass per token (parameters frozen; the
    graph reaches only the attention tensors and their inputs)."""
    lm = [*inputs.self_attention, *inputs.cross_attention]
    key_tokens = torch.as_tensor(inputs.key_tokens, device=inputs.answer_logits.device).long()
    num_self = len(inputs.self_attention)

    def explain(k: int) -> list[np.ndarray]:
        target = inputs.answer_logits[k, inputs.answer_ids[k]]
        cams, sequences = backward_maps(target, lm, inputs.vision)
        with torch.no_grad():
            maps = token_cross_relevancy(
                lm_blocks(cams[:num_self], cams[num_self:], inputs.cross_layers),
                sequences,
                answer_row(inputs.prompt_length, k),
                key_tokens,
                inputs.num_patches,
            )
        return [values.cpu().numpy().astype(np.float32) for values in maps]

    num_answer = int(inputs.answer_ids.shape[0])
    device = inputs.answer_logits.device
    return CrossRelevancyMaps(*each_answer_token(explain, num_answer, device, on_token))
