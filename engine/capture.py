"""Capture attention probabilities from eager attention modules with forward hooks.

Eager attention modules return ``(output, attention_weights)``; a hook keeps the weights
tensor itself (not a copy), so it stays in the autograd graph and relevancy can ask for
gradients with respect to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

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
