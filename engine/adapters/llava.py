"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP-style vision tower + projector + LLM."""

from __future__ import annotations

import numpy as np
import torch

from engine.adapters.base import ImageLayout, VlmAdapter, register_adapter, resolve


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
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def _keeps_cls(self) -> bool:
        return self.model.config.vision_feature_select_strategy == "full"

    def vision_layers_feeding_lm(self) -> int:
        total = len(self.vision_attention_modules())
        feature_layer = self.model.config.vision_feature_layer
        deepest = max(feature_layer) if isinstance(feature_layer, list) else feature_layer
        # hidden_states has total + 1 entries (embeddings first): index -1 is the last layer.
        return deepest + 1 + total if deepest < 0 else deepest

    def image_layout(
        self, pixel_values: torch.Tensor, original_size: tuple[int, int]
    ) -> ImageLayout:
        patch = int(self.model.config.vision_config.patch_size)
        height, width = pixel_values.shape[-2:]
        rows, cols = height // patch, width // patch
        scale_x, scale_y, offset_x, offset_y = _crop_geometry(
            self.processor.image_processor, original_size
        )
        r, c = np.divmod(np.arange(rows * cols), cols)
        boxes = np.stack(
            [
                (c * patch + offset_x) / scale_x,
                (r * patch + offset_y) / scale_y,
                ((c + 1) * patch + offset_x) / scale_x,
                ((r + 1) * patch + offset_y) / scale_y,
            ],
            axis=1,
        ).astype(np.float32)
        return ImageLayout(rows, cols, patch, vision_has_cls=True, patch_boxes=boxes)

    def image_token_patches(self, num_image_tokens: int, layout: ImageLayout) -> np.ndarray:
        """Patch index (row-major) of each LM image token; -1 for a CLS token kept as a feature."""
        patches = np.arange(num_image_tokens, dtype=np.int32)
        if self._keeps_cls:
            patches -= 1
        if patches.max(initial=-1) >= layout.grid_rows * layout.grid_cols:
            raise ValueError(
                f"{num_image_tokens} image tokens do not fit a {layout.grid_rows}x"
                f"{layout.grid_cols} patch grid; this LLaVA variant needs its own adapter"
            )
        return patches
