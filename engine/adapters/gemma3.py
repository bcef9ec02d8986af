"""Gemma 3 (``Gemma3ForConditionalGeneration``): a SigLIP tower whose patch grid (64 x 64 at
896 px) is average-pooled k x k into ``mm_tokens_per_image`` LM tokens (256: k = 4).

Each image is squashed whole to the tower's square. With pan & scan the processor also cuts a
wide (tall) image into 2-4 strips side by side (one above another), squashes each strip to the
same square and writes it as one more image after the whole one: ``pixel_values`` holds, per
image, the whole image then its crops, and the prompt one block of image tokens per view. The
LM's image tokens attend both ways within their block ("image blocks" mask); answer positions
get ``token_type_ids`` 0 (text).

Pan & scan is off unless the adapter is given :class:`PanAndScan` settings: Gemma 3's processor
takes them per call (its class defaults override the checkpoint's image processor config), so
the adapter, which makes that call, is the one place that knows where the crops are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import nn

from engine.adapters.base import register_adapter
from engine.adapters.square_views import SquareViewsAdapter, View, whole
from engine.geometry import Box
from engine.inputs import ImageInput


@dataclass(frozen=True)
class PanAndScan:
    """Gemma 3's pan & scan settings; the defaults are its processor's."""

    min_crop_size: int = 256
    max_num_crops: int = 4
    min_ratio_to_activate: float = 1.2

    def processor_options(self) -> dict:
        return {
            "do_pan_and_scan": True,
            "pan_and_scan_min_crop_size": self.min_crop_size,
            "pan_and_scan_max_num_crops": self.max_num_crops,
            "pan_and_scan_min_ratio_to_activate": self.min_ratio_to_activate,
        }

    def crop_boxes(self, image_processor, size: tuple[int, int]) -> list[Box]:
        """Where the processor cuts an image of ``size`` (width, height), in its pixels.

        The processor's own ``pan_and_scan`` is asked to cut two arrays that hold each pixel's
        x and y (zero-copy broadcasts), so the boxes are its arithmetic, not a copy of it.
        """
        width, height = size
        # PIL backend: pan_and_scan; torchvision backend: pan_and_scan_batched (same arguments).
        cut = getattr(image_processor, "pan_and_scan", None) or image_processor.pan_and_scan_batched
        settings = (self.min_crop_size, self.max_num_crops, self.min_ratio_to_activate)
        xs = np.broadcast_to(np.arange(width), (1, height, width))
        ys = np.broadcast_to(np.arange(height)[:, None], (1, height, width))
        return [
            (float(x[0, 0, 0]), float(y[0, 0, 0]), float(x[0, 0, -1] + 1), float(y[0, -1, 0] + 1))
            for x, y in zip(cut(xs, *settings), cut(ys, *settings), strict=True)
        ]


@register_adapter
class Gemma3Adapter(SquareViewsAdapter):
    name = "gemma3"
    model_types = ("gemma3",)
    lm_mask = "image blocks"
    grown_inputs: ClassVar[dict[str, int | None]] = {"token_type_ids": 0}
    multi_image = True

    def __init__(self, model: nn.Module, processor, pan_and_scan: PanAndScan | None = None) -> None:
        super().__init__(model, processor)
        self.pan_and_scan = pan_and_scan

    @property
    def pool(self) -> int:
        tokens_per_side = round(self.model.config.mm_tokens_per_image**0.5)
        return self.patches_per_side // tokens_per_side

    def processor_options(self) -> dict:
        """Pan & scan settings, when on: the processor's class defaults would override the
        checkpoint's, and the geometry must cut the same crops."""
        return {} if self.pan_and_scan is None else self.pan_and_scan.processor_options()

    def views(self, images: Sequence[ImageInput]) -> list[View]:
        """Per image the whole image, then its pan & scan crops (a wide image's left to right,
        a tall one's top to bottom); the whole image is the "global" view beside crops."""
        out: list[View] = []
        for i, image in enumerate(images):
            crops = []
            if self.pan_and_scan is not None:
                crops = self.pan_and_scan.crop_boxes(self.processor.image_processor, image.size)
            out.append(whole(i, image.size, "global" if crops else "full"))
            out.extend(View(i, box, "crop") for box in crops)
        return out
