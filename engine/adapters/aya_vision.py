"""Aya Vision (``AyaVisionForConditionalGeneration``): SigLIP tiles, pixel shuffle, Cohere2 LM.

Tiles, thumbnail and token order are those of every canvas-tiled family
(:class:`~engine.adapters.tiled.CanvasTilesAdapter`); the ``TILE_i`` / ``TILE_GLOBAL`` markers
between tiles are text. SigLIP has no CLS token, so every vision token is a patch and vision
relevancy reads the mean row.
"""

from __future__ import annotations

from engine.adapters.base import register_adapter
from engine.adapters.tiled import CanvasTilesAdapter, TowerPacking
from engine.errors import UnsupportedModelError


@register_adapter
class AyaVisionAdapter(CanvasTilesAdapter):
    name = "aya_vision"
    model_types = ("aya_vision",)
    language_layers_path = "model.language_model.layers"

    def packing(self, tile_pixels: int) -> TowerPacking:
        config = self.model.config
        if config.vision_feature_select_strategy != "full":
            raise UnsupportedModelError(
                "Aya Vision's SigLIP tower has no CLS token: the 'default' strategy would drop "
                "a patch; only the 'full' strategy is supported"
            )
        patch = int(config.vision_config.patch_size)
        return TowerPacking(
            side=tile_pixels // patch, shuffle=int(config.downsample_factor), cls=False
        )
