"""Occlusion (Zeiler & Fergus 2014): a map that reads no attention, the reference the attention
maps are measured against.

For every patch g, the pixels of g (grown to ``window`` x ``window`` patch widths about its
centre, clipped to its image) are painted with the image's mean colour (per channel, over the
whole image: deletion's baseline), and the model re-reads the image teacher-forced on the
recorded answer. The map is the probability each answer token loses:

    map[k, g] = p_k(image) - p_k(image with g occluded)

Positive where the token needs the patch, negative where hiding it helps the token. One
forward gives every answer token's probability, so the whole ``[N, G]`` map costs G + 1
images (the untouched image is re-read too, so both sides of the difference come from the
same batched pass), run in forwards of ``batch`` images. Stored as a map (kind ``maps``,
stage 0): every map-scoring method then compares it as ``occlusion``
(:func:`methods.maps.stored_maps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.loading import LoadedModel
from engine.methods.perturbation import Canvas, answer_probabilities
from methods.base import Method, MethodResult, Needs, recording_model
from methods.maps import MAPS_KIND
from methods.registry import register
from store._stored import StoredTrace

OCCLUSION = "occlusion"


@dataclass(frozen=True)
class OcclusionParams:
    window: int = 1  # occluded square, in patch widths, centred on each patch
    batch: int = 64  # images per forward pass


def window_boxes(canvas: Canvas, window: int) -> np.ndarray:
    """``[G, 4]`` pixel boxes: each patch's box grown by ``(window - 1) / 2`` of its own
    width and height on every side, clipped to its image."""
    boxes = canvas.boxes.astype(np.float64)
    grow = (boxes[:, 2:] - boxes[:, :2]) * (window - 1) / 2
    grown = np.concatenate([boxes[:, :2] - grow, boxes[:, 2:] + grow], axis=1)
    sizes = np.asarray([im.shape[1::-1] for im in canvas.images], np.float64)[canvas.patch_image]
    grown = np.clip(grown, 0, np.concatenate([sizes, sizes], axis=1))
    return np.rint(grown).astype(int)


def occlusion_map(
    loaded: LoadedModel, trace: StoredTrace, params: OcclusionParams
) -> tuple[np.ndarray, np.ndarray]:
    """``([N, G] map, [N] probabilities on the untouched image)``."""
    if params.window < 1 or params.batch < 1:
        raise ValueError(f"occlusion: window and batch must be at least 1, not {params}")
    canvas = Canvas(trace, blur_patches=0.0)
    boxes = window_boxes(canvas, params.window)
    untouched = canvas.compose(canvas.images, canvas.mean, np.arange(0))
    images = [untouched] + [
        canvas.compose(canvas.images, canvas.mean, np.array([g]), boxes)
        for g in range(trace.image.num_patches)
    ]
    probs = answer_probabilities(loaded, trace, images, params.batch)  # [G + 1, N]
    return (probs[0][None, :] - probs[1:]).T, probs[0]


@register
class Occlusion(Method):
    """The occlusion map of every answer token (module docstring)."""

    name = OCCLUSION
    version = "1"
    kind = MAPS_KIND
    stage = 0
    needs = frozenset({Needs.MODEL})
    Params = OcclusionParams

    def run(self, trace: StoredTrace, params: Any, **resources: Any) -> MethodResult:
        loaded: LoadedModel = recording_model(trace, resources)
        values, base = occlusion_map(loaded, trace, params)
        provenance = {
            "model": {"id": trace.info.model_id, "revision": trace.info.model_revision},
            "tokens": trace.tokens.text[trace.prompt_length :],
            "baseline": "image mean colour",
            "window": f"{params.window} x {params.window} patch widths",
            "formula": "p_k(image) - p_k(image with patch g occluded)",
        }
        per_token = {"map": values.tolist(), "probability": base.tolist()}
        return self.result(params, per_token, {}, provenance)
