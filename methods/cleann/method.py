"""CLEANN as a map method: per answer token, the causal explanation's image tokens as a map
over patches, so the faithfulness scores treat CLEANN like every other map.

Definition, for answer token ``k`` and LM layer ``L`` (parameter, default the last):

- the explanations of every head of ``L`` for token ``k`` are read from the store, computed
  and stored first where missing (:func:`methods.cleann.trace.cached_explanations`, the same
  keys ``record --causal`` writes and the Causal page reads: nothing is stored twice);
- the head shown is the one the Causal page and the seed tool (IntelLabs/lvlm-interpret)
  show first: the highest head importance, lower head first on ties
  (:func:`~methods.cleann.trace.head_ranking`); parameter ``head`` fixes one head instead;
- each image token ``v`` in that head's explanation (PDS radius ``1..max_radius``) weighs
  ``-log10 p_v``, its largest p-value against the explained token during learning: the same
  term it adds to head importance, so a map's mass is the head's importance (floored at
  :data:`MIN_WEIGHT` so that a member whose p-value is 1 still shows); every other token
  weighs 0. Token weights are spread onto patches by the trace's token -> patch map, as raw
  attention is (:func:`methods.maps.attention_on_patches`).

So a map's positive patches are exactly the patches its explanation's image tokens read.
Ties: every patch outside the explanation is 0, and the scores break ties by the lower
patch index (deletion/insertion order, the top-k region, the pointing game's argmax), so
after the explanation's patches a deletion curve removes the rest in raster order, and a
token whose explanation holds no image token (all heads' importance 0) has an all-zero map:
its deletion order is raster order and its box mass undefined (NaN). ``image_tokens`` per
token says which tokens those are.

Cost: on a trace recorded with ``--causal`` (``demo record`` does so by default) every
explanation of the last layer is stored, and a run only reads JSON. Otherwise it computes
``heads x answer tokens`` explanations of layer ``L`` (``head`` set: ``answer tokens``), each
a causal-discovery run over <= ``max_image_tokens`` + text nodes; this needs a writable
store (:class:`store.StoreReadOnly` otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from methods.base import Method, MethodResult, Needs
from methods.cleann.explain import CausalExplanation
from methods.cleann.trace import ALGORITHM_VERSION, CausalParams, cached_explanations, head_ranking
from methods.maps import MAPS_KIND, attention_on_patches, image_rows
from methods.registry import register
from store._stored import StoredTrace
from store.schema import TokenRole

MIN_WEIGHT = 1e-3  # a member's weight when its p-value is (nearly) 1: still a positive patch
_MAX_WEIGHT = -math.log10(float(np.finfo(np.float64).tiny))  # head importance's own cap


@dataclass(frozen=True)
class CleannMapParams:
    layer: int = -1  # LM layer explained; negative counts from the end
    head: int | None = None  # None: per token, the head of highest importance


def member_weights(explanation: CausalExplanation, roles: np.ndarray) -> dict[int, float]:
    """Image token position -> its weight in the map (module docstring)."""
    weights = {}
    for position in explanation.explanation:
        if roles[position] == TokenRole.IMAGE:
            p = max(explanation.p_values.get(position, 1.0), 0.0)
            evidence = _MAX_WEIGHT if p <= 0.0 else -math.log10(p)
            weights[position] = min(max(evidence, MIN_WEIGHT), _MAX_WEIGHT)
    return weights


@register
class CleannMap(Method):
    """CLEANN explanations as per-token patch maps (module docstring)."""

    name = "cleann"
    # the second number is CLEANN's algorithm version: new explanations, new maps
    version = f"1.{ALGORITHM_VERSION}"
    kind = MAPS_KIND
    stage = 0
    needs = frozenset({Needs.ATTENTION})
    Params = CleannMapParams

    def skip_reason(self, trace: StoredTrace) -> str | None:
        if trace.num_layers == 0 or trace.num_heads == 0:
            return "no language-model attention to learn a causal graph from"
        if not len(image_rows(trace.image)):
            return "no image tokens in the language model's sequence"
        if trace.answer_length == 0:
            return "no answer token to explain"
        if not trace.has_rows(np.arange(len(trace.tokens.text))):
            return "attention stored for some rows only: CLEANN reads every row"
        return None

    def run(self, trace: StoredTrace, params: Any, **resources: Any) -> MethodResult:
        store = resources.get("store")
        if store is None:
            raise ValueError("cleann reads and stores explanations in the store: pass store=")
        layers, heads = trace.num_layers, trace.num_heads
        if not -layers <= params.layer < layers:
            raise ValueError(f"cleann layer {params.layer} out of range 0..{layers - 1}")
        if params.head is not None and not 0 <= params.head < heads:
            raise ValueError(f"cleann head {params.head} out of range 0..{heads - 1}")
        layer = params.layer % layers
        causal = CausalParams()
        roles = np.asarray(trace.tokens.roles)
        chosen = None if params.head is None else [params.head]
        n = trace.answer_length
        weights = np.zeros((n, len(roles)))
        shown: list[int] = []
        importance: list[float] = []
        members: list[int] = []
        for k in range(n):
            results = cached_explanations(store, trace.trace_id, layer, k, causal, chosen)
            top = head_ranking(results)[0][0]
            explanation = next(r for r in results if r.head == top)
            for position, weight in member_weights(explanation, roles).items():
                weights[k, position] = weight
            shown.append(top)
            importance.append(explanation.head_importance)
            members.append(int(np.count_nonzero(weights[k])))
        maps = attention_on_patches(trace.image, weights)
        per_token = {
            "map": maps.tolist(),
            "head": shown,
            "head_importance": importance,
            "image_tokens": members,
        }
        headline = {"explained_tokens.cleann": float(sum(m > 0 for m in members))}
        provenance = {"layer": layer, "causal_params": causal.key()}
        return self.result(params, per_token, headline, provenance)
