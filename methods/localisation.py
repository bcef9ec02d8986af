"""Does a map point at the object the question is about? Scores against ground-truth boxes.

Per answer token and per candidate map (:mod:`methods.maps`), over the G image patches:

- **pointing game** (Zhang et al. 2016): a hit when the map's highest patch (first on ties)
  lies within ``tolerance`` patches (Chebyshev distance between patch centres, in patch
  sizes) of a region patch; tolerance 0: the highest patch is itself in the region;
- **box mass**: the share of the map's positive mass on region patches;
- **IoU of the top region**: the ``top_fraction`` highest patches against the region.

The region is the target's box as patches (:mod:`methods.groundtruth`). Two baselines come
with every result: the ``random`` map (seeded) scored the same way, and the analytic chance
level of each score for a map that knows nothing: the share of patches within the pointing
tolerance of the region; the region's share of patches (the box area share) for box mass; and
the expected IoU of k random patches, ``i / (k + r - i)`` with ``i = k r / G`` (first-order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from methods.base import Method, MethodResult, Needs
from methods.groundtruth import INSIDE_SHARE, region, target_boxes
from methods.maps import MapChoice, best_head, candidate_maps, stored_maps
from methods.registry import register
from store._stored import StoredTrace
from store.schema import ImageGeometry

SCORES = ("pointing", "box_mass", "iou_top")


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
    values: np.ndarray, inside: np.ndarray, near: np.ndarray, top_fraction: float
) -> dict[str, float]:
    """The three scores of one ``[G]`` map against region ``inside`` (``near``: the region
    grown by the pointing tolerance). Box mass is NaN for a map with no positive mass."""
    values = np.asarray(values, np.float64)
    positive = np.clip(values, 0, None)
    total = positive.sum()
    k = top_count(len(values), top_fraction)
    top = np.zeros(len(values), bool)
    top[np.argsort(-values, kind="stable")[:k]] = True
    return {
        "pointing": float(near[int(np.argmax(values))]),
        "box_mass": float(positive[inside].sum() / total) if total > 0 else float("nan"),
        "iou_top": float((top & inside).sum() / (top | inside).sum()),
    }


def top_count(patches: int, top_fraction: float) -> int:
    return max(1, round(top_fraction * patches))


def chance(inside: np.ndarray, near: np.ndarray, top_fraction: float) -> dict[str, float]:
    """The analytic chance level of each score (module docstring)."""
    g, r = len(inside), int(inside.sum())
    k = top_count(g, top_fraction)
    expected = k * r / g
    return {
        "pointing": float(near.mean()),
        "box_mass": r / g,
        "iou_top": expected / (k + r - expected),
    }


@register
class Localisation(Method):
    """Pointing game, box mass and top-region IoU of every map (module docstring)."""

    name = "localisation"
    version = "1"
    needs = frozenset({Needs.RELEVANCY, Needs.ATTENTION, Needs.GROUND_TRUTH})
    Params = LocalisationParams

    def skip_reason(self, trace: StoredTrace) -> str | None:
        info = trace.info
        if not target_boxes(info.extra, info.prompt):
            return "no ground-truth box of a single target object"
        if not region(trace.image, target_boxes(info.extra, info.prompt)).any():
            return f"the target box covers no patch by {INSIDE_SHARE:.0%}"
        return None

    def run(self, trace: StoredTrace, params: Any, **resources: Any) -> MethodResult:
        info, geometry = trace.info, trace.image
        boxes = target_boxes(info.extra, info.prompt)
        inside = region(geometry, boxes)
        near = Grid.of(geometry).near(inside, params.tolerance)
        store = resources.get("store")
        stored = stored_maps(store, trace.trace_id) if store is not None else None
        maps = candidate_maps(trace, MapChoice(params.layer, params.seed), stored)
        per_token: dict[str, Any] = {}
        headline: dict[str, float] = {}
        for name, values in maps.items():
            rows = [score_map(v, inside, near, params.top_fraction) for v in values]
            per_token[name] = {s: [r[s] for r in rows] for s in SCORES}
            for score in SCORES:
                headline[f"{score}.{name}"] = float(np.nanmean(per_token[name][score]))
        for score, level in chance(inside, near, params.top_fraction).items():
            headline[f"{score}.chance"] = level
        per_token = {
            name: {s: [None if np.isnan(x) else x for x in xs] for s, xs in scores.items()}
            for name, scores in per_token.items()
        }
        provenance = {
            "boxes": [list(b) for b in boxes],
            "region_patches": np.flatnonzero(inside).tolist(),
            "inside_share": INSIDE_SHARE,
            "best_head": list(best_head(trace)),
            "tokens": trace.tokens.text[trace.prompt_length :],
        }
        return self.result(params, per_token, headline, provenance)
