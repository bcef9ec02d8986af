"""InternVL (``InternVLForConditionalGeneration``): InternViT tiles, 2x2 pixel shuffle, Qwen2 LM.

Tiles, thumbnail and token order are those of every canvas-tiled family
(:class:`~engine.adapters.tiled.CanvasTilesAdapter`). InternViT puts a CLS token first in
each tile's sequence and attends over it; the LM features drop it ("default" strategy), so
vision relevancy reads the CLS row, as for LLaVA-1.5's CLIP.
"""

from __future__ import annotations

from engine.adapters.base import register_adapter
from engine.adapters.tiled import CanvasTilesAdapter, TowerPacking
from engine.errors import UnsupportedModelError


@register_adapter
class InternVLAdapter(CanvasTilesAdapter):
    name = "internvl"
    model_types = ("internvl",)
    language_layers_path = "model.language_model.layers"

    def packing(self, tile_pixels: int) -> TowerPacking:
        config = self.model.config
        if config.vision_feature_select_strategy != "default":
            raise UnsupportedModelError(
                "InternVL keeping the CLS feature ('full' strategy) cannot pixel-shuffle a "
                "square grid; only the 'default' strategy is supported"
            )
        patch = config.vision_config.patch_size
        patch = patch[0] if isinstance(patch, list | tuple) else patch
        return TowerPacking(
            side=tile_pixels // int(patch), shuffle=round(1 / config.downsample_ratio), cls=True
        )
