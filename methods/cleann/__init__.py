"""CLEANN causal explanations from attention (Rohekar et al., NeurIPS 2023), numpy/scipy only.

Typical use for one answer token and one layer::

    from methods.cleann import explain_heads
    results = explain_heads(layer_attn, target, image_positions, text_positions)
    ranked = sorted(results, key=lambda r: r.head_importance, reverse=True)

or, for one head with hand-picked nodes, :func:`select_nodes` then :func:`explain`.
For recorded traces (which row explains an answer token, results cached in the store) use
:mod:`methods.cleann.trace`; it is not re-exported here because it imports the store, and
the head workers import this package.
"""

from methods.cleann.explain import CausalExplanation, ExplainParams, explain
from methods.cleann.graph import ARROW, CIRCLE, NONE, TAIL
from methods.cleann.heads import explain_heads
from methods.cleann.nodes import select_nodes

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
