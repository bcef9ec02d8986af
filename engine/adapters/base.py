"""The model-family boundary: everything the recorder needs to know about one VLM family.

A new family is one subclass registered with :func:`register_adapter`. Module paths are data
(dotted attribute paths), so most families differ only in a few strings and in how image
tokens map onto the patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from engine.errors import UnsupportedModelError


@dataclass(frozen=True)
class ImageLayout:
    """How the LM's image tokens sit on the processed image."""

    grid_rows: int
    grid_cols: int
    patch_size: int  # in processed-image pixels
    vision_has_cls: bool
    patch_boxes: np.ndarray  # [G, 4] (x0, y0, x1, y1) in original-image pixels


def resolve(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


class VlmAdapter:
    """Base class; subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # ``config.model_type`` values this adapter serves
    language_layers_path: ClassVar[str]  # ModuleList of decoder layers
    vision_layers_path: ClassVar[str]  # ModuleList of vision-encoder layers
    attention_attr: ClassVar[str] = "self_attn"

    def __init__(self, model: nn.Module, processor):
        self.model = model
        self.processor = processor

    def language_attention_modules(self) -> list[nn.Module]:
        layers = resolve(self.model, self.language_layers_path)
        return [getattr(layer, self.attention_attr) for layer in layers]

    def vision_attention_modules(self) -> list[nn.Module]:
        layers = resolve(self.model, self.vision_layers_path)
        return [getattr(layer, self.attention_attr) for layer in layers]

    def vision_layers_feeding_lm(self) -> int:
        """How many vision layers the LM's image features depend on (relevancy stops there)."""
        return len(self.vision_attention_modules())

    @property
    def image_token_id(self) -> int:
        raise NotImplementedError

    def image_layout(
        self, pixel_values: torch.Tensor, original_size: tuple[int, int]
    ) -> ImageLayout:
        """The patch grid of the processed image and each patch's box in the user's image."""
        raise NotImplementedError

    def image_token_patches(self, num_image_tokens: int, layout: ImageLayout) -> np.ndarray:
        """Patch index (row-major) of each LM image token, in sequence order; -1 for none."""
        raise NotImplementedError

    def processed_image(self, pixel_values: torch.Tensor) -> np.ndarray:
        """The image as the vision tower saw it, de-normalised to uint8 [h, w, 3]."""
        image_processor = self.processor.image_processor
        mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
        std = torch.tensor(image_processor.image_std).view(3, 1, 1)
        pixels = pixel_values[0].detach().float().cpu() * std + mean
        return (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


_ADAPTERS: dict[str, type[VlmAdapter]] = {}


def register_adapter(cls: type[VlmAdapter]) -> type[VlmAdapter]:
    _ADAPTERS[cls.name] = cls
    return cls


def list_adapters() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_for(model: nn.Module, processor) -> VlmAdapter:
    """The adapter serving this model's architecture, or a clear error naming the known ones."""
    model_type = getattr(model.config, "model_type", "?")
    matches: list[type[VlmAdapter]] = [
        cls for cls in _ADAPTERS.values() if model_type in cls.model_types
    ]
    if not matches:
        known = ", ".join(t for cls in _ADAPTERS.values() for t in cls.model_types)
        raise UnsupportedModelError(
            f"No adapter for model type {model_type!r}. Supported: {known}. "
            "Add one in engine/adapters/ (a small VlmAdapter subclass)."
        )
    return matches[0](model, processor)
