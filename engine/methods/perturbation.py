"""Deletion and insertion (Petsiuk et al. 2018, RISE): does the model need what a map marks?

For each answer token and each candidate map (:mod:`methods.maps`, with the maps other
methods stored: occlusion, CLEANN), patches are ranked by the map, most relevant first (ties:
lower patch index first), and for ``steps + 1`` fractions ``i / steps`` of the G patches
(rounded to whole patches):

- **deletion**: the first ``n`` ranked patches of the image are painted with the image's mean
  colour (per channel, over the whole image);
- **insertion**: the first ``n`` ranked patches are copied from the image onto a blurred copy
  of it (Gaussian, radius ``blur_patches`` patch widths).

The model re-reads each perturbed image teacher-forced on the recorded answer (the stored
token ids, so the answer cannot change), and the curve is the recorded answer token's
probability at each step. AUC is the trapezoid rule over the fraction of patches perturbed
(x in [0, 1]). A faithful map gives a low deletion AUC (the probability falls as soon as the
marked patches go) and a high insertion AUC.

All perturbed images of one answer token (every map, every step) run as batched forwards of
up to ``batch`` images, each batch's inputs from one processor call: one or a few passes per
token instead of ``maps x (steps + 1)``.
Perturbations use the stored image pixels (the user's image, downscaled for display only
when its longest side is over 1,024 pixels), patch boxes scaled to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from engine.inputs import load_image
from engine.loading import LoadedModel
from engine.recording import stored_history
from methods.base import Method, MethodResult, Needs, recording_model
from methods.maps import MapChoice, candidate_maps, stored_maps
from methods.registry import register
from store._stored import StoredTrace

DELETION, INSERTION = "deletion", "insertion"


@dataclass(frozen=True)
class PerturbationParams:
    steps: int = 16
    # map names or name prefixes; stored maps (occlusion, cleann) count when the trace has them
    maps: str = "relevancy,attention.head_mean,random,occlusion,cleann"
    blur_patches: float = 1.0  # insertion's blur radius, in patch widths
    layer: int = -1  # LM layer of attention.head_mean
    seed: int = 0  # the random map's seed
    batch: int = 64  # images per forward pass (1: one forward per image)


def chosen_maps(
    trace: StoredTrace,
    params: PerturbationParams,
    stored: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The candidate maps named by ``params.maps`` (exact names, or prefixes before a dot);
    ``stored``: maps other methods stored for the trace (:func:`methods.maps.stored_maps`).
    A named map the trace does not have is skipped."""
    wanted = [w.strip() for w in params.maps.split(",") if w.strip()]
    maps = candidate_maps(trace, MapChoice(params.layer, params.seed), stored)
    return {
        name: values
        for name, values in maps.items()
        if any(name == w or name.startswith(w + ".") for w in wanted)
    }


def fractions(patches: int, steps: int) -> np.ndarray:
    """``[steps + 1]`` whole-patch counts ``round(i / steps * G)``, as fractions of G."""
    counts = np.rint(np.arange(steps + 1) / steps * patches).astype(int)
    return counts / patches


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid rule area under ``y(x)``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


class Canvas:
    """The trace's images as float arrays, and the pixel box of every patch on them."""

    def __init__(self, trace: StoredTrace, blur_patches: float) -> None:
        geometry = trace.image
        self.names = [image.name for image in geometry.images]
        self.images = [np.asarray(image.pixels, np.float32) for image in geometry.images]
        self.patch_image = np.asarray([geometry.tiles[t].image for t in geometry.patch_tile])
        boxes = np.asarray(geometry.patch_boxes, np.float64).copy()
        for i, image in enumerate(geometry.images):
            h, w = image.pixels.shape[:2]
            scale = np.array([w / image.size[0], h / image.size[1]] * 2)
            boxes[self.patch_image == i] *= scale
        self.boxes = np.rint(boxes).astype(int)
        widths = boxes[:, 2] - boxes[:, 0]
        radius = float(np.median(widths)) * blur_patches
        self.mean = [np.broadcast_to(im.mean(axis=(0, 1)), im.shape) for im in self.images]
        self.blurred = [
            np.asarray(
                Image.fromarray(im.astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)),
                np.float32,
            )
            for im in self.images
        ]

    def compose(
        self,
        base: list[np.ndarray],
        fill: list[np.ndarray],
        patches: np.ndarray,
        boxes: np.ndarray | None = None,
    ):
        """``base`` with ``patches`` taken from ``fill``, as PIL images; ``boxes``: pixel boxes
        to paint per patch instead of the patches' own (occlusion's windows)."""
        boxes = self.boxes if boxes is None else boxes
        out = [b.copy() for b in base]
        for p in patches:
            x0, y0, x1, y1 = boxes[p]
            i = self.patch_image[p]
            out[i][y0:y1, x0:x1] = fill[i][y0:y1, x0:x1]
        return [Image.fromarray(np.clip(np.rint(o), 0, 255).astype(np.uint8)) for o in out]

    def steps(self, mode: str, order: np.ndarray, counts: np.ndarray) -> list[list[Image.Image]]:
        """The perturbed images of one ranking, one list (the prompt's images) per step."""
        base, fill = (self.images, self.mean) if mode == DELETION else (self.blurred, self.images)
        return [self.compose(base, fill, order[:n]) for n in counts]


