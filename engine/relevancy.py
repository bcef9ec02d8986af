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


@dataclass(frozen=True)
class VisionSummary:
    """Every vision sequence's summary row ``R_vit[s] - u_s``, gathered per patch."""

    on_patches: torch.Tensor  # [G] the rows' values at patch tokens
    total: torch.Tensor  # the rows' sum over every token (CLS and padding included)
    kept: torch.Tensor  # the part of ``total`` at tokens that read no patch

    @classmethod
    def of(cls, sequences: Sequence[VisionSequence], num_patches: int) -> VisionSummary:
        rows = [sequence.summary_row() for sequence in sequences]
        on_patches = rows[0].new_zeros(num_patches)
        for sequence, row in zip(sequences, rows, strict=True):
            _scatter(row, sequence, on_patches)
        kept = sum(row[~s.on_patch].sum() for s, row in zip(sequences, rows, strict=True))
        return cls(on_patches, sum(row.sum() for row in rows), kept)

    @property
    def vision(self) -> torch.Tensor:
        """The ``vision`` mode: shares of the summary rows' total."""
        return self.on_patches / self.total if self.total > 0 else self.on_patches


def through_vision(
    rows: Sequence[torch.Tensor], sequences: Sequence[VisionSequence], num_patches: int
) -> torch.Tensor:
    """Each sequence's row (one value per vision token) carried through that sequence's ``R``
    to its patch tokens, rescaled to keep the rows' total (the image's share)."""
    spread = rows[0].new_zeros(num_patches)
    for sequence, row in zip(sequences, rows, strict=True):
        _scatter(sequence.through(row), sequence, spread)
    share, total = sum(row.sum() for row in rows), spread.sum()
    return spread * (share / total) if total > 0 else spread


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
    summary = VisionSummary.of(sequences, token_map.num_patches)

    on_image = token_map.to_tokens(summary.on_patches)
    back = token_map.to_patches(on_image + propagate_row(on_image, cams_lm))
    # the seed's row over vision tokens: patches replaced by their trip through the LM, other
    # tokens (CLS, padding) keep their summary values, and all of it counts in the total
    every_total = back.sum() + summary.kept
    every = back / every_total if every_total > 0 else back

    carried = token_map.to_patches(llm)
    rows = [
        torch.where(sequence.on_patch, carried[sequence.patches.clamp(min=0)], 0.0)
        for sequence in sequences
    ]
    return llm, summary.vision, every, through_vision(rows, sequences, token_map.num_patches)


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


def backward_maps(
    target: torch.Tensor, attentions: Sequence[torch.Tensor], vision: VisionInputs
) -> tuple[list[torch.Tensor], list[VisionSequence]]:
    """One backward pass from ``target``: the gradient-weighted map of every LM attention
    tensor (zero where it does not depend on the target) and each vision sequence's maps."""
    used = sorted({piece.call for piece in vision.pieces})
    gradients = torch.autograd.grad(
        target,
        [*attentions, *(vision.calls[c] for c in used)],
        retain_graph=True,
        allow_unused=True,
    )
    with torch.no_grad():
        cams = [
            gradient_weighted(a.float(), g.float())
            if g is not None
            else a.new_zeros(a.shape[-2:], dtype=torch.float32)
            for a, g in zip(attentions, gradients[: len(attentions)], strict=True)
        ]
        by_call = dict(zip(used, gradients[len(attentions) :], strict=True))
        sequences = vision_cams(vision, [by_call.get(c) for c in range(len(vision.calls))])
    return cams, sequences


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


def each_answer_token(
    explain: Callable[[int], list[np.ndarray]],
    num_answer: int,
    device: torch.device,
    on_token: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> list[np.ndarray]:
    """``explain(k)`` for every answer token, stacked per output.

    On a CPU, token backward passes run side by side on ``workers`` threads (default: torch's
    intra-op thread count), one core each: the autograd engine releases the GIL, and a
    backward pass is full of small element-wise ops that two intra-op threads share poorly
    (measured on 2 idle cores, mid-size model: 1.07 s instead of 1.16 s per token).
    Batching tokens with ``is_grads_batched`` was 2x slower per token and is not used. On
    an accelerator the passes run one after another.
    """
    workers = (workers or torch.get_num_threads()) if device.type == "cpu" else 1
    rows: list[list[np.ndarray]] = []
    with _one_intra_op_thread(workers > 1), ThreadPoolExecutor(workers) as pool:
        for k, maps in enumerate(pool.map(explain, range(num_answer))):
            rows.append(maps)
            if on_token is not None:
                on_token(k + 1, num_answer)
    return [np.stack(mode) for mode in zip(*rows, strict=True)]


def compute_relevancy(
    inputs: RelevancyInputs,
    on_token: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> RelevancyMaps:
    """Relevancy of every answer token in every mode, one backward pass per token."""
    seq_len = int(inputs.language_attention[0].shape[-1])
    token_map = TokenPatchOperator.of(
        inputs.token_patches, seq_len, inputs.num_patches, inputs.answer_logits.float()
    )

    def explain(k: int) -> list[np.ndarray]:
        target = inputs.answer_logits[k, inputs.answer_ids[k]]
        cams_lm, sequences = backward_maps(target, inputs.language_attention, inputs.vision)
        with torch.no_grad():
            maps = token_relevancy(
                cams_lm, sequences, answer_row(inputs.prompt_length, k), token_map
            )
        return [values.cpu().numpy().astype(np.float32) for values in maps]

    num_answer = int(inputs.answer_ids.shape[0])
    device = inputs.answer_logits.device
    return RelevancyMaps(*each_answer_token(explain, num_answer, device, on_token, workers))
