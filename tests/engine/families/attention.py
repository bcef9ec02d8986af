"""Vision attention probabilities of any family, through transformers' ``AttentionInterface``.

Some vision blocks discard their probabilities (Qwen-VL's run eager attention per image or per
window and return only the output), so forward hooks cannot see them. Instead an attention
function ``"eager_capture"`` is registered once: it calls the model file's own
``eager_attention_forward`` (the same maths as ``"eager"``) and appends the probabilities to the
list of the active :func:`vision_attention` block. It is set for the vision sub-config only
(``model.set_attn_implementation({"vision_config": "eager_capture"})``), so the LM keeps plain
eager attention and its ``output_attentions``. Chunks come one call each: per layer, per image,
and per window in Qwen2.5-VL's windowed layers.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from transformers import AttentionInterface

CAPTURE = "eager_capture"
_sinks: list[list[torch.Tensor]] = []


def _eager_capture(module: torch.nn.Module, *args, **kwargs):
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, weights = eager(module, *args, **kwargs)
    if _sinks:
        _sinks[-1].append(weights)
    return output, weights


AttentionInterface.register(CAPTURE, _eager_capture)


@contextlib.contextmanager
def vision_attention(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside, each vision attention call appends its probabilities [B, heads, q, k] to the list."""
    model.set_attn_implementation({"vision_config": CAPTURE})
    sink: list[torch.Tensor] = []
    _sinks.append(sink)
    try:
        yield sink
    finally:
        _sinks.pop()
        model.set_attn_implementation({"vision_config": "eager"})
