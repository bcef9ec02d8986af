"""Does a map point at the object the question is about? Scores against ground-truth boxes.

Per answer token and per candidate map (:mod:`methods.maps`), over the G image patches:

- **pointing game** (Zhang et al. 2016): a hit when the map's highest patch (first on ties)
  lies within ``tolerance`` patches (Chebyshev distance between patch centres, in patch
  sizes) of a region patch; tolerance 0: the highest patch is itself in the region;
- **box mass**: the share of the map's positive mass on region patches;
- **IoU of the top region**: the ``top_fraction`` highest patches against the region;
- where the target's mask is known (demo scenes, :func:`methods.groundtruth.target_mask`),
  **mask IoU** (``iou_mask``: the same top region against the mask region, the patches at
  least half on the object's own pixels) and **mask mass** (``mask_mass``: the share of the
  map's positive mass on mask patches). A box holds background around a circle, a triangle
  or a cross; the mask does not, so these two ask whether the map is on the object itself.

The region is the target's box as patches (:mod:`methods.groundtruth`). Two baselines come
with every result: the ``random`` map (seeded) scored the same way, and the analytic chance
level of each score for a map that knows nothing: the share of patches within the pointing
tolerance of the region; the region's share of patches for box and mask mass (a uniformly
random map's expected share); and for both IoUs the exact expectation over k patches drawn
at random without replacement: ``sum_i P(I = i) i / (k + r - i)``, ``I`` hypergeometric
(``G`` patches, ``r`` in the region, ``k`` drawn). Ties (a flat map) are broken by the lower
patch index, for the top region and for the pointing game's argmax alike.

Version 2 added the mask scores and made the IoU chance level exact (version 1 used the
first-order ``i / (k + r - i)`` with ``i = k r / G``, 0.102 instead of 0.112 for 4 region
patches among 24 with k = 5); version-1 results stay stored beside version 2's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.demo.world import IMAGE_SIZE  # numpy and Pillow: no torch
from methods.base import Method, MethodResult, Needs
from methods.groundtruth import INSIDE_SHARE, mask_region, region, target_boxes, target_mask
from methods.maps import MapChoice, best_head, candidate_maps, stored_maps
from methods.registry import register
from store._stored import StoredTrace
from store.schema import ImageGeometry

SCORES = ("pointing", "box_mass", "iou_top")
MASK_SCORES = ("iou_mask", "mask_mass")  # where the target's mask is known


@dataclass(frozen=True)
class LocalisationParams:
    tolerance: int = 0  # pointing-game tolerance, in patches
    top_fraction: float = 0.2  # share of patches forming the map's top region for IoU
    layer: int = -1  # LM layer of the raw-attention head mean
    seed: int = 0  # the random map's seed


@dataclass(frozen=True)
class Grid:
    """Patch centres and sizes (original pixels) and image of each patch: what the pointing
    tolerance is measured in."""

    centres: np.ndarray  # [G, 2]
    sizes: np.ndarray  # [G, 2]
    image: np.ndarray  # [G]

    @classmethod
    def of(cls, geometry: ImageGeometry) -> Grid:
        cells = np.asarray(geometry.patch_boxes, np.float64)
        images = np.asarray([geometry.tiles[t].image for t in geometry.patch_tile])
        centres = (cells[:, :2] + cells[:, 2:]) / 2
        return cls(centres, np.maximum(cells[:, 2:] - cells[:, :2], 1e-12), images)

    def near(self, inside: np.ndarray, tolerance: int) -> np.ndarray:
        """``[G]`` bool: patches within ``tolerance`` patches of a patch of ``inside``."""
        if not inside.any():
            return inside.copy()
        gap = np.abs(self.centres[:, None, :] - self.centres[None, inside, :])
        steps = (gap / self.sizes[:, None, :]).max(axis=2)  # [G, r] Chebyshev, in patches
        same = self.image[:, None] == self.image[None, inside]
        return ((steps <= tolerance + 1e-6) & same).any(axis=1)


def score_map(
    values: np.ndarray,
    inside: np.ndarray,
    near: np.ndarray,
    top_fraction: float,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """The scores of one ``[G]`` map against region ``inside`` (``near``: the region grown
    by the pointing tolerance) and, given, the ``mask`` region. Masses are NaN for a map
    with no positive mass."""
    values = np.asarray(values, np.float64)
    positive = np.clip(values, 0, None)
    total = positive.sum()
    k = top_count(len(values), top_fraction)
    top = np.zeros(len(values), bool)
    top[np.argsort(-values, kind="stable")[:k]] = True
    scores = {
        "pointing": float(near[int(np.argmax(values))]),
        "box_mass": _mass(positive, inside, total),
        "iou_top": float((top & inside).sum() / (top | inside).sum()),
    }
    if mask is not None:
        scores["iou_mask"] = float((top & mask).sum() / (top | mask).sum())
        scores["mask_mass"] = _mass(positive, mask, total)
    return scores


def _mass(positive: np.ndarray, inside: np.ndarray, total: float) -> float:
    return float(positive[inside].sum() / total) if total > 0 else float("nan")


def top_count(patches: int, top_fraction: float) -> int:
    return max(1, round(top_fraction * patches))


def chance(
    inside: np.ndarray, near: np.ndarray, top_fraction: float, mask: np.ndarray | None = None
) -> dict[str, float]:
    """The analytic chance level of each score (module docstring)."""
    g = len(inside)
    k = top_count(g, top_fraction)
    levels = {
        "pointing": float(near.mean()),
        "box_mass": float(inside.mean()),
        "iou_top": expected_iou(g, int(inside.sum()), k),
    }
    if mask is not None:
        levels["iou_mask"] = expected_iou(g, int(mask.sum()), k)
        levels["mask_mass"] = float(mask.mean())
    return levels


def expected_iou(patches: int, region_size: int, k: int) -> float:
    """E[IoU] of ``k`` patches drawn at random without replacement with a region of
    ``region_size`` patches: the overlap ``I`` is hypergeometric, IoU = I / (k + r - I)."""
    g, r = patches, region_size
    draws = math.comb(g, k)
    return sum(
        math.comb(r, i) * math.comb(g - r, k - i) / draws * i / (k + r - i)
        for i in range(max(0, k - (g - r)), min(r, k) + 1)
    )


@register
class Localisation(Method):
    """Pointing game, box mass, top-region IoU and, where a mask is known, mask IoU and
    mask mass of every map (module docstring)."""

    name = "localisation"
    version = "2"
    needs = frozenset({Needs.RELEVANCY, Needs.ATTENTION, Needs.GROUND_TRUTH})
    Params = LocalisationParams

    def skip_reason(self, trace: StoredTrace) -> str | None:
        info = trace.info
        if not target_boxes(info.extra, info.prompt):
            return "no ground-truth box of a single target object"
        if not region(trace.image, target_boxes(info.extra, info.prompt)).any():
            return f"the target box covers no patch by {INSIDE_SHARE:.0%}"
        return legacy_reason(trace)

    def run(self, trace: StoredTrace, params: Any, **resources: Any) -> MethodResult:
        info, geometry = trace.info, trace.image
        boxes = target_boxes(info.extra, info.prompt)
        inside = region(geometry, boxes)
        near = Grid.of(geometry).near(inside, params.tolerance)
        mask, why_not = target_mask(info.extra, info.prompt)
        if mask is not None and mask.shape[::-1] != tuple(geometry.original_size):
            mask, why_not = None, "the redrawn scene is not the size of the trace's image"
        on_mask = mask_region(geometry, mask) if mask is not None else None
        if on_mask is not None and not on_mask.any():
            on_mask, why_not = None, f"the mask covers no patch by {INSIDE_SHARE:.0%}"
        scores = SCORES + (MASK_SCORES if on_mask is not None else ())
        store = resources.get("store")
        stored = stored_maps(store, trace.trace_id) if store is not None else None
        maps = candidate_maps(trace, MapChoice(params.layer, params.seed), stored)
        per_token: dict[str, Any] = {}
        headline: dict[str, float] = {}
        for name, values in maps.items():
            rows = [score_map(v, inside, near, params.top_fraction, on_mask) for v in values]
            per_token[name] = {s: [r[s] for r in rows] for s in scores}
            for score in scores:
                headline[f"{score}.{name}"] = float(np.nanmean(per_token[name][score]))
        for score, level in chance(inside, near, params.top_fraction, on_mask).items():
            headline[f"{score}.chance"] = level
        per_token = {
            name: {s: [None if np.isnan(x) else x for x in xs] for s, xs in scores.items()}
            for name, scores in per_token.items()
        }
        provenance = {
            "boxes": [list(b) for b in boxes],
            "region_patches": np.flatnonzero(inside).tolist(),
            "mask_patches": None if on_mask is None else np.flatnonzero(on_mask).tolist(),
            "mask_skipped": why_not if on_mask is None else None,
            "inside_share": INSIDE_SHARE,
            "best_head": list(best_head(trace)),
            "tokens": trace.tokens.text[trace.prompt_length :],
        }
        return self.result(params, per_token, headline, provenance)


def legacy_reason(trace: StoredTrace) -> str | None:
    """Why a format 1-2 trace cannot be scored (None: it can). Those formats kept patch boxes
    in the processed image's pixels, not the original's that ground truth is in, and not the
    resize or crop between them; only a demo scene whose processed image is its own size
    (the bundled demo processor: resize to 64, crop 64) lines up. A LLaVA-1.5 trace (resize
    to 336, centre crop) would have every box scaled and shifted against the patches."""
    geometry = trace.image
    if geometry.processed is None:
        return None
    demo = "annotations" not in trace.info.extra and "ground_truth" in trace.info.extra
    if demo and tuple(geometry.original_size) == (IMAGE_SIZE, IMAGE_SIZE):
        return None
    return "a format 1-2 trace: its patch boxes are not in the original image's pixels"
