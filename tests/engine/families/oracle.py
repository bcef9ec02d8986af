"""The exact token → patch map of a VLM, read from the model's own behaviour.

With every attention output of the vision tower zeroed (a forward hook), a vision token depends
only on its own patch: patch embedding, position embedding, MLPs and norms are per token. What
mixes patches after that is the family's own packing (2×2 merges, pixel shuffle, pooling,
interpolation), which is exactly the map to learn. The gradient of each LM image-token embedding
(``e_p · r`` with a fixed random ``r``) with respect to ``pixel_values`` is then non-zero exactly
on the pixels that token reads; :func:`pixel_maps` lays each family's ``pixel_values`` out as
(image, tile) → H×W, and :func:`token_patch_map` reports, per image-token position, the patches
it reads. Tokens that read no pixels (row breaks, newlines, Mllama's CLS key rows) get an empty
list.

Weights say how much of a token comes from each patch. Where a family concatenates patch
features (2×2 merges, pixel shuffle) or maps one to one, each patch read is an equal share.
Where it mixes them linearly (Gemma 3's average pooling, OneVision's bilinear shrink), the
weights are the mixing coefficients, read exactly by :func:`mixing_weights` from a gradient leaf
placed where the mix is linear (``MIXING_LEAF``).

Mllama has no image tokens in its sequence: there the "positions" are the rows of the
cross-attention keys (``cross_attention_states``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

CROSS_ATTENTION_FAMILIES = ("mllama",)
TILED_FLAT = ("idefics3", "smolvlm", "internvl", "aya_vision")  # all images' tiles on one axis
# One run of image tokens per tile; an image's last tile (its global view) follows this marker.
GLOBAL_VIEW_MARKER = {
    "idefics3": "<global-img>",
    "smolvlm": "<global-img>",
    "aya_vision": "TILE_GLOBAL",
}
# Families that mix patch features linearly, and which side of the projector is then linear in
# the patches: after it for OneVision (projector, then bilinear shrink), before it for Gemma 3
# (its projector average-pools, then normalises and projects: one Jacobian per pooled block).
MIXING_LEAF = {"llava_onevision": "output", "gemma3": "input"}


@dataclass(frozen=True)
class Read:
    """One patch a token reads: where (image, tile, pixel box in the processed tile), how much."""

    image: int
    tile: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the processed tile's pixels
    weight: float  # share of the token that comes from this patch (the token's weights sum to 1)


class _Captured(Exception):
    """Stops the forward pass once the LM's inputs are known: the LM itself is not needed."""


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    inner = model.model
    for name in ("vision_tower", "visual", "vision_model"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise LookupError(f"no vision tower in {type(model).__name__}")


def vision_attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The vision tower's attention modules (outermost only; pooling heads left out)."""
    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in vision_tower(model).named_modules():
        if not type(module).__name__.endswith("Attention"):
            continue
        if isinstance(module, torch.nn.MultiheadAttention) or name.startswith("head"):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue
        found.append((name, module))
    return found


@contextlib.contextmanager
def vision_attention_zeroed(model: torch.nn.Module) -> Iterator[None]:
    """Every vision attention output is zero inside: each vision token sees its patch only."""

    def zero(module, args, output):
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]), *output[1:])
        return torch.zeros_like(output)

    handles = [m.register_forward_hook(zero) for _, m in vision_attention_modules(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def model_type(model: torch.nn.Module) -> str:
    return model.config.model_type


def lm_image_rows(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, list[int]]:
    """The LM's input rows that may carry the image, and their sequence positions.

    Image-token positions of ``inputs_embeds``; for Mllama every cross-attention key row.
    """
    inner = model.model
    language_model = getattr(inner, "language_model", None) or inner.text_model
    seen: dict[str, torch.Tensor] = {}

    def capture(module, args, kwargs):
        seen.update(kwargs)
        raise _Captured

    handle = language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model(**inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    if model_type(model) in CROSS_ATTENTION_FAMILIES:
        rows = seen["cross_attention_states"].reshape(-1, seen["cross_attention_states"].shape[-1])
        return rows, list(range(rows.shape[0]))
    ids = inputs["input_ids"][0]
    positions = torch.nonzero(ids == image_token_id(model)).flatten().tolist()
    return seen["inputs_embeds"][0, positions], positions


def image_token_id(model: torch.nn.Module) -> int:
    config = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return value
    raise LookupError(f"{type(config).__name__} names no image token")


def _runs(ids: list[int], token: int) -> list[tuple[int, int]]:
    """(start, length) of each run of ``token`` in ``ids``."""
    runs: list[tuple[int, int]] = []
    for i, t in enumerate(ids):
        if t != token:
            continue
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def tiles_per_image(model: torch.nn.Module, inputs: dict, processor) -> list[int]:
    """How the flat tile axis of the ``TILED_FLAT`` families splits into images (from the ids)."""
    ids = inputs["input_ids"][0].tolist()
    runs = _runs(ids, image_token_id(model))
    if model_type(model) == "internvl":
        return [length // model.config.image_seq_length for _, length in runs]
    global_id = processor.tokenizer.convert_tokens_to_ids(GLOBAL_VIEW_MARKER[model_type(model)])
    counts, tiles = [], 0
    for start, _ in runs:  # one run per tile; the global view (last) follows <global-img>
        tiles += 1
        if ids[start - 1] == global_id:
            counts.append(tiles)
            tiles = 0
    return counts


def pixel_maps(
    model: torch.nn.Module, inputs: dict, values: torch.Tensor, processor
) -> dict[tuple[int, int], np.ndarray]:
    """``values`` (shaped like ``pixel_values``) as (image, tile) → H×W, channels summed |·|."""
    kind = model_type(model)
    v = values.detach().abs().float()
    if kind.startswith("qwen"):
        return _qwen_maps(model, inputs, v)
    if v.dim() == 6:  # Mllama: batch, image, tile, C, H, W
        v = v[0]
    if v.dim() == 5 and kind in TILED_FLAT:  # batch, tile, C, H, W
        v = v[0]
    if v.dim() == 4 and kind in TILED_FLAT:  # tile, C, H, W: split into images
        maps, start = {}, 0
        for image, count in enumerate(tiles_per_image(model, inputs, processor)):
            for tile in range(count):
                maps[(image, tile)] = v[start + tile].sum(0).numpy()
            start += count
        return maps
    if v.dim() == 4:  # image, C, H, W (Gemma 3, PaliGemma)
        return {(i, 0): v[i].sum(0).numpy() for i in range(v.shape[0])}
    return {(i, t): v[i, t].sum(0).numpy() for i in range(v.shape[0]) for t in range(v.shape[1])}


def _qwen_maps(model, inputs, v: torch.Tensor) -> dict[tuple[int, int], np.ndarray]:
    """Qwen-VL rows are patches in 2×2-merge order: (row, col) = (m·bh+ih, m·bw+iw)."""
    vision = model.config.vision_config
    patch, merge, temporal = (
        vision.patch_size,
        vision.spatial_merge_size,
        vision.temporal_patch_size,
    )
    maps, offset = {}, 0
    for image, (t, h, w) in enumerate(inputs["image_grid_thw"].tolist()):
        rows = v[offset : offset + t * h * w].reshape(
            t, h // merge, w // merge, merge, merge, 3, temporal, patch, patch
        )
        # t, bh, bw, ih, iw, C, T, P, P -> (bh, ih, P) x (bw, iw, P)
        canvas = rows.sum(dim=(0, 5, 6)).permute(0, 2, 4, 1, 3, 5)
        maps[(image, 0)] = canvas.reshape(h * patch, w * patch).numpy()
        offset += t * h * w
    return maps


def patch_size(model: torch.nn.Module) -> int:
    size = model.config.vision_config.patch_size
    return size[0] if isinstance(size, list | tuple) else size


def patches_read(maps: dict[tuple[int, int], np.ndarray], patch: int) -> list[Read]:
    """The patches with non-zero values in ``maps``, as equal shares."""
    found = []
    for (image, tile), values in maps.items():
        h, w = values.shape
        blocks = values.reshape(h // patch, patch, w // patch, patch).sum(axis=(1, 3))
        for row, col in zip(*np.nonzero(blocks), strict=True):
            x0, y0 = int(col) * patch, int(row) * patch
            found.append((image, tile, (x0, y0, x0 + patch, y0 + patch)))
    return [Read(image, tile, box, 1 / len(found)) for image, tile, box in found]


def _direction(width: int) -> torch.Tensor:
    return torch.randn(width, generator=torch.Generator().manual_seed(0))


def token_patch_map(model: torch.nn.Module, inputs: dict, processor) -> dict[int, list[Read]]:
    """Position → patches it reads, from gradients with the vision attention zeroed."""
    pixel_values = inputs["pixel_values"].detach().clone().requires_grad_(True)
    inputs = {**inputs, "pixel_values": pixel_values}
    with vision_attention_zeroed(model), torch.enable_grad():
        rows, positions = lm_image_rows(model, inputs)
        direction = _direction(rows.shape[-1])
        patch = patch_size(model)
        result: dict[int, list[Read]] = {}
        for row, position in zip(rows, positions, strict=True):
            (grad,) = torch.autograd.grad(row @ direction, pixel_values, retain_graph=True)
            result[position] = patches_read(pixel_maps(model, inputs, grad, processor), patch)
    if model_type(model) in MIXING_LEAF:
        weights = mixing_weights(model, inputs)
        for position, reads in result.items():
            result[position] = [
                Read(r.image, r.tile, r.box, weights[position][(r.image, r.tile, r.box)])
                for r in reads
            ]
    return result


def mixing_weights(
    model: torch.nn.Module, inputs: dict
) -> dict[int, dict[tuple[int, int, tuple[int, int, int, int]], float]]:
    """Position → {(image, tile, box): coefficient} for the families in ``MIXING_LEAF``.

    The projector's output (or input) is made the gradient leaf; each LM image row is then a
    linear mix of the leaf's patch rows (times one Jacobian for all of them), so the L1 norms of
    the gradient rows, normalised, are the coefficients. Leaf rows are (image or tile, patch in
    raster order); OneVision's tiles are those of one image.
    """
    kind = model_type(model)
    projector = model.model.multi_modal_projector
    leaf: list[torch.Tensor] = []

    def output_leaf(module, args, output):
        leaf.append(output.detach().requires_grad_(True))
        return leaf[-1]

    def input_leaf(module, args):
        leaf.append(args[0].detach().requires_grad_(True))
        return (leaf[-1], *args[1:])

    if MIXING_LEAF[kind] == "output":
        handle = projector.register_forward_hook(output_leaf)
    else:
        handle = projector.register_forward_pre_hook(input_leaf)
    try:
        with torch.enable_grad():
            rows, positions = lm_image_rows(
                model, {**inputs, "pixel_values": inputs["pixel_values"].detach()}
            )
            direction = _direction(rows.shape[-1])
            (features,) = leaf
            if kind == "llava_onevision" and inputs["pixel_values"].shape[0] != 1:
                raise NotImplementedError("OneVision mixing weights: one image per prompt")
            grid = round(features.shape[1] ** 0.5)
            patch = patch_size(model)
            weights = {}
            for row, position in zip(rows, positions, strict=True):
                (grad,) = torch.autograd.grad(row @ direction, features, retain_graph=True)
                mass = grad.abs().sum(-1)  # [image or tile, patch]
                total = mass.sum()
                found = {}
                for n, k in zip(*torch.nonzero(mass, as_tuple=True), strict=True):
                    n, k = int(n), int(k)
                    x0, y0 = (k % grid) * patch, (k // grid) * patch
                    key = (0, n) if kind == "llava_onevision" else (n, 0)
                    found[(*key, (x0, y0, x0 + patch, y0 + patch))] = float(mass[n, k] / total)
                weights[position] = found
    finally:
        handle.remove()
    return weights


def embedding_change(model: torch.nn.Module, before: dict, after: dict) -> set[int]:
    """Positions whose LM image row differs between two inputs (vision attention zeroed)."""
    with vision_attention_zeroed(model), torch.no_grad():
        rows_before, positions = lm_image_rows(model, before)
        rows_after, _ = lm_image_rows(model, after)
    changed = (rows_before != rows_after).any(dim=-1).tolist()
    return {p for p, c in zip(positions, changed, strict=True) if c}


def tokens_over_change(
    model: torch.nn.Module, before: dict, after: dict, oracle: dict[int, list[Read]], processor
) -> set[int]:
    """Positions the oracle says read a patch whose pixels differ between the two inputs."""
    diff = pixel_maps(model, before, after["pixel_values"] - before["pixel_values"], processor)
    changed = {key: diff[key] for key in diff if diff[key].any()}
    touched = {(r.image, r.tile, r.box) for r in patches_read(changed, patch_size(model))}
    return {
        p for p, reads in oracle.items() if any((r.image, r.tile, r.box) in touched for r in reads)
    }
