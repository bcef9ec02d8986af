"""CLEANN explanations: semantics on a known model, degenerate inputs, storage, heads."""

import json

import numpy as np
import pytest

from methods.cleann import CausalExplanation, explain, explain_heads, select_nodes
from tests.methods.cleann.truth import LatentModel, random_latent_model, sem_attention

EXACT = {"alpha": 1e-5, "dof": 1e12}  # exact covariance: tests behave like an oracle


def _collider_model() -> LatentModel:
    """Hidden L (position 0) -> a, L -> t, b -> a; observed b=1, a=2, t=3: PAG b o-> a <-> t."""
    adj = np.zeros((4, 4), dtype=bool)
    adj[0, 2] = adj[0, 3] = adj[1, 2] = True
    return LatentModel(adj, observed=[1, 2, 3])


def test_explanation_follows_pds_tree_through_a_collider():
    model = _collider_model()
    att = sem_attention(model, np.random.default_rng(0))
    res = explain(att, np.array([1, 2, 3]), target=3, **EXACT)
    assert res.edges() == [(1, 2, "circle", "arrow"), (2, 3, "arrow", "arrow")]
    assert res.explanation_by_radius == {1: [2], 2: [1], 3: []}
    assert res.pds_tree == [(3, 2, 1), (2, 1, 2)]
    # conditioning on the collider a opens b - a <-> t, so b must join the explanation
    assert res.minimal_explanation == [1, 2]
    assert res.minimal_is_separating
    assert res.p_values[2] < 1e-5 < res.p_values[1]


def test_explain_recovers_sem_skeleton_from_attention():
    rng = np.random.default_rng(4)
    for _ in range(5):
        model = random_latent_model(rng, 9, 3, 0.3)
        att = sem_attention(model, rng)
        nodes = np.array(model.observed)
        res = explain(att, nodes, target=int(nodes[-1]), **EXACT)
        np.testing.assert_array_equal(res.marks != 0, model.mag_skeleton_by_ancestors())
        assert set(res.explanation_by_radius.get(1, [])) == {
            int(nodes[k]) for k in np.flatnonzero(res.marks[-1])
        }


def test_json_round_trip():
    model = _collider_model()
    att = sem_attention(model, np.random.default_rng(0))
    res = explain(att, np.array([1, 2, 3]), target=3, image_positions=np.array([1]), **EXACT)
    res.head = 5
    data = json.loads(json.dumps(res.to_dict()))
    back = CausalExplanation.from_dict(data)
    assert back.to_dict() == res.to_dict()
    np.testing.assert_array_equal(back.marks, res.marks)
    assert back.edges() == res.edges()
    assert back.params == res.params
    assert res.head_importance == pytest.approx(-np.log10(res.p_values[1]))


def test_sink_only_head_gives_finite_results():
    att = np.zeros((50, 50))
    att[:, 0] = 1.0  # every token attends only to the sink
    image, text = np.arange(5, 30), np.arange(30, 50)
    nodes = select_nodes(att[45], image, text, target=45)
    np.testing.assert_array_equal(nodes, [5, 6, 45])  # two image tokens by rule
    res = explain(att, nodes, target=45, image_positions=image)
    assert all(0.0 <= p <= 1.0 for p in res.p_values.values())
    assert np.isfinite(res.head_importance)
    json.dumps(res.to_dict(), allow_nan=False)


def test_single_node_graph():
    att = np.tril(np.ones((10, 10)))
    att /= att.sum(axis=1, keepdims=True)
    res = explain(att, np.array([7]), target=7)
    assert res.edges() == []
    assert res.marks.shape == (1, 1)
    assert res.explanation_by_radius == {1: [], 2: [], 3: []}
    assert res.minimal_explanation == []
    assert res.p_values == {}
    assert res.head_importance == 0.0


def test_zero_rows_do_not_produce_nans():
    att = np.tril(np.random.default_rng(0).random((12, 12)))
    att[3] = 0.0
    res = explain(att, np.array([1, 3, 5, 11]), target=11)
    assert all(np.isfinite(p) for p in res.p_values.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": np.array([1, 2]), "target": 3}, "not among the nodes"),
        ({"nodes": np.array([1, 20]), "target": 1}, r"lie in \[0, 10\)"),
        ({"nodes": np.array([1.0, 2.0]), "target": 2}, "integer"),
        ({"nodes": np.array([], dtype=int), "target": 2}, "non-empty"),
        ({"nodes": np.array([1, 2]), "target": 2, "alpha": 0.0}, "alpha"),
        ({"nodes": np.array([1, 2]), "target": 2, "max_radius": 0}, "max_radius"),
    ],
)
def test_invalid_arguments(kwargs, message):
    att = np.tril(np.ones((10, 10))) / np.arange(1, 11)[:, None]
    with pytest.raises(ValueError, match=message):
        explain(att, **kwargs)


def test_invalid_attention():
    with pytest.raises(ValueError, match="square"):
        explain(np.ones((3, 4)), np.array([1]), 1)
    att = np.eye(4)
    att[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        explain(att, np.array([1, 2]), 2)


def _small_layer(heads: int = 4, size: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, (heads, size, size))
    logits[:, :, 0] += rng.uniform(0, 4, heads)[:, None]
    logits[:, 45:, 10:30] += rng.uniform(0, 3, (heads, 1, 20))
    logits = np.where(np.tril(np.ones((size, size), dtype=bool)), logits, -np.inf)
    att = np.exp(logits - logits.max(axis=2, keepdims=True))
    return att / att.sum(axis=2, keepdims=True)


def test_explain_heads_parallel_matches_serial_and_reports_progress():
    layer = _small_layer()
    image, text = np.arange(10, 40), np.setdiff1d(np.arange(58), np.arange(10, 40))
    calls = []
    record = lambda *a: calls.append(a)  # noqa: E731
    serial = explain_heads(layer, 58, image, text, workers=1, on_progress=record)
    parallel = explain_heads(layer, 58, image, text, workers=2, on_progress=record)
    assert calls == [(d, 4) for d in range(1, 5)] * 2
    assert [r.head for r in parallel] == [0, 1, 2, 3]
    assert [r.to_dict() for r in serial] == [r.to_dict() for r in parallel]
    for h, r in enumerate(serial):
        expected = explain(
            layer[h],
            select_nodes(layer[h, 58], image, text, 58),
            58,
            image_positions=image,
        )
        assert r.edges() == expected.edges()
        assert r.head_importance == expected.head_importance
