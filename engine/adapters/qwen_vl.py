"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: native-resolution images, 2x2 patch merges, a vision
tower that runs its attention per image (and per window in Qwen2.5-VL).

The processor resizes each image to multiples of one merge block (``patch_size *
spatial_merge_size`` pixels: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL) without cropping or
padding, so each image is one tile whose box is the whole image. ``pixel_values`` holds one
row per patch in merge order: vision token ``k`` is patch ``(m*bh + ih, m*bw + iw)`` where ``k``
counts ``iw`` fastest, then ``ih``, ``bw``, ``bh``. The merger concatenates each run of
``m*m`` vision tokens into one LM token, so LM image token ``j`` of an image reads vision tokens
``m*m*j ... m*m*j + m*m - 1``: merge block ``j`` in raster order, equal shares.

The vision blocks split their packed sequence (every image's patches, one after another) with
``cu_seqlens`` and call the attention function once per image, batch 1. Qwen2.5-VL permutes
the sequence into windows and calls it once per window in its windowed layers (see
:class:`Qwen25VlAdapter`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from engine.adapters.base import Placement, VisionPiece, VlmAdapter, register_adapter, resolve
from engine.errors import UnsupportedModelError
from engine.geometry import GeometryBuilder
from engine.inputs import ImageInput
from store.schema import ImageGeometry


@register_adapter
class Qwen2VlAdapter(VlmAdapter):
    """Qwen2-VL; the base of the family's adapters."""

    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    vision_blocks_path = "model.visual.blocks"
    # The LM's rope positions come from mm_token_type_ids (1 = image); answers are text.
    grown_inputs: ClassVar[dict[str, int | None]] = {"mm_token_type_ids": 0}
    multi_image = True

    @property
    def _merge(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def num_vision_layers(self) -> int:
        return len(resolve(self.model, self.vision_blocks_path))

    def geometry(self, inputs: dict[str, torch.Tensor], images: Sequence[ImageInput]) -> Placement:
        """One tile per image (its whole box: no crop, no padding), patches row-major on the
        ``image_grid_thw`` grid; one vision sequence per image in merge order; each LM image
        token reads its merge block."""
        grids = inputs["image_grid_thw"].tolist()
        if len(grids) != len(images):
            raise UnsupportedModelError(
                f"{self.name}: {len(images)} images but {len(grids)} image grids"
            )
        if any(t != 1 for t, _, _ in grids):
            raise UnsupportedModelError(f"{self.name}: video inputs cannot be recorded")
        merge = self._merge
        group = merge * merge
        positions = self.image_positions(inputs["input_ids"][0])
        counts = [h * w // group for _, h, w in grids]
        if sum(counts) != len(positions):
            raise UnsupportedModelError(
                f"{self.name}: {len(positions)} image tokens for {sum(counts)} merge blocks"
            )
        builder = GeometryBuilder(images)
        index = np.full(inputs["input_ids"].shape[1], -1, np.int32)
        starts = np.cumsum([0, *counts])
        for image, ((_, h, w), source) in enumerate(zip(grids, images, strict=True)):
            tile = builder.add_tile(image, (0.0, 0.0, *map(float, source.size)), h, w)
            blocks = builder.tile_blocks(tile, merge)  # [merge block, its patches]
            builder.add_vision_sequence(blocks.reshape(-1))
            mine = positions[starts[image] : starts[image + 1]]
            builder.read_many(mine, blocks)
            index[mine] = image
        return Placement(builder.build("mean"), index)

    def vision_pieces(
        self, calls: Sequence[torch.Tensor], geometry: ImageGeometry
    ) -> list[VisionPiece]:
        """Layer by layer, one call per image (``cu_seqlens``), its tokens in sequence order."""
        layers = self.num_vision_layers()
        images = len(geometry.vision_sequences)
        if len(calls) != layers * images:
            raise UnsupportedModelError(
                f"{self.name}: expected {layers * images} vision attention calls "
                f"({layers} layers x {images} images), captured {len(calls)}"
            )
        return [
            VisionPiece(call=layer * images + image, batch=0, layer=layer, sequence=image)
            for layer in range(layers)
            for image in range(images)
        ]


def windows(rows: int, cols: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen2.5-VL's attention windows over one image's ``rows x cols`` merge blocks: windows of
    ``side x side`` blocks cut from the top left (short at the bottom and right edges), in
    raster order, each window's blocks in raster order. Returns the blocks in that order and
    each window's size in blocks."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    window = (r // side) * -(-cols // side) + c // side
    return np.argsort(window, kind="stable"), np.bincount(window)


@register_adapter
class Qwen25VlAdapter(Qwen2VlAdapter):
    """Qwen2.5-VL: window attention in every vision layer but ``fullatt_block_indexes``.

    The tower permutes each image's tokens once, merge block by merge block, into window order
    (:func:`windows`; transformers' ``window_index``), so each window is a contiguous run:
    windowed layers attend per window, full layers per image, both in the permuted order. Each
    piece names the tokens of its image's sequence (merge order, as :meth:`geometry` lays it
    out) that its rows and columns are.
    """

    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)

    def vision_pieces(
        self, calls: Sequence[torch.Tensor], geometry: ImageGeometry
    ) -> list[VisionPiece]:
        vision = self.model.config.vision_config
        merge = self._merge
        group = merge * merge
        side = vision.window_size // merge // vision.patch_size  # merge blocks a window side
        whole, windowed = [], []
        for image, tile in enumerate(geometry.tiles):
            blocks, sizes = windows(tile.rows // merge, tile.cols // merge, side)
            order = (blocks[:, None] * group + np.arange(group)).reshape(-1)
            whole.append((image, order))
            bounds = np.cumsum([0, *(sizes * group)])
            windowed += [(image, order[a:b]) for a, b in itertools.pairwise(bounds)]
        layers = [
            whole if layer in vision.fullatt_block_indexes else windowed
            for layer in range(self.num_vision_layers())
        ]
        expected = sum(len(chunks) for chunks in layers)
        if len(calls) != expected:
            raise UnsupportedModelError(
                f"{self.name}: expected {expected} vision attention calls (windows and images "
                f"over {len(layers)} layers), captured {len(calls)}"
            )
        in_call_order = [(layer, *chunk) for layer, chunks in enumerate(layers) for chunk in chunks]
        return [
            VisionPiece(call, 0, layer, image, tokens)
            for call, (layer, image, tokens) in enumerate(in_call_order)
        ]


@register_adapter
class Qwen3VlAdapter(Qwen2VlAdapter):
    """Qwen3-VL: Qwen2-VL's packing (its checkpoints' 16 px patches make 32 px merge blocks)
    and per-image vision attention.

    DeepStack: besides the last vision layer's merged features (the LM's image-token
    embeddings), the merged outputs of the layers in ``deepstack_visual_indexes`` are added to
    the hidden states of the same image positions after the first LM layers. They read the same
    merge blocks, so the token -> patch map holds for them too, and the LM's relevancy sees them
    as part of the image tokens' residual stream. What relevancy does not follow: a DeepStack
    feature passed only through the vision layers up to its index, but the vision-tower modes
    (``all``, ``llm_through_vision``) carry the image tokens' relevancy through every vision
    layer. The LM depends on every vision layer (the last one feeds the embeddings), so
    :meth:`vision_layers_feeding_lm` stays the whole tower.
    """

    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
