"""Aya Vision (``AyaVisionForConditionalGeneration``): SigLIP tiles, pixel shuffle, Cohere2 LM.

Tiles, thumbnail and token order are those of every canvas-tiled family
(:class:`~engine.adapters.tiled.CanvasTilesAdapter`); the ``TILE_i`` / ``TILE_GLOBAL`` markers
between tiles are text. SigLIP has no CLS token, so every vision token is a patch and vision
relevancy reads the mean row.
"""

from __future__ import annotations

from engine.adapters.base import register_adapter
from engine.adapters.tiled import CanvasTilesAdapter


@register_adapter
class AyaVisionAdapter(CanvasTilesAdapter):
    name = "aya_vision"
    model_types = ("aya_vision",)
    tower_has_cls = False

    @property
    def shuffle(self) -> int:
        return int(self.model.config.downsample_factor)
