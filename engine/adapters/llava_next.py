"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): "anyres" tiles of one CLIP tower.

Each image becomes tile 0, the whole image squashed to the tower's square, then the crops of
the ``select_best_resolution`` canvas (the image resized keeping its aspect ratio and centred
on zero padding), row-major. The LM reads the base tile's features in raster order, then the
crops' features stitched into one high-resolution grid, with the padding rows (or columns)
cut off ("unpadded"), row by row, each row ended by a newline token that reads no pixels.
Every number here is recomputed from the processor's settings and ``image_sizes`` with the
same integer arithmetic the processor and ``pack_image_features`` use, so the map is exact
(tests/engine/families/test_llava_next.py checks it against the model's own gradients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.image_processing_utils import select_best_resolution

from engine.adapters.base import Placement, register_adapter
from engine.adapters.llava import LlavaAdapter
from engine.adapters.processing import crop_side, shown_part
from engine.adapters.tower import check_one_feature_per_patch, patches_per_side
from engine.errors import UnsupportedModelError
from engine.geometry import Box, GeometryBuilder, resized_box
from engine.inputs import ImageInput


@dataclass(frozen=True)
class TokenReads:
    """What a run of consecutive image tokens reads: token ``i`` reads the patches
    ``patches[i]`` by ``weights[i]`` ([n, m] each, as :meth:`GeometryBuilder.read_many` takes
    them); a row of zero weights reads nothing (a newline token)."""

    patches: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.patches)

    @classmethod
    def one_patch_each(cls, patches: np.ndarray) -> TokenReads:
        """Tokens that are each one patch's feature, unmixed (``patches`` in token order)."""
        column = np.asarray(patches).reshape(-1, 1)
        return cls(column, np.ones(column.shape))

    @classmethod
    def rows_with_newlines(cls, patches: np.ndarray, weights: np.ndarray) -> TokenReads:
        """A grid of tokens (``[rows, cols, m]`` each) read row by row, a newline token (zero
        weights) after each row."""
        rows, _, m = patches.shape
        return cls(
            np.concatenate([patches, np.zeros((rows, 1, m), patches.dtype)], 1).reshape(-1, m),
            np.concatenate([weights, np.zeros((rows, 1, m))], 1).reshape(-1, m),
        )

    @classmethod
    def joined(cls, runs: Sequence[TokenReads]) -> TokenReads:
        """``runs`` one after another, rows padded with zero weights to the widest run's m."""
        m = max(run.patches.shape[1] for run in runs)

        def padded(array: np.ndarray) -> np.ndarray:
            return np.pad(array, ((0, 0), (0, m - array.shape[1])))

        return cls(
            np.concatenate([padded(run.patches) for run in runs]),
            np.concatenate([padded(run.weights) for run in runs]),
        )


@dataclass(frozen=True)
class Canvas:
    """Where one image sits on its anyres canvas (pixels of the canvas)."""

    height: int
    width: int
    placed: Box  # the resized image's box on the canvas; the rest is zero padding

    @classmethod
    def for_image(cls, size: tuple[int, int], pinpoints: list) -> Canvas:
        """The processor's canvas for an image of ``size`` (width, height): the best pinpoint
        resolution, the image resized into it keeping its aspect ratio (sides rounded up, as
        ``get_patch_output_size`` does) and centred (the extra pixel of odd padding last)."""
        width, height = size
        canvas_h, canvas_w = select_best_resolution((height, width), pinpoints)
        if canvas_w / width < canvas_h / height:
            new_w, new_h = canvas_w, min(math.ceil(height * canvas_w / width), canvas_h)
        else:
            new_h, new_w = canvas_h, min(math.ceil(width * canvas_h / height), canvas_w)
        x0, y0 = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
        return cls(canvas_h, canvas_w, (x0, y0, x0 + new_w, y0 + new_h))


