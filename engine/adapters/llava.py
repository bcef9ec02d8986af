"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP-style vision tower + projector + LLM."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from engine.adapters.base import Placement, VlmAdapter, register_adapter, resolve
from engine.adapters.processing import shown_part
from engine.adapters.tower import feature_layer_depth, patch_size
from engine.errors import UnsupportedModelError
from engine.geometry import GeometryBuilder
from engine.inputs import ImageInput


@register_adapter
class LlavaAdapter(VlmAdapter):
    name = "llava"
    model_types = ("llava",)
    vision_layers_path = "model.vision_tower.encoder.layers"
    # transformers < 5 nested the CLIP encoder one level deeper.
    legacy_vision_layers_path = "model.vision_tower.vision_model.encoder.layers"

    def vision_attention_modules(self) -> list[nn.Module]:
        try:
            layers = resolve(self.model, self.vision_layers_path)
        except AttributeError:
            layers = resolve(self.model, self.legacy_vision_layers_path)
        return [getattr(layer, self.attention_attr) for layer in layers]

    @property
    def _keeps_cls(self) -> bool:
        return self.model.config.vision_feature_select_strategy == "full"

    def num_vision_layers(self) -> int:
        return len(self.vision_attention_modules())

    def vision_layers_feeding_lm(self) -> int:
        return feature_layer_depth(self.model.config.vision_feature_layer, self.num_vision_layers())

    def geometry(self, inputs: dict[str, torch.Tensor], images: Sequence[ImageInput]) -> Placement:
        """One tile: the part of the image the processed square shows (after its resize and
        centre crop); image token i reads patch i (i - 1 when the CLS feature is kept, which
        then reads no pixels)."""
        patch = patch_size(self.model.config.vision_config)
        rows, cols = (int(side) // patch for side in inputs["pixel_values"].shape[-2:])
        width, height = images[0].size
        box = shown_part(self.processor.image_processor, height, width)
        builder = GeometryBuilder(images)
        tile = builder.add_tile(0, box, rows, cols)
        positions = self.image_positions(inputs["input_ids"][0])
        patches = np.arange(len(positions)) - int(self._keeps_cls)
        if patches.max(initial=-1) >= rows * cols:
            raise UnsupportedModelError(
                f"{len(positions)} image tokens do not fit a {rows}x{cols} patch grid; this "
                "LLaVA variant needs its own adapter"
            )
        feature = patches >= 0
        rows_cols = np.divmod(patches[feature], cols)
        builder.read_many(positions[feature], builder.patch(tile, *rows_cols)[:, None])
        builder.add_vision_sequence(np.concatenate([[-1], builder.tile_patches(tile)]))
        index = np.full(inputs["input_ids"].shape[1], -1, np.int32)
        index[positions] = 0
        return Placement(builder.build("cls"), index)
