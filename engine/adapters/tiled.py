"""What the "crops, then a global view" families share (Idefics3 / SmolVLM, InternVL, Aya Vision).

Their processors stretch the whole image onto a canvas of ``rows x cols`` square tiles (no
crop, no padding: the canvas is the image, resized), cut it row-major into tiles, and append
the whole image squashed to one tile (the global view, or thumbnail) when there is more than
one crop. The vision tower sees each tile as its own sequence; a pixel shuffle then packs each
``s x s`` block of a tile's patches into one LM token, blocks row-major; and the model scatters
the features of every tile of every image, in order, into the prompt's image tokens, in order.
That is the whole token -> patch map, so one function builds the geometry for all of them;
the adapters only read their grids (from the prompt's markers, or from the processor's canvas
rule) and their tower's facts (patch size, shuffle factor, CLS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from engine.adapters.base import Placement, VlmAdapter
from engine.adapters.tower import check_one_feature_per_patch, feature_layer_depth, patch_size
from engine.errors import UnsupportedModelError
from engine.geometry import Box, GeometryBuilder
from engine.inputs import ImageInput


@dataclass(frozen=True)
class CropGrid:
    """How one image was cut: ``rows x cols`` crops, then a global view; a 1 x 1 grid is one
    tile, the whole image (no crops and no global view)."""

    rows: int
    cols: int

    @property
    def tiles(self) -> int:
        crops = self.rows * self.cols
        return 1 if crops == 1 else crops + 1


@dataclass(frozen=True)
class TowerPacking:
    """How a tile becomes LM tokens: ``side x side`` patches, ``shuffle x shuffle`` blocks of
    them per token (pixel shuffle), and whether the tower's sequences start with a CLS token."""

    side: int
    shuffle: int
    cls: bool

    @property
    def tokens_per_tile(self) -> int:
        return (self.side // self.shuffle) ** 2


def tile_boxes(size: tuple[int, int], grid: CropGrid) -> list[tuple[Box, str]]:
    """(box in original pixels, kind) of each tile of an image of ``size`` (width, height), in
    the processor's order: crops row-major on the stretched canvas, then the global view."""
    width, height = size
    whole = ((0.0, 0.0, float(width), float(height)), "full")
    if grid.tiles == 1:
        return [whole]
    w, h = width / grid.cols, height / grid.rows
    crops = [
        ((c * w, r * h, (c + 1) * w, (r + 1) * h), "crop")
        for r in range(grid.rows)
        for c in range(grid.cols)
    ]
    return [*crops, (whole[0], "global")]


def tiled_placement(
    images: Sequence[ImageInput],
    grids: Sequence[CropGrid],
    packing: TowerPacking,
    positions: np.ndarray,
    prompt_length: int,
) -> Placement:
    """The geometry of ``images`` cut by ``grids``: image token ``positions[k]`` (in sequence
    order) reads the ``k``-th shuffle block of the tiles taken in order, equal shares."""
    if packing.side % packing.shuffle:
        raise UnsupportedModelError(
            f"a {packing.side}x{packing.side} patch tile does not split into "
            f"{packing.shuffle}x{packing.shuffle} pixel-shuffle blocks"
        )
    expected = sum(g.tiles for g in grids) * packing.tokens_per_tile
    if expected != len(positions):
        raise UnsupportedModelError(
            f"the prompt has {len(positions)} image tokens, but {len(grids)} image(s) cut into "
            f"{[g.tiles for g in grids]} tiles of {packing.tokens_per_tile} tokens make {expected}"
        )
    builder = GeometryBuilder(images)
    index = np.full(prompt_length, -1, np.int32)
    runs = iter(positions.reshape(-1, packing.tokens_per_tile))  # one run of tokens a tile
    for image, (source, grid) in enumerate(zip(images, grids, strict=True)):
        for box, kind in tile_boxes(source.size, grid):
            tile = builder.add_tile(image, box, packing.side, packing.side, kind)
            mine = next(runs)
            builder.read_many(mine, builder.tile_blocks(tile, packing.shuffle))
            index[mine] = image
            patches = builder.tile_patches(tile)
            builder.add_vision_sequence(np.concatenate([[-1], patches]) if packing.cls else patches)
    return Placement(builder.build("cls" if packing.cls else "mean"), index)


def optimal_canvas(
    size: tuple[int, int], tile: tuple[int, int], min_tiles: int, max_tiles: int
) -> CropGrid:
    """The crop grid GotOcr2-style processors (InternVL, Aya Vision) pick for an image of
    ``size`` (width, height): transformers' own rule, imported so the two never drift."""
    try:
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
            get_optimal_tiled_canvas,
        )
    except ImportError as error:  # the rule moved in another transformers release
        raise UnsupportedModelError(
            f"this transformers release has no GotOcr2 canvas rule to place tiles by ({error})"
        ) from error
    cols, rows = get_optimal_tiled_canvas((size[1], size[0]), tile, min_tiles, max_tiles)
    return CropGrid(rows, cols)


class CanvasTilesAdapter(VlmAdapter):
    """InternVL and Aya Vision: a GotOcr2 image processor cuts each image on its optimal
    canvas (thumbnail last), ``pixel_values`` is [tiles, C, S, S] for all images, and every
    image token of the prompt reads the next pixel-shuffle block. A family says only whether its
    tower has a CLS token and its shuffle factor."""

    multi_image = True
    tower_has_cls: ClassVar[bool]  # each tile's tower sequence starts with a CLS token

    @property
    def shuffle(self) -> int:
        """Patches along a side of the block one LM token packs (the pixel shuffle)."""
        raise NotImplementedError

    def packing(self, tile_pixels: int) -> TowerPacking:
        """How a ``tile_pixels`` square tile becomes LM tokens."""
        config = self.model.config
        check_one_feature_per_patch(
            self.name, config.vision_feature_select_strategy, self.tower_has_cls
        )
        return TowerPacking(
            side=tile_pixels // patch_size(config.vision_config),
            shuffle=self.shuffle,
            cls=self.tower_has_cls,
        )

    def vision_layers_feeding_lm(self) -> int:
        return feature_layer_depth(self.model.config.vision_feature_layer, self.num_vision_layers())

    def grids(self, images: Sequence[ImageInput], tiles: int) -> list[CropGrid]:
        """Each image's grid. ``tiles`` (the processor's output) tells whether it cropped at
        all: one tile per image means every image was squashed whole."""
        if tiles == len(images):
            return [CropGrid(1, 1)] * len(images)
        processor = self.processor.image_processor
        size = (int(processor.size.height), int(processor.size.width))
        grids = [
            optimal_canvas(im.size, size, processor.min_patches, processor.max_patches)
            for im in images
        ]
        if sum(g.tiles for g in grids) != tiles:
            raise UnsupportedModelError(
                f"the processor made {tiles} tiles, not the {sum(g.tiles for g in grids)} its "
                "canvas rule gives for these images; its tiling settings are not supported"
            )
        return grids

    def geometry(self, inputs: dict[str, torch.Tensor], images: Sequence[ImageInput]) -> Placement:
        pixel_values = inputs["pixel_values"]
        grids = self.grids(images, int(pixel_values.shape[0]))
        return tiled_placement(
            images,
            grids,
            self.packing(int(pixel_values.shape[-1])),
            self.image_positions(inputs["input_ids"][0]),
            int(inputs["input_ids"].shape[1]),
        )