def unpadded(rows: int, cols: int, size: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of a ``rows x cols`` feature grid that ``unpad_image`` keeps for
    an image of ``size`` (width, height): its own rounding, on the feature grid."""
    width, height = size
    if width / height > cols / rows:
        kept = int(round(height * (cols / width), 7))
        pad = (rows - kept) // 2
        return slice(pad, rows - pad), slice(0, cols)
    kept = int(round(width * (rows / height), 7))
    pad = (cols - kept) // 2
    return slice(0, rows), slice(pad, cols - pad)


@register_adapter
class LlavaNextAdapter(LlavaAdapter):
    name = "llava_next"
    model_types = ("llava_next",)
    multi_image = True

    # -- the vision tower ---------------------------------------------------------------------
    @property
    def tower_has_cls(self) -> bool:
        """CLIP (LLaVA-NeXT) has a CLS token, SigLIP (OneVision) none; read from the tower."""
        tower = self.model.model.vision_tower
        embeddings = getattr(tower, "embeddings", None) or tower.vision_model.embeddings
        return hasattr(embeddings, "class_embedding")

    @property
    def patches_per_side(self) -> int:
        """Patches along a tile's side (every tile is the tower's square)."""
        return patches_per_side(self.model.config.vision_config)

    # -- the geometry -------------------------------------------------------------------------
    def geometry(self, inputs: dict[str, torch.Tensor], images: Sequence[ImageInput]) -> Placement:
        """Base tile then crops per image; the image tokens of image i follow those of i - 1."""
        config = self.model.config
        check_one_feature_per_patch(
            self.name, config.vision_feature_select_strategy, self.tower_has_cls
        )
        sizes = [(int(w), int(h)) for h, w in inputs["image_sizes"].tolist()]
        if sizes != [im.size for im in images]:
            raise UnsupportedModelError(
                f"{self.name}: the processor's image_sizes {sizes} are not the images' sizes"
            )
        builder = GeometryBuilder(images)
        positions = self.image_positions(inputs["input_ids"][0])
        index = np.full(inputs["input_ids"].shape[1], -1, np.int32)
        start = 0
        for image, size in enumerate(sizes):
            reads = self._image_reads(builder, inputs, image, size)
            mine = positions[start : start + len(reads)]
            if len(mine) < len(reads):
                break
            builder.read_many(mine, reads.patches, reads.weights)
            index[mine] = image
            start += len(reads)
        if start != len(positions) or index[positions].min(initial=0) < 0:
            raise UnsupportedModelError(
                f"{self.name}: the prompt has {len(positions)} image tokens, not the number "
                "the images' anyres layout gives; this checkpoint needs its own adapter"
            )
        return Placement(builder.build("cls" if self.tower_has_cls else "mean"), index)

    def _image_reads(
        self, builder: GeometryBuilder, inputs: dict, image: int, size: tuple[int, int]
    ) -> TokenReads:
        """Adds the tiles of ``image``; returns its tokens' reads in sequence order."""
        return self._anyres_image(builder, image, size)

    def _tile(self, builder: GeometryBuilder, image: int, box: Box, kind: str) -> int:
        """A G x G tile and its vision sequence ([CLS, patches] or [patches])."""
        tile = builder.add_tile(image, box, self.patches_per_side, self.patches_per_side, kind)
        cls = [-1] if self.tower_has_cls else []
        builder.add_vision_sequence(np.concatenate([cls, builder.tile_patches(tile)]))
        return tile

    def _anyres_image(
        self, builder: GeometryBuilder, image: int, size: tuple[int, int]
    ) -> TokenReads:
        """Tile 0 (the squashed image), then the canvas crops; the base tokens, then the
        unpadded high-resolution grid row by row, a newline after each row."""
        processor = self.processor.image_processor
        squash = processor.size
        side_h = squash.height or squash.shortest_edge
        side_w = squash.width or squash.shortest_edge
        whole = _scaled(shown_part(processor, side_h, side_w), (side_w, side_h), size)
        base = self._tile(builder, image, whole, "full")
        canvas = Canvas.for_image(size, self.model.config.image_grid_pinpoints)
        crop = crop_side(processor)
        view = shown_part(processor, crop, crop)
        tiles_y, tiles_x = canvas.height // crop, canvas.width // crop
        crops = [
            self._tile(
                builder, image, resized_box(size, canvas.placed, _shifted(view, x, y)), "crop"
            )
            for y in range(0, tiles_y * crop, crop)
            for x in range(0, tiles_x * crop, crop)
        ]
        g = self.patches_per_side
        rows, cols = np.mgrid[0 : tiles_y * g, 0 : tiles_x * g]
        first = np.array([builder.tile_patches(t)[0] for t in crops])
        grid = first[(rows // g) * tiles_x + cols // g] + (rows % g) * g + cols % g
        keep_rows, keep_cols = unpadded(tiles_y * g, tiles_x * g, size)
        high = TokenReads.rows_with_newlines(*self._high_resolution(grid[keep_rows, keep_cols]))
        return TokenReads.joined([TokenReads.one_patch_each(builder.tile_patches(base)), high])

    def _high_resolution(self, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The patches and weights ([rows, cols, m] each) of the tokens of the unpadded
        high-resolution patch grid: one patch each."""
        return grid[..., None], np.ones((*grid.shape, 1))


def _shifted(box: Box, dx: float, dy: float) -> Box:
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


def _scaled(box: Box, size_in: tuple[int, int], size_out: tuple[int, int]) -> Box:
    """``box`` in an input of ``size_in`` (width, height) squashed from one of ``size_out``,
    in the pixels of the latter."""
    sx, sy = size_out[0] / size_in[0], size_out[1] / size_in[1]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
