"""One evidence map per answer token: the candidate maps combined, weighted by how faithful
each proved on this trace, and how much they agree.

**Maps**: every candidate map of the trace (:func:`methods.maps.candidate_maps`, stored maps
such as occlusion and CLEANN included) except ``random``, the baseline the weights are
measured against.

**Weights** from the trace's stored deletion and insertion results (kind ``faithfulness``;
per map m, per answer token k, the AUCs ``del[m, k]`` and ``ins[m, k]``)::

    gain_m = mean_k(ins[m, k] - ins[random, k]) + mean_k(del[random, k] - del[m, k])
    w_m    = max(0, gain_m)

``gain_m`` is ``(ins_m - del_m) - (ins_random - del_random)`` averaged over tokens: how much
better than the random map m ranks the patches the model needs, by both tests (a faithful map
deletes faster and inserts faster). The mean comes before the clip, so one noisy token can
neither make a map count nor silence it, and a map no better than random gets weight 0: a
method that does not beat random adds noise, not evidence. Where only one of the two results
exists its term alone is used. Weights are per trace, not per token, because one token's
AUC is a single noisy curve. A map the results do not score (``attention.best_head`` is not
in deletion's default list) gets weight 0: only measured faithfulness counts. Several results
of one test (other steps, other map lists) are averaged, each margin against its own random
run, so the weights do not depend on which happens to be stored; only those whose ``layer``
equals ours count (another layer's ``attention.head_mean`` is another map). With no usable
result, or no map beating random, every map weighs the same and the provenance says
``unweighted`` and why.

**Normalisation**: each map's row is replaced by its ranks scaled to [0, 1] (average ranks for
ties, ``(rank - 1) / (G - 1)``). Maps differ in scale (relevancy shares, attention weights,
probability differences) and sign (occlusion is negative where hiding a patch helps), and the
deletion/insertion tests that set the weights read nothing but each map's ranking, so the
combination uses exactly what was measured: a weighted Borda count. The price is that a
sharp peak and a gentle slope look alike once ranked.

**Evidence**: ``E[k] = sum_m w_m rank(map_m[k]) / sum_m w_m`` over the weighted maps.

**Agreement** per token: the mean Spearman rank correlation over all pairs of weighted maps
(each pair counted once, whatever its weights: the question is whether the methods we trust
point at the same patches). NaN (stored as null) with fewer than two weighted maps.

Stored as kind ``evidence``, not ``maps``: its weights come from this trace's own deletion and
insertion scores, so scoring it by them again would be in-sample and flatter it; and as a
candidate map it would become an input of its own weights and make the next deletion result
depend on whether evidence ran before (a result no longer determined by its key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import rankdata

from methods.base import Method, MethodResult, Needs, json_number
from methods.maps import RANDOM, MapChoice, candidate_maps, stored_maps
from methods.registry import register
from store._stored import StoredTrace

if TYPE_CHECKING:
    from store import TraceStore

EVIDENCE_KIND = "evidence"
FAITHFULNESS_KIND = "faithfulness"
DELETION, INSERTION = "deletion", "insertion"  # the perturbation methods' names (engine)


@dataclass(frozen=True)
class EvidenceParams:
    layer: int = -1  # LM layer of attention.head_mean (results of another layer are not read)
    seed: int = 0  # the random map's seed (the map itself is left out)


def stored_aucs(
    store: TraceStore, trace_id: str, method: str, layer: int, tokens: int
) -> dict[str, dict[str, np.ndarray]]:
    """``{key: {map: [N] AUCs}}`` of every stored ``method`` result (deletion or insertion)
    computed with attention layer ``layer``. Payloads of another shape and AUC lists that are
    not ``tokens`` finite numbers are skipped: results are data read back, never trusted."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for key, payload in store.list_results(trace_id, FAITHFULNESS_KIND).items():
        if not isinstance(payload, Mapping) or payload.get("method") != method:
            continue
        params, per_token = payload.get("params"), payload.get("per_token")
        if not isinstance(params, Mapping) or params.get("layer", -1) != layer:
            continue
        aucs = per_token.get("auc") if isinstance(per_token, Mapping) else None
        if not isinstance(aucs, Mapping):
            continue
        found[key] = {}
        for name, values in aucs.items():
            try:
                array = np.asarray(values, np.float64)
            except (TypeError, ValueError):
                continue
            if array.shape == (tokens,) and np.isfinite(array).all():
                found[key][str(name)] = array
    return found


