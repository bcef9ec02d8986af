"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's anyres tiles
with a SigLIP tower (no CLS: every token is a patch, vision relevancy reads the mean row).

Two differences from NeXT. Above ``anyres_max_N`` (more than N x G^2 unpadded features, by a
factor over 1.1) the high-resolution grid is shrunk bilinearly, so one token mixes up to four
patches with the interpolation's coefficients: a weighted many-to-one map. And an image of a
multi-image group (``batch_num_images`` > 1) is not tiled: it is padded to a square with the
mean colour and squashed into one tile, read by G^2 tokens and one newline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from engine.adapters.base import register_adapter
from engine.adapters.llava_next import LlavaNextAdapter, Reads, shown_part, whole_patch
from engine.geometry import GeometryBuilder
from engine.inputs import ImageInput


def bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in]: source weights of each output of a 1-D bilinear resize as
    ``torch.nn.functional.interpolate`` computes it (align_corners=False, size given)."""
    scale = size_in / size_out
    weights = np.zeros((size_out, size_in))
    for out in range(size_out):
        source = max((out + 0.5) * scale - 0.5, 0.0)
        low = min(int(source), size_in - 1)
        high = min(low + 1, size_in - 1)
        weights[out, low] += 1 - (source - low)
        weights[out, high] += source - low
    return weights


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    name = "llava_onevision"
    model_types = ("llava_onevision",)

    def processor_images(self, images: Sequence[ImageInput]) -> list:
        """Several images go to the processor as one group, as the checkpoints were trained on
        them: one padded square tile each (one image alone is tiled)."""
        flat = super().processor_images(images)
        return [flat] if len(flat) > 1 else flat

    def _image_reads(
        self, builder: GeometryBuilder, inputs: dict, image: int, size: tuple[int, int]
    ) -> list[Reads]:
        """Anyres tiles for an image alone in its group (the model's ``need_patching``),
        one padded square tile for an image of a multi-image group."""
        groups = inputs.get("batch_num_images")  # absent: every image alone (the model's default)
        alone = groups is None or [n == 1 for n in groups.tolist() for _ in range(n)][image]
        if alone:
            return self._anyres_image(builder, image, size)
        return self._square_image(builder, image, size)

    def _square_image(
        self, builder: GeometryBuilder, image: int, size: tuple[int, int]
    ) -> list[Reads]:
        """``pad_to_square`` (centred, the odd pixel last), then the per-tile resize."""
        width, height = size
        side = max(width, height)
        x0, y0 = -((side - width) // 2), -((side - height) // 2)
        part = shown_part(self.processor.image_processor, side, side)
        box = (x0 + part[0], y0 + part[1], x0 + part[2], y0 + part[3])
        tile = self._tile(builder, image, box, "full")
        return [whole_patch(p) for p in builder.tile_patches(tile)] + [None]

    def _high_resolution(self, grid: np.ndarray) -> list[list[Reads]]:
        """Bilinearly shrunk to fit ``anyres_max_N`` x G^2 features when over it by 1.1x:
        each token reads the (up to) 2x2 patches around its source point, by its weights."""
        rows, cols = grid.shape
        limit = int(self.model.config.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (limit * self._grid**2))
        if ratio <= 1.1:
            return super()._high_resolution(grid)
        along_y = bilinear_weights(rows, int(rows // ratio))
        along_x = bilinear_weights(cols, int(cols // ratio))
        out = []
        for wy in along_y:
            line = []
            for wx in along_x:
                weights = np.outer(wy, wx)
                kept = weights > 0
                line.append((grid[kept], weights[kept]))
            out.append(line)
        return out
