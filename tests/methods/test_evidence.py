"""The evidence map: weights from real deletion/insertion results computed on the demo model,
the combination and agreement by their formulas, unreadable stored results skipped, and the
stage order through ``lvlm-interpret analyse``.

The evidence method itself is torch-free; the deletion and insertion results it reads are
produced here by the engine, on a real recorded trace, as a user would produce them."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from engine.cli import app
from methods.base import save_result
from methods.evidence import (
    Evidence,
    EvidenceParams,
    agreement,
    gains,
    rank_normalise,
    stored_aucs,
    weigh,
)
from methods.groundtruth import region, target_boxes
from methods.maps import MapChoice, candidate_maps, stored_maps
from store import open_store

ON_OBJECT, OFF_OBJECT = "on_object", "off_object"


@pytest.fixture(scope="module")
def trace_with_maps(tmp_path_factory):
    """A colour question recorded by the demo command, with two maps stored as a map method
    would store them: the target object's patches first (faithful by construction: the
    colour is nowhere else) and the same map negated (the object last: anti-faithful)."""
    store = tmp_path_factory.mktemp("evidence") / "store"
    args = ["demo", "record", "--store", str(store), "--count", "1", "--no-causal"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open_store(store, writable=True) as opened:
        (item,) = opened.query().items
        trace = opened.open(item.trace_id)
        inside = region(trace.image, target_boxes(item.extra, item.prompt)).astype(float)
        rows = np.tile(inside, (trace.answer_length, 1))
        for name, values in ((ON_OBJECT, rows), (OFF_OBJECT, -rows)):
            payload = {"method": name, "per_token": {"map": values.tolist()}}
            opened.put_result(item.trace_id, "maps", f"{name}@1/test", payload)
    return store, item.trace_id


def perturb(store, trace_id, model, maps: str) -> None:
    """Deletion and insertion of ``maps`` by the engine's methods, stored as analyse would."""
    from engine.methods.perturbation import Deletion, Insertion, PerturbationParams

    with open_store(store, writable=True) as opened:
        trace = opened.open(trace_id)
        for method in (Deletion(), Insertion()):
            params = PerturbationParams(steps=4, maps=maps)
            save_result(opened, trace_id, method.run(trace, params, model=model, store=opened))


def scipy_agreement(rows: list[np.ndarray]) -> float:
    """Mean pairwise Spearman rho by SciPy: the reference for :func:`agreement`."""
    pairs = [spearmanr(a, b).statistic for i, a in enumerate(rows) for b in rows[i + 1 :]]
    return float(np.nanmean(pairs)) if pairs else float("nan")


def test_without_perturbation_results_every_map_weighs_the_same(trace_with_maps):
    store, trace_id = trace_with_maps
    with open_store(store) as opened:
        result = Evidence().run(opened.open(trace_id), EvidenceParams(), store=opened)
    weights = result.per_token["weights"]
    assert "random" not in weights and {ON_OBJECT, OFF_OBJECT, "relevancy.llm"} <= set(weights)
    assert len(set(weights.values())) == 1 and sum(weights.values()) == pytest.approx(1.0)
    assert result.provenance["weighting"] == "unweighted: no deletion or insertion result"
    # every map counts: agreement is over all their pairs (the opposite pair adds rho = -1)
    with open_store(store) as opened:
        maps = candidate_maps(opened.open(trace_id), MapChoice(), stored_maps(opened, trace_id))
    rows = [[maps[m][k] for m in weights] for k in range(len(result.per_token["agreement"]))]
    assert result.per_token["agreement"] == pytest.approx([scipy_agreement(r) for r in rows])
    assert spearmanr(maps[ON_OBJECT][0], maps[OFF_OBJECT][0]).statistic == pytest.approx(-1)


def test_weights_favour_the_faithful_map(trace_with_maps, demo_model):
    store, trace_id = trace_with_maps
    perturb(store, trace_id, demo_model, f"{ON_OBJECT},{OFF_OBJECT},relevancy.llm,random")
    with open_store(store, writable=True) as opened:
        trace = opened.open(trace_id)
        result = Evidence().run(trace, EvidenceParams(), store=opened)
        save_result(opened, trace_id, result)
        stored = opened.list_results(trace_id, "evidence")
        metrics = opened.get(trace_id).metrics
        maps = candidate_maps(trace, MapChoice(), stored_maps(opened, trace_id))
    weights, gained = result.per_token["weights"], result.provenance["gains"]
    assert result.provenance["weighting"] == "weighted"
    assert gained[ON_OBJECT] > 0.1 > gained[OFF_OBJECT], gained
    assert weights[ON_OBJECT] > 0 and weights[OFF_OBJECT] == 0.0, weights
    # a map deletion did not score weighs nothing: only measured faithfulness counts
    assert weights["attention.head_mean"] == 0.0 and gained["attention.head_mean"] is None
    used = result.per_token["maps"]
    assert ON_OBJECT in used and OFF_OBJECT not in used and "random" not in used
    assert used == [name for name, w in weights.items() if w > 0]
    # the evidence is the weighted mean of the used maps' ranks; agreement is Spearman's
    expected = sum(weights[m] * rank_normalise(maps[m]) for m in used) / sum(weights.values())
    np.testing.assert_allclose(result.per_token["map"], expected)
    for k, value in enumerate(result.per_token["agreement"]):
        reference = scipy_agreement([maps[m][k] for m in used])
        assert value == (None if np.isnan(reference) else pytest.approx(reference))
    (payload,) = stored.values()
    assert [k.split("/")[0] for k in payload["provenance"]["results"]["deletion"]] == ["deletion@1"]
    if len(used) > 1:
        assert metrics["agreement"] == pytest.approx(result.headline["agreement"])


