"""Families whose SigLIP tower sees square "views": an image (or a crop of it) squashed to the
tower's square, one tower sequence per view, the LM reading k x k pooled blocks of its patches.

Gemma 3 (4x4 average pooling, pan & scan crops) and PaliGemma (k = 1, one view per image) share
this geometry; each family says which views an image becomes (:meth:`SquareViewsAdapter.views`)
and how many patches one LM token pools (:attr:`SquareViewsAdapter.pool`).

SigLIP has no CLS token, so vision relevancy reads the mean row ("mean" summary), and every
vision layer feeds the LM (the projector reads ``last_hidden_state``). The tower runs all views
as one batch, so the default :meth:`~engine.adapters.base.VlmAdapter.vision_pieces` (one call
per layer, batch row b = view b) is right as long as views are added in ``pixel_values`` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.adapters.base import Placement, VlmAdapter
from engine.adapters.tower import patches_per_side
from engine.errors import UnsupportedModelError
from engine.geometry import Box, GeometryBuilder
from engine.inputs import ImageInput


@dataclass(frozen=True)
class View:
    """One square the tower saw: which image, the part of it (original pixels), its kind."""

    image: int
    box: Box
    kind: str = "full"  # a store.schema.Tile kind: "full", "global" or "crop"


def whole(image: int, size: tuple[int, int], kind: str = "full") -> View:
    """The whole image of ``size`` (width, height), squashed to the square."""
    return View(image, (0.0, 0.0, float(size[0]), float(size[1])), kind)


class SquareViewsAdapter(VlmAdapter):
    """Geometry of square SigLIP views; subclasses set :attr:`pool` and :meth:`views`."""

    def views(self, images: Sequence[ImageInput]) -> list[View]:
        """The views of ``images`` in ``pixel_values`` order."""
        raise NotImplementedError

    @property
    def pool(self) -> int:
        """Patches per side of the block one LM token reads (1: one token per patch)."""
        raise NotImplementedError

    @property
    def patches_per_side(self) -> int:
        return patches_per_side(self.model.config.vision_config)

    def _check_squash(self, pixel_values) -> None:
        """Boxes assume each view was resized whole to the tower's square (no crop, no pad)."""
        processor = self.processor.image_processor
        size = self.model.config.vision_config.image_size
        squashes = (
            getattr(processor, "do_resize", False)
            and not getattr(processor, "do_center_crop", False)
            and not getattr(processor, "do_pad", False)
            and processor.size.height == processor.size.width == size
        )
        if not squashes or tuple(pixel_values.shape[-2:]) != (size, size):
            raise UnsupportedModelError(
                f"{self.name}: the processor does not resize each image whole to the tower's "
                f"{size}x{size} square (size {processor.size}, pixel_values "
                f"{tuple(pixel_values.shape)}); this adapter cannot place its patches"
            )

    def geometry(self, inputs: dict[str, torch.Tensor], images: Sequence[ImageInput]) -> Placement:
        """One tile per view; view v's image tokens are the v-th run of ``(side / pool)^2``
        image positions, each reading its ``pool x pool`` block in raster order."""
        pixel_values = inputs["pixel_values"]
        self._check_squash(pixel_values)
        views = self.views(images)
        side, pool = self.patches_per_side, self.pool
        per_view = (side // pool) ** 2
        positions = self.image_positions(inputs["input_ids"][0])
        if len(views) != pixel_values.shape[0] or len(positions) != len(views) * per_view:
            raise UnsupportedModelError(
                f"{self.name}: {len(images)} image(s) make {len(views)} view(s) of {per_view} "
                f"tokens here, but the inputs hold {pixel_values.shape[0]} view(s) and "
                f"{len(positions)} image tokens (inputs built with other processor options?)"
            )
        builder = GeometryBuilder(images)
        index = np.full(inputs["input_ids"].shape[1], -1, np.int32)
        for v, view in enumerate(views):
            tile = builder.add_tile(view.image, view.box, side, side, view.kind)
            mine = positions[v * per_view : (v + 1) * per_view]
            builder.read_many(mine, builder.tile_blocks(tile, pool))  # pooling: equal shares
            builder.add_vision_sequence(builder.tile_patches(tile))
            index[mine] = view.image
        return Placement(builder.build("mean"), index)
