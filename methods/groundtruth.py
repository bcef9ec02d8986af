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

Masks (the object's own pixels, not its box) exist for demo targets only: a demo trace keeps
its scene's seed, not its pixels, so :func:`target_mask` redraws the scene
(:func:`engine.demo.world.make_scene`, with the seed alone as ``demo record`` draws, then with
the stored object count as the Ask page does) and uses the masks only when the redrawn
objects are the stored ones (shape, colour, quadrant and box each): a scene drawn by other
code would otherwise be scored against the wrong pixels. The same half-area rule turns the
mask into patches (:func:`mask_coverage`). A dataset manifest's ``masks`` (image paths
relative to the manifest) are kept as paths only, without the manifest's folder or the
pixels, so they are not read here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.demo.world import COLOURS, SHAPES, make_scene  # numpy and Pillow: no torch
from store.schema import ImageGeometry

VOCABULARY = frozenset(COLOURS) | frozenset(SHAPES)  # the words that name a demo object

INSIDE_SHARE = 0.5  # a patch is in the region when this share of its area is inside a box


def target_boxes(extra: Mapping[str, Any], prompt: str) -> list[tuple[float, ...]]:
    """The target's boxes (empty when the trace has none, or the question names no single
    object); malformed entries are skipped (``extra`` is free-form JSON)."""
    annotations = extra.get("annotations")
    if isinstance(annotations, Mapping) and isinstance(annotations.get("boxes"), list):
        return [b for b in map(_box, annotations["boxes"]) if b is not None]
    objects, index = _demo_target(extra, prompt)
    box = _box(objects[index].get("box")) if index is not None else None
    return [box] if box is not None else []


def _demo_target(extra: Mapping[str, Any], prompt: str) -> tuple[list, int | None]:
    """The demo scene's stored objects and the index of the one the question names (None:
    not a demo trace, or no single object has every colour and shape word of the prompt)."""
    truth = extra.get("ground_truth")
    objects = truth.get("objects") if isinstance(truth, Mapping) else None
    if not isinstance(objects, list):
        return [], None
    named = set(re.findall(r"[a-z]+", prompt.lower())) & VOCABULARY
    matches = [
        i
        for i, item in enumerate(objects)
        if isinstance(item, Mapping) and named and named <= {item.get("colour"), item.get("shape")}
    ]
    return objects, matches[0] if len(matches) == 1 else None


def target_mask(extra: Mapping[str, Any], prompt: str) -> tuple[np.ndarray | None, str]:
    """The demo target's ``[H, W]`` bool mask in original pixels, or None and why not (the
    module docstring: only a redrawn scene whose objects equal the stored ones counts)."""
    annotations = extra.get("annotations")
    if isinstance(annotations, Mapping) and isinstance(annotations.get("boxes"), list):
        return None, "the target is a dataset manifest's, whose masks are not stored"
    objects, index = _demo_target(extra, prompt)
    if index is None:
        return None, "no demo object the question names alone"
    seed = extra["ground_truth"].get("world_seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        return None, "no shapes-world seed"
    for count in dict.fromkeys([None, len(objects)]):
        if count is not None and not 1 <= count <= len(SHAPES):
            continue
        scene = make_scene(seed, count)
        drawn = [
            {"shape": o.shape, "colour": o.colour, "position": o.position, "box": list(o.box)}
            for o in scene.objects
        ]
        if drawn == objects:
            return scene.objects[index].mask, ""
    return None, f"the scene redrawn from seed {seed} does not match the stored objects"


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


def mask_coverage(geometry: ImageGeometry, mask: np.ndarray) -> np.ndarray:
    """``[G]`` share of each patch's area on mask pixels (pixel ``(y, x)`` is the unit square
    at ``[x, x + 1) x [y, y + 1)``; partly covered pixels count by their overlap), first image
    only. A cell reaching past the image keeps its whole area, as in :func:`box_coverage`."""
    cells = np.asarray(geometry.patch_boxes, np.float64)
    first = np.asarray([geometry.tiles[t].image == 0 for t in geometry.patch_tile])
    area = np.maximum((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1]), 1e-12)
    height, width = mask.shape
    wx = _overlap(cells[:, 0], cells[:, 2], width)  # [G, W]
    wy = _overlap(cells[:, 1], cells[:, 3], height)  # [G, H]
    covered = ((wy @ mask.astype(np.float64)) * wx).sum(axis=1)
    return np.where(first, covered / area, 0.0)


def _overlap(start: np.ndarray, stop: np.ndarray, pixels: int) -> np.ndarray:
    """``[G, pixels]`` length of each cell's ``[start, stop)`` inside each unit pixel."""
    edges = np.arange(pixels, dtype=np.float64)
    right = np.minimum(stop[:, None], edges + 1)
    return np.clip(right - np.maximum(start[:, None], edges), 0, None)


def mask_region(geometry: ImageGeometry, mask: np.ndarray) -> np.ndarray:
    """``[G]`` bool: the patches at least :data:`INSIDE_SHARE` on the mask."""
    return mask_coverage(geometry, mask) >= INSIDE_SHARE
