"""CLEANN causal explanations from attention (Rohekar et al., NeurIPS 2023), numpy/scipy only.

Typical use for one answer token and one layer::

    from engine.causal import explain_heads
    results = explain_heads(layer_attn, target, image_positions, text_positions)
    ranked = sorted(results, key=lambda r: r.head_importance, reverse=True)

or, for one head with hand-picked nodes, :func:`select_nodes` then :func:`explain`.
For recorded traces (which row explains an answer token, results cached in the store) use
:mod:`engine.causal.trace`; it is not re-exported here because it imports the store, and
the head workers import this package.
"""

from engine.causal.explain import CausalExplanation, ExplainParams, explain
from engine.causal.graph import ARROW, CIRCLE, NONE, TAIL
from engine.causal.heads import explain_heads
from engine.causal.nodes import select_nodes

__all__ = [
    "ARROW",
    "CIRCLE",
    "NONE",
    "TAIL",
    "CausalExplanation",
    "ExplainParams",
    "explain",
    "explain_heads",
    "select_nodes",
]
