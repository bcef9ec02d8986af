"""Where the object a question is about lies: boxes from a trace's ``extra``, as patches.

Two sources, both written at record time:

- ``extra["annotations"]["boxes"]``: boxes given with a user's dataset manifest
  (``record-dataset``), the object(s) the prompt is about; all of them count.
- ``extra["ground_truth"]["objects"]``: every object of a demo (shapes world) scene. The
  question names its object by colour and/or shape words; the target is the one object
  that has every colour and shape word of the question. Counting questions and
  hallucination bait (no object has both words) have no target, and are skipped rather
  than scored against a guess.

Boxes are ``[x0, y0, x1, y1]`` in the first image's original pixels (x1, y1 exclusive). A
patch belongs to the region when at least half of its area lies inside a box: the rule that
turns a pixel box into the patch set every score uses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.demo.world import COLOURS, SHAPES  # plain data: no torch, no model
from store.schema import ImageGeometry

VOCABULARY = frozenset(COLOURS) | frozenset(SHAPES)  # the words that name a demo object

INSIDE_SHARE = 0.5  # a patch is in the region when this share of its area is inside a box


def target_boxes(extra: Mapping[str, Any], prompt: str) -> list[tuple[float, ...]]:
    """The target's boxes (empty when the trace has none, or the question names no single
    object); malformed entries are skipped (``extra`` is free-form JSON)."""
    annotations = extra.get("annotations")
    if isinstance(annotations, Mapping) and isinstance(annotations.get("boxes"), list):
        return [b for b in map(_box, annotations["boxes"]) if b is not None]
    truth = extra.get("ground_truth")
    objects = truth.get("objects") if isinstance(truth, Mapping) else None
    if not isinstance(objects, list):
        return []
    named = set(re.findall(r"[a-z]+", prompt.lower())) & VOCABULARY
    matches = [
        item
        for item in objects
        if isinstance(item, Mapping) and named and named <= {item.get("colour"), item.get("shape")}
    ]
    box = _box(matches[0].get("box")) if len(matches) == 1 else None
    return [box] if box is not None else []


def _box(value: object) -> tuple[float, ...] | None:
    if not (isinstance(value, list | tuple) and len(value) == 4):
        return None
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return box if box[2] > box[0] and box[3] > box[1] else None


def box_coverage(geometry: ImageGeometry, boxes: list[tuple[float, ...]]) -> np.ndarray:
    """``[G]`` share of each patch's area inside the boxes (max over boxes), first image
    only (patches of other images get 0)."""
    cells = np.asarray(geometry.patch_boxes, np.float64)
    first = np.asarray([geometry.tiles[t].image == 0 for t in geometry.patch_tile])
    area = np.maximum((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1]), 1e-12)
    cover = np.zeros(len(cells))
    for x0, y0, x1, y1 in boxes:
        w = np.clip(np.minimum(cells[:, 2], x1) - np.maximum(cells[:, 0], x0), 0, None)
        h = np.clip(np.minimum(cells[:, 3], y1) - np.maximum(cells[:, 1], y0), 0, None)
        cover = np.maximum(cover, w * h / area)
    return np.where(first, cover, 0.0)


def region(geometry: ImageGeometry, boxes: list[tuple[float, ...]]) -> np.ndarray:
    """``[G]`` bool: the patches at least :data:`INSIDE_SHARE` inside a box."""
    return box_coverage(geometry, boxes) >= INSIDE_SHARE