def test_analyse_runs_evidence_after_what_it_weighs(trace_with_maps, demo_checkpoint):
    """Named first, evidence still runs last (stage 2): it reads the deletion result the same
    command has just stored, and stores its own result and agreement metric."""
    store, trace_id = trace_with_maps
    args = ["analyse", trace_id, "--store", str(store), "--model", str(demo_checkpoint)]
    result = CliRunner().invoke(app, [*args, "--metrics", "evidence,deletion", "--steps", "2"])
    assert result.exit_code == 0, result.output
    lines = re.findall(rf"{trace_id} \w+: (\S+)", result.output)  # "<id> <kind>: <key>"
    assert [key.split("@")[0] for key in lines] == ["deletion", "evidence"], result.output
    with open_store(store) as opened:
        payload = opened.get_result(trace_id, "evidence", lines[1])
        assert lines[0] in payload["provenance"]["results"]["deletion"]
        assert opened.get_result(trace_id, "faithfulness", lines[0])["params"]["steps"] == 2


def test_agreement_and_ranks():
    rng = np.random.default_rng(1)
    a, b, c = rng.random((3, 24))
    assert agreement(np.stack([rank_normalise(a), rank_normalise(a)])) == pytest.approx(1.0)
    assert agreement(np.stack([rank_normalise(a), rank_normalise(-a)])) == pytest.approx(-1.0)
    rows = [a, b, np.round(c, 1)]  # ties
    ranked = np.stack([rank_normalise(r) for r in rows])
    assert agreement(ranked) == pytest.approx(scipy_agreement(rows))
    assert np.isnan(agreement(ranked[:1]))
    # scale and sign do not matter, only order; ties share their average rank
    np.testing.assert_allclose(rank_normalise(np.array([-5.0, 10.0, 0.0, 0.0])), [0, 1, 0.5, 0.5])
    np.testing.assert_allclose(rank_normalise(np.array([[3.0]])), [[0.5]])
    constant = np.stack([rank_normalise(a), rank_normalise(np.zeros(24)), rank_normalise(b)])
    assert agreement(constant) == pytest.approx(spearmanr(a, b).statistic)


def test_gains_and_weights():
    random_ = np.array([0.5, 0.5])
    deletion = {"random": random_, "good": np.array([0.1, 0.3]), "bad": np.array([0.9, 0.7])}
    insertion = {"random": random_, "good": np.array([0.9, 0.7])}
    measured = gains([deletion], [insertion])
    assert measured == pytest.approx({"good": 0.6, "bad": -0.3})
    # two results of one test average, each against its own random run
    other = {"random": np.array([0.3, 0.3]), "good": np.array([0.3, 0.3])}
    assert gains([deletion, other], [])["good"] == pytest.approx((0.3 + 0.0) / 2)
    assert gains([other, deletion], [])["bad"] == pytest.approx(-0.3)
    weights, how = weigh(["good", "bad", "unscored"], measured)
    assert weights == {"good": 1.0, "bad": 0.0, "unscored": 0.0} and how == "weighted"
    assert gains([deletion], [{"good": np.array([1.0, 1.0])}]) == pytest.approx(
        {"good": 0.3, "bad": -0.3}
    )
    assert gains([{"good": np.array([0.1, 0.1])}], []) == {}  # no random baseline, no gain
    equal, how = weigh(["bad", "x"], {"bad": -0.3})
    assert equal == {"bad": 0.5, "x": 0.5} and how == "unweighted: no map beat the random map"


def test_unreadable_faithfulness_results_are_skipped(trace_with_maps):
    store, trace_id = trace_with_maps
    with open_store(store, writable=True) as opened:
        n = opened.open(trace_id).answer_length
        good = {"method": "deletion", "params": {"layer": -1}, "per_token": {"auc": {}}}
        good["per_token"]["auc"] = {"random": [0.5] * n, "short": [0.1], "text": ["x"] * n}
        good["per_token"]["auc"]["nan"] = [float("nan")] * n
        hostile = [
            ("deletion@9/a-method", {**good, "method": ["deletion"]}),
            ("deletion@9/b-layer", {**good, "params": {"layer": 3}}),
            ("deletion@9/c-auc", {"method": "deletion", "params": {}, "per_token": {"auc": 1}}),
            ("deletion@8/ok", good),
        ]
        for key, payload in hostile:
            opened.put_result(trace_id, "faithfulness", key, payload)
        found = stored_aucs(opened, trace_id, "deletion", -1, n)
    # readable results of this layer only; of their AUC lists only the well-formed ones
    assert "deletion@8/ok" in found and list(found["deletion@8/ok"]) == ["random"]
    assert not {"deletion@9/a-method", "deletion@9/b-layer", "deletion@9/c-auc"} & set(found)
