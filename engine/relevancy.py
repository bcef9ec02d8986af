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
- ``vision``: the same rule over the vision tower's layers that feed the LM, read at each vision
  sequence's *summary row* ``s``: the CLS row where the tower has a CLS token (CLIP); in towers
  without one (SigLIP, Qwen-VL) the mean of the rows of the tokens the LM reads, i.e. the
  start vector is uniform over those tokens. Several sequences (tiles, images) are
  concatenated and taken as shares of their total, so tiles keep their relative weight.
- ``all``: the seed's map: the LM's image x image block of ``R`` (identity included) pushed
  through the vision tower's ``R``, read at the summary row: ``R_vit[s, patches] ·
  R_LM[img, img]``, normalised like ``vision`` (the summary's own entries count in the sum).
  It does not depend on the answer token's own LM row; one row vector through the LM (``v ·
  R_LM`` with ``v`` the vision summary placed on the image tokens) computes it.
- ``llm_through_vision``: the LM relevancy of each image token carried through the vision
  tower's ``R`` to the input patches (``r_img · R_vit``), rescaled to keep the image's share of
  the LM relevancy.

Tokens and patches meet through the trace's weighted token -> patch map ``W`` (one patch per
token for LLaVA-1.5; 2x2 merges, pixel shuffle and pooling read several): a patch value ``v``
reaches the image tokens as ``W · v`` and a token value ``r`` reaches the patches as
``Wᵀ · r``; with a one-to-one map this is the seed's indexing.

The seed's unshown ``all_v2`` reads the vision tower's CLS row instead of carrying ``r_img``
through its patch rows (``R_vit[0, 0] · r_img + R_vit[0, 1:]``); see bench/seed_relevancy.py
for how close they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from engine.adapters.base import VisionPiece
from store.schema import PatchMap, answer_row


@dataclass(frozen=True)
class VisionInputs:
    """The vision tower's captured attention (in the autograd graph) and where it sits.

    ``calls`` are the captured attention calls ([B, Hv, q, k] each), ``pieces`` place each
    batch row of a call on a layer and a vision sequence (only layers that feed the LM), and
    ``sequences`` give each sequence's tokens' patches (-1: CLS, padding).
    """

    calls: Sequence[torch.Tensor]
    pieces: Sequence[VisionPiece]
    sequences: Sequence[np.ndarray]
    summary: str  # "cls" | "mean"


@dataclass(frozen=True)
class RelevancyInputs:
    """What one teacher-forced forward pass leaves for relevancy."""

    answer_logits: torch.Tensor  # [N, vocab]: row k predicts answer token k
    answer_ids: torch.Tensor  # [N]
    language_attention: Sequence[torch.Tensor]  # L x [1, H, T, T], in the autograd graph
    vision: VisionInputs
    prompt_length: int
    token_patches: PatchMap  # LM positions -> patches
    num_patches: int


@dataclass(frozen=True)
class RelevancyMaps:
    llm: np.ndarray  # [N, T]
    vision: np.ndarray  # [N, G]
    all: np.ndarray  # [N, G]
    llm_through_vision: np.ndarray  # [N, G]


