"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``).

The processor resizes the image to its longest edge, stretches it to multiples of the tile
size and cuts it row-major, then appends the whole image squashed to one tile (the global
view); an image no larger than a tile is that one tile. The prompt says how each image was
cut: every run of image tokens follows a ``<row_i_col_j>`` marker (a crop) or ``<global-img>``
(an image's last tile); the markers are text (one added token each, or several where a
tokenizer splits them), read back from the decoded text before each run. The SigLIP-style
tower has no CLS token; a pixel shuffle of ``scale_factor`` packs ``s x s`` patches into
each LM token (:mod:`engine.adapters.tiled`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from engine.adapters.base import Placement, VlmAdapter, register_adapter
from engine.adapters.tiled import CropGrid, TowerPacking, tiled_placement
from engine.adapters.tower import patch_size
from engine.errors import UnsupportedModelError
from engine.inputs import ImageInput

GLOBAL_VIEW = "<global-img>"
MARKER = re.compile(r"<row_(\d+)_col_(\d+)>|<global-img>")


def text_before_runs(
    ids: list[int], positions: Sequence[int], decode: Callable[[list[int]], str]
) -> list[str]:
    """The decoded text between each run of image tokens (``positions``) and the one before."""
    texts, previous_end = [], 0
    for i, position in enumerate(positions):
        if i == 0 or positions[i - 1] != position - 1:
            texts.append(decode(ids[previous_end:position]))
        previous_end = position + 1
    return texts


def tile_markers(text_before: Sequence[str]) -> list[re.Match]:
    """The last tile marker in the text before each run of image tokens."""
    found = []
    for text in text_before:
        markers = list(MARKER.finditer(text))
        if not markers:
            raise UnsupportedModelError(
                f"an image tile follows {text[-40:]!r}, with no <row_i_col_j> or {GLOBAL_VIEW} "
                "marker; this processor's prompt layout is not supported"
            )
        found.append(markers[-1])
    return found


def grids_from_markers(markers: Sequence[re.Match]) -> list[CropGrid]:
    """Each image's crop grid from the marker before each run of image tokens, in order."""
    grids: list[CropGrid] = []
    crops: list[tuple[int, int]] = []
    for marker in markers:
        if marker[0] == GLOBAL_VIEW:
            grids.append(_crop_grid(crops))
            crops = []
        else:
            crops.append((int(marker[1]) - 1, int(marker[2]) - 1))
    if crops:
        raise UnsupportedModelError(f"the prompt's last image has crops but no {GLOBAL_VIEW} view")
    return grids


def _crop_grid(crops: list[tuple[int, int]]) -> CropGrid:
    """One image's grid from its crops' (row, col) markers, which must be row-major."""
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

    def geometry(self, inputs: dict[str, torch.Tensor], images: Sequence[ImageInput]) -> Placement:
        pixel_values = inputs["pixel_values"]
        _check_tiles(pixel_values, inputs.get("pixel_attention_mask"))
        ids = inputs["input_ids"][0].tolist()
        positions = self.image_positions(inputs["input_ids"][0])
        before = text_before_runs(ids, positions, self.processor.tokenizer.decode)
        grids = grids_from_markers(tile_markers(before))
        if len(grids) != len(images):
            raise UnsupportedModelError(
                f"the prompt holds {len(grids)} image(s) for the {len(images)} given"
            )
        packing = TowerPacking(
            side=int(pixel_values.shape[-1]) // patch_size(self.model.config.vision_config),
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
