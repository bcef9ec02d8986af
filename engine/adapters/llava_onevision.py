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
from engine.adapters.llava_next import LlavaNextAdapter, TokenReads
from engine.adapters.processing import shown_part
from engine.geometry import GeometryBuilder
from engine.inputs import ImageInput

SHRINK_ABOVE = 1.1  # pack_image_features shrinks a grid over the feature limit by this factor


def bilinear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The two source samples ([size_out, 2] indices, ascending, and weights) of each output
    of a 1-D bilinear resize as ``torch.nn.functional.interpolate`` computes it
    (align_corners=False, size given). At the last source sample both taps fall on it: one
    tap then carries the whole weight and the other none."""
    scale = size_in / size_out
    source = np.maximum((np.arange(size_out) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(source.astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = np.where(high > low, source - low, 0.0)
    return np.stack([low, high], 1), np.stack([1 - frac, frac], 1)


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
    ) -> TokenReads:
        """Anyres tiles for an image alone in its group (the model's ``need_patching``),
        one padded square tile for an image of a multi-image group."""
        groups = inputs.get("batch_num_images")  # absent: every image alone (the model's default)
        alone = groups is None or [n == 1 for n in groups.tolist() for _ in range(n)][image]
        if alone:
            return self._anyres_image(builder, image, size)
        return self._square_image(builder, image, size)

    def _square_image(
        self, builder: GeometryBuilder, image: int, size: tuple[int, int]
    ) -> TokenReads:
        """``pad_to_square`` (centred, the odd pixel last), then the per-tile resize."""
        width, height = size
        side = max(width, height)
        x0, y0 = -((side - width) // 2), -((side - height) // 2)
        part = shown_part(self.processor.image_processor, side, side)
        box = (x0 + part[0], y0 + part[1], x0 + part[2], y0 + part[3])
        tile = self._tile(builder, image, box, "full")
        newline = TokenReads(np.zeros((1, 1), np.int64), np.zeros((1, 1)))
        return TokenReads.joined([TokenReads.one_patch_each(builder.tile_patches(tile)), newline])

    def _high_resolution(self, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bilinearly shrunk to fit ``anyres_max_N`` x G^2 features when over it by more than
        :data:`SHRINK_ABOVE`: each token reads the (up to) 2x2 patches around its source
        point, by its weights."""
        rows, cols = grid.shape
        limit = int(self.model.config.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (limit * self.patches_per_side**2))
        if ratio <= SHRINK_ABOVE:
            return super()._high_resolution(grid)
        ys, wy = bilinear_taps(rows, int(rows // ratio))
        xs, wx = bilinear_taps(cols, int(cols // ratio))
        # [out rows, out cols, 2 x 2 taps], taps row-major (y tap, then x tap)
        patches = grid[ys[:, None, :, None], xs[None, :, None, :]]
        weights = wy[:, None, :, None] * wx[None, :, None, :]
        out_rows, out_cols = len(ys), len(xs)
        return patches.reshape(out_rows, out_cols, 4), weights.reshape(out_rows, out_cols, 4)
