"""InternVL (``InternVLForConditionalGeneration``): InternViT tiles, 2x2 pixel shuffle, Qwen2 LM.

Tiles, thumbnail and token order are those of every canvas-tiled family
(:class:`~engine.adapters.tiled.CanvasTilesAdapter`). InternViT puts a CLS token first in
each tile's sequence and attends over it; the LM features drop it ("default" strategy), so
vision relevancy reads the CLS row, as for LLaVA-1.5's CLIP.
"""

from __future__ import annotations

from engine.adapters.base import register_adapter
from engine.adapters.tiled import CanvasTilesAdapter


@register_adapter
class InternVLAdapter(CanvasTilesAdapter):
    name = "internvl"
    model_types = ("internvl",)
    tower_has_cls = True

    @property
    def shuffle(self) -> int:
        """The config gives the shuffle as the ratio of sides it keeps (0.5: 2x2 blocks)."""
        return round(1 / self.model.config.downsample_ratio)
