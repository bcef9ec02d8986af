"""Capture attention probabilities: LM modules through forward hooks, vision towers through
transformers' ``AttentionInterface``.

Eager LM attention modules return ``(output, attention_weights)``; a hook keeps the weights
tensor itself (not a copy), so it stays in the autograd graph and relevancy can ask for
gradients with respect to it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface

from engine.errors import UnsupportedModelError


@contextmanager
def capture_attention(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Yield a list filled, during the forward pass, with one weights tensor per module."""
    captured: list[torch.Tensor | None] = [None] * len(modules)

    def hook_for(index: int):
        def hook(_module, _inputs, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            captured[index] = weights

        return hook

    handles = [module.register_forward_hook(hook_for(i)) for i, module in enumerate(modules)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def require_all(captured: list[torch.Tensor | None], where: str) -> list[torch.Tensor]:
    """Every module must have returned weights; otherwise the model cannot be recorded."""
    if any(weights is None for weights in captured):
        raise UnsupportedModelError(
            f"The {where} attention modules returned no attention weights. Load the model with "
            "attn_implementation='eager' (fused sdpa/flash kernels never materialise them)."
        )
    return captured  # type: ignore[return-value]


# -- vision attention, through transformers' AttentionInterface ---------------------------------
# Some vision blocks discard their probabilities (Qwen-VL runs eager attention per image or per
# window and returns only the output), so hooks cannot see them. The attention function
# "eager_capture" calls the model file's own ``eager_attention_forward`` (the maths of "eager")
# and appends the probabilities to the active sink. It is set for the vision sub-config only,
# so the LM keeps plain eager attention and its hooks.
VISION_CAPTURE = "eager_capture"
_sinks: list[list[torch.Tensor]] = []


def _eager_capture(module: nn.Module, *args, **kwargs):
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, weights = eager(module, *args, **kwargs)
    if _sinks:
        _sinks[-1].append(weights)
    return output, weights


AttentionInterface.register(VISION_CAPTURE, _eager_capture)


@contextmanager
def capture_vision_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside, each vision attention call appends its probabilities [B, heads, q, k], in call
    order (layer by layer; per image or window where the tower splits its sequence)."""
    model.set_attn_implementation({"vision_config": VISION_CAPTURE})
    sink: list[torch.Tensor] = []
    _sinks.append(sink)
    try:
        yield sink
    finally:
        _sinks.pop()
        model.set_attn_implementation({"vision_config": "eager"})
