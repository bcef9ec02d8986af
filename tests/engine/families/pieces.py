"""The check every family whose vision tower attends over whole sequences shares: the
adapter's reading of the captured vision attention calls covers each (layer, sequence) once."""

from __future__ import annotations

import torch

from engine.adapters import VisionPiece, VlmAdapter
from engine.capture import capture_vision_attention
from store.schema import ImageGeometry


def check_whole_sequence_pieces(
    adapter: VlmAdapter, model: torch.nn.Module, inputs: dict, geometry: ImageGeometry
) -> list[VisionPiece]:
    """Runs ``model`` on ``inputs`` capturing its vision attention; asserts that the pieces
    name every (layer, vision sequence) exactly once, each the whole [V, V] attention of its
    sequence (no window) with rows summing to 1. Returns the pieces."""
    with capture_vision_attention(model) as calls, torch.no_grad():
        model(**inputs)
    pieces = adapter.vision_pieces(calls, geometry)
    sequences = geometry.vision_sequences
    assert sorted((p.layer, p.sequence) for p in pieces) == [
        (layer, s) for layer in range(adapter.num_vision_layers()) for s in range(len(sequences))
    ]
    for piece in pieces:
        probs = calls[piece.call][piece.batch]
        length = len(sequences[piece.sequence])
        assert piece.tokens is None and probs.shape[-2:] == (length, length)
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs[..., 0]), rtol=0, atol=1e-5)
    return pieces
