"""Mllama (Llama 3.2 Vision, ``MllamaForConditionalGeneration``): the image reaches the LM only
through cross-attention.

The prompt holds one ``<|image|>`` marker per image, an ordinary text token that reads no
pixels; no image feature ever enters the self-attention sequence, so the token -> patch map is
empty and the map that matters is over the cross-attention *keys*. Those keys are, image by
image, ``max_image_tiles`` tile slots of ``1 + G²`` vision states each (CLS, then the G x G
patches row by row); slots past the image's tile count are zero-pixel padding tiles that the
cross-attention mask hides from every token.

Tiles: the processor picks the tile arrangement (rows x cols of ``S``-pixel tiles, the
"optimal tiled canvas"), resizes the image keeping its aspect ratio (never past the canvas, and
not at all where it already fits) into the canvas' top-left corner and pads bottom/right with
zeros; tiles are the canvas cells, row-major. Boxes of tiles that reach into the padding
extend past the image.

The vision tower (a "local" encoder, then a gated "global" encoder) attends over all tile
slots of an image at once in *both* encoders (each slot padded to a multiple of 8 tokens), so
there is one vision sequence per image: ``max_image_tiles x padded`` tokens, and every captured
vision attention call is one layer with one batch row per image, which is the base class's
default reading of the calls. Its summary row is the mean ("mean"): every tile has its own
CLS, and the LM reads all of them, so no single CLS stands for the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from transformers.models.mllama.image_processing_pil_mllama import (
    get_all_supported_aspect_ratios,
    get_image_size_fit_to_canvas,
)

from engine.adapters.base import Placement, VlmAdapter, register_adapter, resolve
from engine.adapters.tower import patches_per_side
from engine.errors import UnsupportedModelError
from engine.geometry import GeometryBuilder, resized_box
from engine.inputs import ImageInput

PAD_MULTIPLE = 8  # the vision tower pads each tile's tokens to a multiple of this


@register_adapter
class MllamaAdapter(VlmAdapter):
    name = "mllama"
    model_types = ("mllama",)
    # Generation repeats the last row of the mask for each new token (the answer reads every
    # image the last prompt token reads).
    grown_inputs: ClassVar[dict[str, int | None]] = {"cross_attention_mask": None}
    multi_image = True

    # -- the model's layout -------------------------------------------------------------------
    @property
    def cross_layers(self) -> list[int]:
        return list(self.model.config.text_config.cross_attention_layers)

    def language_attention_modules(self) -> list[nn.Module]:
        """Self-attention of the LM layers that have it (cross-attention layers have none), in
        layer order: LM attention index i is LM layer ``self_layers[i]``."""
        layers = resolve(self.model, self.language_layers_path)
        return [layers[i].self_attn for i in self.self_layers]

    @property
    def self_layers(self) -> list[int]:
        count, cross = len(resolve(self.model, self.language_layers_path)), set(self.cross_layers)
        return [i for i in range(count) if i not in cross]

    def cross_attention_modules(self) -> list[tuple[int, nn.Module]]:
        layers = resolve(self.model, self.language_layers_path)
        return [(i, layers[i].cross_attn) for i in self.cross_layers]

    def num_vision_layers(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.num_hidden_layers) + int(vision.num_global_layers)

    def image_positions(self, input_ids: torch.Tensor) -> np.ndarray:
        """No position holds an image feature: the ``<|image|>`` marker is a text token (its
        own embedding; the image enters through cross-attention only)."""
        return np.zeros(0, dtype=np.int64)

    # -- geometry -----------------------------------------------------------------------------
    @property
    def _tile_size(self) -> int:
        return int(self.processor.image_processor.size["height"])

    @property
    def patches_per_side(self) -> int:
        """Patches along a tile's side."""
        return patches_per_side(self.model.config.vision_config)

    @property
    def _max_tiles(self) -> int:
        return int(self.model.config.vision_config.max_num_tiles)

    @property
    def tile_tokens(self) -> int:
        """Vision states per tile that the LM reads as keys: CLS + G² patches."""
        return 1 + self.patches_per_side**2

    @property
    def padded_tile_tokens(self) -> int:
        """Tokens per tile slot inside the vision tower (padded to a multiple of 8)."""
        return -(-self.tile_tokens // PAD_MULTIPLE) * PAD_MULTIPLE

    def tile_arrangements(self, inputs: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
        """(rows, cols) of tiles of each image, from the processor's ``aspect_ratio_ids``."""
        supported = get_all_supported_aspect_ratios(self._max_tiles)
        return [supported[int(i) - 1] for i in inputs["aspect_ratio_ids"][0].tolist()]

    def geometry(self, inputs: dict[str, torch.Tensor], images: Sequence[ImageInput]) -> Placement:
        """Real tiles of each image (padding tile slots are left out: no token reads them), key
        row -> patch for every tile's patch states (CLS rows read none), one vision sequence per
        image over all its tile slots."""
        size, grid, slots = self._tile_size, self.patches_per_side, self._max_tiles
        if size != int(self.model.config.vision_config.image_size):
            raise UnsupportedModelError(
                f"{self.name}: the processor's {size} px tiles are not the vision tower's "
                f"{self.model.config.vision_config.image_size} px"
            )
        builder = GeometryBuilder(images)
        for image, ((rows, cols), source) in enumerate(
            zip(self.tile_arrangements(inputs), images, strict=True)
        ):
            width, height = source.size
            new_height, new_width = get_image_size_fit_to_canvas(
                height, width, rows * size, cols * size, size
            )
            placed = (0.0, 0.0, float(new_width), float(new_height))
            kind = "full" if rows * cols == 1 else "crop"
            sequence = np.full(slots * self.padded_tile_tokens, -1, np.int32)
            for slot in range(rows * cols):
                r, c = divmod(slot, cols)
                cell = (c * size, r * size, (c + 1) * size, (r + 1) * size)
                tile = builder.add_tile(
                    image, resized_box(source.size, placed, cell), grid, grid, kind
                )
                patches = builder.tile_patches(tile)
                cls_key = (image * slots + slot) * self.tile_tokens
                builder.read_keys(cls_key + 1 + np.arange(len(patches)), patches[:, None])
                cls_token = slot * self.padded_tile_tokens
                sequence[cls_token + 1 : cls_token + 1 + len(patches)] = patches
            builder.add_vision_sequence(sequence)
        return Placement(builder.build("mean"), np.full(inputs["input_ids"].shape[1], -1, np.int32))

    def key_vision_tokens(self, num_images: int) -> np.ndarray:
        """[K] int64: for each cross-attention key row, its token in the vision sequences laid
        end to end (sequence ``s`` token ``v`` is ``s * V + v``). Relevancy carries the keys
        through the vision tower with it; CLS keys included, which the patch map cannot say."""
        slots = np.arange(num_images * self._max_tiles)[:, None]
        return (slots * self.padded_tile_tokens + np.arange(self.tile_tokens)[None]).reshape(-1)
