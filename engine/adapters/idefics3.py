"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``).

The processor resizes the image to its longest edge, stretches it to multiples of the tile
size and cuts it row-major, then appends the whole image squashed to one tile (the global
view); an image no larger than a tile is that one tile. The prompt says how each image was
cut: every run of image tokens follows a ``<row_i_col_j>`` marker (a crop) or ``<global-img>``
(an image's last tile), and those markers are plain text tokens. The SigLIP-style tower has no
CLS token; a pixel shuffle of ``scale_factor`` packs ``s x s`` patches into each LM token
(:mod:`engine.adapters.tiled`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from engine.adapters.base import Placement, VlmAdapter, register_adapter
from engine.adapters.tiled import CropGrid, TowerPacking, tiled_placement
from engine.errors import UnsupportedModelError

GLOBAL_VIEW = "<global-img>"
CROP = re.compile(r"<row_(\d+)_col_(\d+)>")


def run_starts(mask: np.ndarray) -> np.ndarray:
    """Where each run of ``True`` in ``mask`` begins."""
    mask = np.asarray(mask, bool)
    return np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))


def grids_from_markers(markers: Sequence[str]) -> list[CropGrid]:
    """Each image's crop grid from the marker before each run of image tokens, in order."""
    grids: list[CropGrid] = []
    crops: list[tuple[int, int]] = []
    for marker in markers:
        if marker == GLOBAL_VIEW:
            grids.append(_grid(crops))
            crops = []
            continue
        found = CROP.fullmatch(marker)
        if found is None:
            raise UnsupportedModelError(
                f"an image tile follows {marker!r}, not a <row_i_col_j> or {GLOBAL_VIEW} marker "
                "token; this processor's prompt layout is not supported"
            )
        crops.append((int(found[1]) - 1, int(found[2]) - 1))
    if crops:
        raise UnsupportedModelError(f"the prompt's last image has crops but no {GLOBAL_VIEW} view")
    return grids


def _grid(crops: list[tuple[int, int]]) -> CropGrid:
    if not crops:
        return CropGrid(1, 1)
    rows, cols = max(r for r, _ in crops) + 1, max(c for _, c in crops) + 1
    if crops != [(r, c) for r in range(rows) for c in range(cols)]:
        raise UnsupportedModelError(f"crop markers {crops} are not a row-major {rows}x{cols} grid")
    return CropGrid(rows, cols)


@register_adapter
class Idefics3Adapter(VlmAdapter):
    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    language_layers_path = "model.text_model.layers"
    multi_image = True

    def num_vision_layers(self) -> int:
        return int(self.model.config.vision_config.num_hidden_layers)

    def geometry(self, inputs, images) -> Placement:
        pixel_values = inputs["pixel_values"]
        _check_tiles(pixel_values, inputs.get("pixel_attention_mask"))
        ids = inputs["input_ids"][0]
        positions = self.image_positions(ids)
        tokens = self.processor.tokenizer.convert_ids_to_tokens(ids.tolist())
        starts = run_starts(ids.cpu().numpy() == self.image_token_id)
        grids = grids_from_markers([tokens[s - 1] if s else "" for s in starts])
        if len(grids) != len(images):
            raise UnsupportedModelError(
                f"the prompt holds {len(grids)} image(s) for the {len(images)} given"
            )
        patch = int(self.model.config.vision_config.patch_size)
        packing = TowerPacking(
            side=int(pixel_values.shape[-1]) // patch,
            shuffle=int(self.model.config.scale_factor),
            cls=False,
        )
        return tiled_placement(images, grids, packing, positions, len(ids))


def _check_tiles(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> None:
    """The model drops all-zero tiles (padding between prompts of a batch) and masks padded
    patches; one prompt's real tiles are never all zero (normalised pixels) nor padded, so
    either means a layout this adapter does not model."""
    if not bool((pixel_values != 0).flatten(2).any(-1).all()):
        raise UnsupportedModelError("an image tile is all zero: the model would drop it")
    if pixel_mask is not None and not bool(pixel_mask.bool().all()):
        raise UnsupportedModelError("an image tile is padded: its patches are masked")