def answer_probabilities(
    loaded: LoadedModel, trace: StoredTrace, images: list[list[Image.Image]], batch: int
) -> np.ndarray:
    """``[len(images), N]``: each answer token's probability, teacher-forced on the stored
    answer, for every image list, ``batch`` image lists per forward pass. Each pass's inputs
    come from one processor call (:meth:`~engine.adapters.base.VlmAdapter.build_batch`): one
    call per image cost ~28 % of the time."""
    adapter = loaded.adapter
    ids = torch.as_tensor(np.asarray(trace.tokens.ids), dtype=torch.long, device=loaded.device)
    p, n = trace.prompt_length, trace.answer_length
    names = [image.name for image in trace.image.images]
    history = stored_history(trace.info.extra)  # a follow-up's earlier turns
    out = []
    for start in range(0, len(images), batch):
        lists = [
            [load_image(im, name) for im, name in zip(pictures, names, strict=True)]
            for pictures in images[start : start + batch]
        ]
        inputs = adapter.build_batch(lists, trace.info.prompt, history)
        inputs = {k: v.to(loaded.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        prompts = inputs["input_ids"]
        if prompts.shape[1] != p or not torch.equal(prompts, ids[:p].expand_as(prompts)):
            raise ValueError(
                f"trace {trace.trace_id}: the prompt does not tokenise to the stored tokens "
                "with this model's processor"
            )
        forced = adapter.forced_inputs(inputs, ids)
        with torch.inference_mode():
            logits = loaded.model(**forced, logits_to_keep=n + 1).logits[:, :-1].double()
        chosen = torch.log_softmax(logits, dim=-1)[:, torch.arange(n), ids[p:]]
        out.append(chosen.exp().cpu().numpy())
    return np.concatenate(out)


def perturbation_curves(
    loaded: LoadedModel,
    trace: StoredTrace,
    maps: dict[str, np.ndarray],
    params: PerturbationParams,
    modes: tuple[str, ...] = (DELETION, INSERTION),
) -> dict[str, dict[str, np.ndarray]]:
    """``{mode: {map: [N, steps + 1]}}``: answer token k's probability along the deletion /
    insertion of patches in the order of each map's row k. All images of one token run
    batched (``params.batch`` per forward)."""
    canvas = Canvas(trace, params.blur_patches)
    g, n = trace.image.num_patches, trace.answer_length
    counts = np.rint(fractions(g, params.steps) * g).astype(int)
    curves = {mode: {name: np.zeros((n, len(counts))) for name in maps} for mode in modes}
    jobs = [(mode, name) for mode in modes for name in maps]
    for k in range(n):
        images = []
        for mode, name in jobs:
            order = np.argsort(-np.asarray(maps[name][k], np.float64), kind="stable")
            images += canvas.steps(mode, order, counts)
        probs = answer_probabilities(loaded, trace, images, params.batch)[:, k]
        for j, (mode, name) in enumerate(jobs):
            curves[mode][name][k] = probs[j * len(counts) : (j + 1) * len(counts)]
    return curves


class _Perturbation(Method):
    """Deletion or insertion AUCs and curves of every chosen map (module docstring)."""

    version = "1"
    needs = frozenset({Needs.MODEL, Needs.RELEVANCY, Needs.ATTENTION})
    Params = PerturbationParams

    def run(self, trace: StoredTrace, params: Any, **resources: Any) -> MethodResult:
        loaded: LoadedModel = recording_model(trace, resources)
        store = resources.get("store")
        stored = stored_maps(store, trace.trace_id) if store is not None else None
        maps = chosen_maps(trace, params, stored)
        curves = perturbation_curves(loaded, trace, maps, params, (self.name,))[self.name]
        return self.summarise(trace, params, curves)

    def summarise(
        self, trace: StoredTrace, params: Any, curves: dict[str, np.ndarray]
    ) -> MethodResult:
        """The result record of curves computed by :func:`perturbation_curves`."""
        x = fractions(trace.image.num_patches, params.steps)
        aucs = {name: [auc(x, row) for row in c] for name, c in curves.items()}
        per_token = {
            "fractions": x.tolist(),
            "curves": {name: c.tolist() for name, c in curves.items()},
            "auc": aucs,
        }
        headline = {f"{self.name}_auc.{name}": float(np.mean(v)) for name, v in aucs.items()}
        provenance = {
            "model": {"id": trace.info.model_id, "revision": trace.info.model_revision},
            "tokens": trace.tokens.text[trace.prompt_length :],
            "recorded_prob": np.asarray(trace.top_k.chosen_prob, np.float64).tolist(),
            "baseline": "image mean colour" if self.name == DELETION else "Gaussian blur",
        }
        return self.result(params, per_token, headline, provenance)


@register
class Deletion(_Perturbation):
    name = DELETION


@register
class Insertion(_Perturbation):
    name = INSERTION