def gradient_weighted(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ``E_h[(∇A ⊙ A)⁺]`` over heads, [..., H, q, k] -> [q, k] (leading dims of size 1)."""
    weighted = (gradient * attention).clamp(min=0)
    return weighted.reshape(-1, *weighted.shape[-2:]).mean(dim=0)


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


@dataclass(frozen=True)
class TokenPatchOperator:
    """The map ``W`` as torch index arrays: patches -> tokens and back (see module doc)."""

    rows: torch.Tensor
    patches: torch.Tensor
    weights: torch.Tensor
    seq_len: int
    num_patches: int

    @classmethod
    def of(cls, mapping: PatchMap, seq_len: int, num_patches: int, like: torch.Tensor):
        def tensor(values, dtype):
            return torch.as_tensor(np.asarray(values), device=like.device).to(dtype)

        return cls(
            tensor(mapping.rows, torch.long),
            tensor(mapping.patches, torch.long),
            tensor(mapping.weights, like.dtype),
            seq_len,
            num_patches,
        )

    def to_tokens(self, per_patch: torch.Tensor) -> torch.Tensor:
        out = per_patch.new_zeros(self.seq_len)
        return out.index_add_(0, self.rows, self.weights * per_patch[self.patches])

    def to_patches(self, per_token: torch.Tensor) -> torch.Tensor:
        out = per_token.new_zeros(self.num_patches)
        return out.index_add_(0, self.patches, self.weights * per_token[self.rows])


@dataclass(frozen=True)
class VisionSequence:
    """One vision sequence's layer maps and token -> patch indices, for one answer token."""

    cams: list[torch.Tensor]  # layer maps [V, V], first layer first
    patches: torch.Tensor  # [V] long, -1 for tokens that read no patch
    summary: str

    @property
    def on_patch(self) -> torch.Tensor:
        return self.patches >= 0

    def summary_row(self) -> torch.Tensor:
        """``R_vit[s] - start``: the CLS row, or the mean row of the tokens that read patches."""
        start = torch.zeros(len(self.patches), dtype=self.cams[0].dtype, device=self.cams[0].device)
        if self.summary == "cls":
            start[0] = 1.0
        else:
            start[self.on_patch] = 1.0 / int(self.on_patch.sum())
        return propagate_row(start, self.cams)

    def through(self, row: torch.Tensor) -> torch.Tensor:
        """``row · R_vit`` (identity included)."""
        return row + propagate_row(row, self.cams)


def _scatter(values: torch.Tensor, sequence: VisionSequence, into: torch.Tensor) -> None:
    """Add a sequence's values at its patch tokens into a per-patch vector."""
    into.index_add_(0, sequence.patches[sequence.on_patch], values[sequence.on_patch])


def token_relevancy(
    cams_lm: Sequence[torch.Tensor],
    sequences: Sequence[VisionSequence],
    query_position: int,
    token_map: TokenPatchOperator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four maps (llm, vision, all, llm_through_vision) of one answer token."""
    start = torch.zeros(token_map.seq_len, dtype=cams_lm[0].dtype, device=cams_lm[0].device)
    start[query_position] = 1.0
    llm = share_of_total(propagate_row(start, cams_lm))
    zeros = start.new_zeros(token_map.num_patches)

    summaries = [sequence.summary_row() for sequence in sequences]
    summary_total = sum(row.sum() for row in summaries)
    vision, on_patches = zeros.clone(), zeros.clone()
    for sequence, row in zip(sequences, summaries, strict=True):
        _scatter(row, sequence, on_patches)
    if summary_total > 0:
        vision = on_patches / summary_total

    on_image = token_map.to_tokens(on_patches)
    back = token_map.to_patches(on_image + propagate_row(on_image, cams_lm))
    # the seed's row over vision tokens: patches replaced by their trip through the LM, other
    # tokens (CLS, padding) keep their summary values, and all of it counts in the total
    kept = sum(
        row[~sequence.on_patch].sum() for sequence, row in zip(sequences, summaries, strict=True)
    )
    every_total = back.sum() + kept
    every = back / every_total if every_total > 0 else back

    carried = token_map.to_patches(llm)
    image_share = carried.sum()
    spread = zeros.clone()
    for sequence in sequences:
        row = torch.where(sequence.on_patch, carried[sequence.patches.clamp(min=0)], 0.0)
        _scatter(sequence.through(row), sequence, spread)
    total = spread.sum()
    through_vision = spread * (image_share / total) if total > 0 else spread
    return llm, vision, every, through_vision


def vision_cams(
    inputs: VisionInputs, gradients: Sequence[torch.Tensor | None]
) -> list[VisionSequence]:
    """Each vision sequence's layer maps, assembled from the pieces of the captured calls."""
    layers = 1 + max(piece.layer for piece in inputs.pieces)
    device = inputs.calls[0].device
    cams = [
        [torch.zeros(len(s), len(s), device=device) for _ in range(layers)]
        for s in inputs.sequences
    ]
    for piece in inputs.pieces:
        gradient = gradients[piece.call]
        if gradient is None:  # the piece does not depend on the answer: its map is zero
            continue
        attention = inputs.calls[piece.call][piece.batch].float()
        cam = gradient_weighted(attention, gradient[piece.batch].float())
        target = cams[piece.sequence][piece.layer]
        if piece.tokens is None:
            target += cam
        else:
            index = torch.as_tensor(piece.tokens, device=device).long()
            target[index[:, None], index[None, :]] += cam
    return [
        VisionSequence(layer_cams, torch.as_tensor(patches, device=device).long(), inputs.summary)
        for layer_cams, patches in zip(cams, inputs.sequences, strict=True)
    ]


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
    used_calls = sorted({piece.call for piece in inputs.vision.pieces})
    call_slot = {call: i for i, call in enumerate(used_calls)}
    targets = [*inputs.language_attention, *(inputs.vision.calls[c] for c in used_calls)]
    num_lm = len(inputs.language_attention)
    num_answer = int(inputs.answer_ids.shape[0])
    on_cpu = inputs.answer_logits.device.type == "cpu"
    workers = (workers or torch.get_num_threads()) if on_cpu else 1
    seq_len = int(inputs.language_attention[0].shape[-1])
    token_map = TokenPatchOperator.of(
        inputs.token_patches, seq_len, inputs.num_patches, inputs.answer_logits.float()
    )

    def explain(k: int) -> list[np.ndarray]:
        target = inputs.answer_logits[k, inputs.answer_ids[k]]
        gradients = torch.autograd.grad(target, targets, retain_graph=True, allow_unused=True)
        with torch.no_grad():
            cams_lm = [
                gradient_weighted(a.float(), g.float())
                if g is not None
                else a.new_zeros(a.shape[-2:]).float()
                for a, g in zip(inputs.language_attention, gradients[:num_lm], strict=True)
            ]
            by_call = [
                gradients[num_lm + call_slot[c]] if c in call_slot else None
                for c in range(len(inputs.vision.calls))
            ]
            sequences = vision_cams(inputs.vision, by_call)
            maps = token_relevancy(
                cams_lm, sequences, answer_row(inputs.prompt_length, k), token_map
            )
        return [values.cpu().numpy().astype(np.float32) for values in maps]

    rows: list[list[np.ndarray]] = []
    with _one_intra_op_thread(workers > 1), ThreadPoolExecutor(workers) as pool:
        for k, maps in enumerate(pool.map(explain, range(num_answer))):
            rows.append(maps)
            if on_token is not None:
                on_token(k + 1, num_answer)
    return RelevancyMaps(*(np.stack(mode) for mode in zip(*rows, strict=True)))