def gains(
    deletion: Sequence[Mapping[str, np.ndarray]], insertion: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, float]:
    """``gain_m`` of every map some result scores beside ``random`` (module docstring): per
    test, the mean over its results of ``mean_k`` of the map's margin over random."""
    out: dict[str, float] = {}
    for results, sign in ((insertion, 1.0), (deletion, -1.0)):
        margins: dict[str, list[float]] = {}
        for aucs in results:
            if RANDOM not in aucs:
                continue
            for name, values in aucs.items():
                if name != RANDOM:
                    margins.setdefault(name, []).append(float(np.mean(values - aucs[RANDOM])))
        for name, values in margins.items():
            out[name] = out.get(name, 0.0) + sign * float(np.mean(values))
    return out


def weigh(names: Sequence[str], measured: Mapping[str, float]) -> tuple[dict[str, float], str]:
    """``({map: weight}, how)``: ``max(0, gain)`` per map (0 when unmeasured), normalised to
    sum 1; equal weights when nothing was measured or nothing beat random."""
    raw = {name: max(0.0, measured.get(name, 0.0)) for name in names}
    total = sum(raw.values())
    if total > 0:
        return {name: w / total for name, w in raw.items()}, "weighted"
    why = "no map beat the random map" if measured else "no deletion or insertion result"
    return {name: 1 / len(names) for name in names}, f"unweighted: {why}"


def rank_normalise(values: np.ndarray) -> np.ndarray:
    """Each row's average ranks scaled to [0, 1]; a single patch ranks 0.5."""
    values = np.asarray(values, np.float64)
    ranks = rankdata(values, method="average", axis=-1) - 1
    patches = values.shape[-1]
    return ranks / (patches - 1) if patches > 1 else np.full_like(ranks, 0.5)


def agreement(ranked: np.ndarray) -> float:
    """Mean Spearman correlation over pairs of ``[M, G]`` rank rows (Pearson on ranks is
    Spearman's rho); NaN with fewer than two maps. A constant map's pairs are left out."""
    if len(ranked) < 2:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.corrcoef(ranked)
    pairs = rho[np.triu_indices(len(ranked), k=1)]
    pairs = pairs[np.isfinite(pairs)]
    return float(pairs.mean()) if len(pairs) else float("nan")


def combine(
    maps: Mapping[str, np.ndarray], weights: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """``([N, G] evidence, [N] agreement)`` of the maps with positive weight."""
    used = [name for name in maps if weights.get(name, 0.0) > 0]
    ranked = np.stack([rank_normalise(maps[name]) for name in used])  # [M, N, G]
    w = np.asarray([weights[name] for name in used], np.float64)
    evidence = np.tensordot(w, ranked, axes=1) / w.sum()
    agree = np.asarray([agreement(ranked[:, k]) for k in range(ranked.shape[1])])
    return evidence, agree


@register
class Evidence(Method):
    """The consolidated evidence map and agreement of every answer token (module docstring)."""

    name = "evidence"
    version = "1"
    kind = EVIDENCE_KIND
    stage = 2
    needs = frozenset({Needs.RELEVANCY, Needs.ATTENTION})
    Params = EvidenceParams

    def run(self, trace: StoredTrace, params: Any, **resources: Any) -> MethodResult:
        store = resources.get("store")
        if store is None:
            raise ValueError("evidence reads other methods' stored results: it needs the store")
        n = trace.answer_length
        choice = MapChoice(params.layer, params.seed)
        found = candidate_maps(trace, choice, stored_maps(store, trace.trace_id))
        maps = {name: values for name, values in found.items() if name != RANDOM}
        if not maps:
            raise ValueError(f"trace {trace.trace_id} has no map to combine")
        deletion = stored_aucs(store, trace.trace_id, DELETION, params.layer, n)
        insertion = stored_aucs(store, trace.trace_id, INSERTION, params.layer, n)
        measured = gains(list(deletion.values()), list(insertion.values()))
        weights, how = weigh(list(maps), measured)
        evidence, agree = combine(maps, weights)
        per_token = {
            "map": evidence.tolist(),
            "agreement": [json_number(a) for a in agree],
            "weights": weights,
            "maps": [name for name in maps if weights[name] > 0],
        }
        provenance = {
            "weighting": how,
            "gains": {name: measured.get(name) for name in maps},
            "results": {DELETION: sorted(deletion), INSERTION: sorted(insertion)},
            "tokens": trace.tokens.text[trace.prompt_length :],
            "formulas": {
                "gain": "mean_k(ins_m - ins_random) + mean_k(del_random - del_m)",
                "weight": "max(0, gain), normalised to sum 1",
                "map": "sum_m w_m rank01(map_m[k]) / sum_m w_m",
                "agreement": "mean pairwise Spearman rho of the weighted maps",
            },
        }
        headline = {"agreement": float(np.nanmean(agree)) if np.isfinite(agree).any() else np.nan}
        return self.result(params, per_token, headline, provenance)
