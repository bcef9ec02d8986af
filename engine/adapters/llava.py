"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP-style vision tower + projector + LLM."""

from __future__ import annotations

import numpy as np

from engine.adapters.base import Placement, VlmAdapter, register_adapter, resolve
from engine.errors import UnsupportedModelError
from engine.geometry import GeometryBuilder


def _crop_geometry(
    image_processor, original_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Scales and crop offsets of a resize (shortest edge or fixed size) + centre-crop processor.

    Returns ``(scale_x, scale_y, offset_x, offset_y)`` such that processed-image pixel
    ``(x, y)`` came from original pixel ``((x + offset_x) / scale_x, (y + offset_y) / scale_y)``.
    """
    width, height = original_size
    size = image_processor.size
    scale_x = scale_y = 1.0
    if getattr(image_processor, "do_resize", False):
        if size.shortest_edge:
            scale_x = scale_y = size.shortest_edge / min(width, height)
        elif size.height and size.width:
            scale_x, scale_y = size.width / width, size.height / height
    offset_x = offset_y = 0.0
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop and crop.height:
        offset_x = (width * scale_x - crop.width) / 2
        offset_y = (height * scale_y - crop.height) / 2
    return scale_x, scale_y, offset_x, offset_y


@register_adapter
class LlavaAdapter(VlmAdapter):
    name = "llava"
    model_types = ("llava",)
    language_layers_path = "model.language_model.layers"
    vision_layers_path = "model.vision_tower.encoder.layers"
    # transformers < 5 nested the CLIP encoder one level deeper.
    legacy_vision_layers_path = "model.vision_tower.vision_model.encoder.layers"

    def vision_attention_modules(self):
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
        total = self.num_vision_layers()
        feature_layer = self.model.config.vision_feature_layer
        deepest = max(feature_layer) if isinstance(feature_layer, list) else feature_layer
        # hidden_states has total + 1 entries (embeddings first): index -1 is the last layer.
        return deepest + 1 + total if deepest < 0 else deepest

    def geometry(self, inputs, images) -> Placement:
        """One tile: the processed image; image token i reads patch i (i - 1 when the CLS
        feature is kept, which then reads no pixels)."""
        pixel_values = inputs["pixel_values"]
        patch = int(self.model.config.vision_config.patch_size)
        height, width = pixel_values.shape[-2:]
        rows, cols = height // patch, width // patch
        scale_x, scale_y, offset_x, offset_y = _crop_geometry(
            self.processor.image_processor, images[0].size
        )
        box = (
            offset_x / scale_x,
            offset_y / scale_y,
            (width + offset_x) / scale_x,
            (height + offset_y) / scale_y,
        )
        builder = GeometryBuilder(images)
        tile = builder.add_tile(0, box, rows, cols)
        positions = self.image_positions(inputs["input_ids"][0])
        patches = np.arange(len(positions)) - int(self._keeps_cls)
        if patches.max(initial=-1) >= rows * cols:
            raise UnsupportedModelError(
                f"{len(positions)} image tokens do not fit a {rows}x{cols} patch grid; this "
                "LLaVA variant needs its own adapter"
            )
        for position, p in zip(positions, patches, strict=True):
            if p >= 0:
                builder.read(position, [builder.patch(tile, *divmod(int(p), cols))])
        builder.add_vision_sequence(np.concatenate([[-1], builder.tile_patches(tile)]))
        index = np.full(inputs["input_ids"].shape[1], -1, np.int32)
        index[positions] = 0
        return Placement(builder.build("cls"), index)
