"""Model-family adapters, found by ``config.model_type``; importing registers them."""

from engine.adapters import llava as _llava  # noqa: F401  (registers LlavaAdapter)
from engine.adapters.base import (
    ImageLayout,
    VlmAdapter,
    adapter_for,
    list_adapters,
    register_adapter,
)

__all__ = ["ImageLayout", "VlmAdapter", "adapter_for", "list_adapters", "register_adapter"]
