"""Model-family adapters, found by ``config.model_type``; importing registers them."""

from engine.adapters import llava as _llava  # noqa: F401  (registers LlavaAdapter)
from engine.adapters.base import (
    ADD_A_FAMILY,
    Placement,
    VisionPiece,
    VlmAdapter,
    adapter_class,
    adapter_for,
    list_adapters,
    register_adapter,
)

__all__ = [
    "ADD_A_FAMILY",
    "Placement",
    "VisionPiece",
    "VlmAdapter",
    "adapter_class",
    "adapter_for",
    "list_adapters",
    "register_adapter",
]
