"""CLEANN on traces: target row, in-memory vs stored, the store cache, degenerate traces."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from methods.cleann.trace import (
    KIND,
    CausalParams,
    cached_explanations,
    explain_layer,
    explain_token,
    head_ranking,
    record_causal,
    result_key,
    target_position,
)
from store import StoreReadOnly, open_store
from store.schema import TokenRole
from store.synthetic import make_synthetic_trace


@pytest.fixture(scope="module")
def trace():
    return make_synthetic_trace(num_layers=2, num_heads=4, prompt_len=60, answer_len=3, grid=(6, 6))


@pytest.fixture
def stored(tmp_path, trace):
    with open_store(tmp_path / "store", writable=True) as store:
        trace_id = store.add(trace)
    return tmp_path / "store", trace_id


def _dicts(results) -> list[dict]:
    return [r.to_dict() for r in results]


def test_params_key_is_stable_and_names_every_parameter():
    assert (
        CausalParams().key()
        == "v2,a=1e-05,dof=128.0,r=3,thr=0.01,img=50,anc=1,cond=all,ord=reference"
    )
    assert result_key(31, 7, 2, CausalParams()) == f"L31/H7/T2/{CausalParams().key()}"
    variants = [
        CausalParams(alpha=1e-4),
        CausalParams(dof=64),
        CausalParams(max_radius=2),
        CausalParams(threshold=0.005),
        CausalParams(max_image_tokens=20),
        CausalParams(ancestor_pruning=False),
        CausalParams(max_cond_size=3),
        CausalParams(set_order="ascending"),
    ]
    assert len({p.key() for p in [CausalParams(), *variants]}) == 1 + len(variants)
    assert CausalParams(dof=128).key() == CausalParams(dof=128.0).key()
    with pytest.raises(ValueError, match="max_image_tokens"):
        CausalParams(max_image_tokens=1).validate()


def test_target_is_the_query_row_that_produced_the_token(trace):
    p = trace.tokens.prompt_length
    result = explain_token(trace, layer=1, head=3, token=2)
    assert result.target == target_position(trace.tokens, 2) == p + 1
    assert result.head == 3
    assert max(result.nodes) == result.target  # causal: only earlier tokens can explain it
    roles = trace.tokens.roles[result.nodes]
    assert np.count_nonzero(roles == TokenRole.IMAGE) >= 2  # select_nodes' minimum
    with pytest.raises(IndexError, match="answer token 3"):
        explain_token(trace, 1, 0, 3)


def test_in_memory_trace_equals_stored_trace(stored, trace):
    root, trace_id = stored
    with open_store(root) as store, store.open(trace_id) as from_file:
        for layer, head, token in [(1, 3, 2), (0, 1, 0), (-1, -1, 1)]:
            a = explain_token(trace, layer, head, token)
            b = explain_token(from_file, layer, head, token)
            assert a.to_dict() == b.to_dict()
        assert b.head == 3  # negative indices normalised: one key per head
        layer = explain_layer(from_file, 1, 1, workers=1)
    assert _dicts(layer) == _dicts(explain_layer(trace, 1, 1, workers=1))
    assert [r.head for r in layer] == [0, 1, 2, 3]
    assert explain_token(trace, 1, 2, 1).to_dict() == layer[2].to_dict()


def test_cache_round_trip_never_recomputes(stored):
    root, trace_id = stored
    computed = []
    with open_store(root, writable=True) as store:
        first = cached_explanations(
            store, trace_id, 1, 2, workers=1, on_progress=lambda d, t: computed.append((d, t))
        )
    assert computed == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [r.head for r in first] == [0, 1, 2, 3]

    # Reopened read-only, with the trace file gone: only the store's results can answer.
    path = next((root / "data").rglob(f"{trace_id}*"))
    os.rename(path, path.with_suffix(".moved"))
    with open_store(root) as store:
        again = cached_explanations(
            store, trace_id, 1, 2, on_progress=lambda d, t: computed.append((d, t))
        )
        some = cached_explanations(store, trace_id, 1, 2, heads=[3, 1])
        stored_keys = set(store.list_results(trace_id, KIND))
        with pytest.raises(StoreReadOnly, match="read-only"):
            cached_explanations(store, trace_id, 1, 1)
    assert len(computed) == 4
    assert _dicts(again) == _dicts(first)
    assert _dicts(some) == [first[3].to_dict(), first[1].to_dict()]
    assert stored_keys == {result_key(1, h, 2, CausalParams()) for h in range(4)}
    os.rename(path.with_suffix(".moved"), path)

    # A partial hit computes only the missing head; a foreign entry counts as missing;
    # other parameters are another entry.
    with open_store(root, writable=True) as store:
        store.put_result(trace_id, KIND, result_key(0, 3, 0, CausalParams()), {"note": "x"})
        one = cached_explanations(store, trace_id, 0, 0, heads=[1], workers=1)
        calls = []
        both = cached_explanations(
            store, trace_id, 0, 0, heads=[1, 3], workers=1, on_progress=lambda *a: calls.append(a)
        )
        assert calls == [(1, 1)] and both[0].to_dict() == one[0].to_dict()
        assert both[1].head == 3
        stored_again = store.get_result(trace_id, KIND, result_key(0, 3, 0, CausalParams()))
        assert "note" not in stored_again and stored_again["head"] == 3
        other = cached_explanations(
            store, trace_id, 1, 2, CausalParams(max_radius=1), heads=[0], workers=1
        )
        assert other[0].params.max_radius == 1 and list(other[0].explanation_by_radius) == [1]
        with pytest.raises(ValueError, match="layer must be >= 0"):
            cached_explanations(store, trace_id, -1, 0)


def test_record_causal_stores_every_token_of_the_last_layer(stored):
    root, trace_id = stored
    progress = []
    with open_store(root, writable=True) as store:
        computed = record_causal(
            store, trace_id, workers=1, on_progress=lambda d, t: progress.append((d, t))
        )
        keys = set(store.list_results(trace_id, KIND))
        payload = store.get_result(trace_id, KIND, result_key(1, 0, 2, CausalParams()))
        assert record_causal(store, trace_id, [1, -1], workers=1) == 0  # all cached already
        with pytest.raises(IndexError, match="layer 2"):
            record_causal(store, trace_id, [2])
    assert computed == 12
    assert keys == {result_key(1, h, k, CausalParams()) for h in range(4) for k in range(3)}
    assert progress == [(d, 12) for d in range(1, 13)]
    assert payload["layer"] == 1 and payload["token"] == 2 and payload["num_heads"] == 4
    assert payload["causal_params"]["ancestor_pruning"] is True


def test_head_ranking_orders_by_importance_then_head(trace):
    results = explain_layer(trace, 1, 1, workers=1)
    for r, value in zip(results, [2.0, 5.0, 2.0, 0.0], strict=True):
        r.head_importance = value
    assert head_ranking(results) == [(1, 5.0), (0, 2.0), (2, 2.0), (3, 0.0)]


def test_degenerate_traces_give_clear_finite_results():
    base = make_synthetic_trace(num_layers=1, num_heads=3, prompt_len=40, answer_len=1, grid=(4, 5))
    att = base.lm_attention.copy()
    att[0, 0] = 0.0
    att[0, 0, :, 0] = 1.0  # head 0: every query on the sink, none on the image
    att[0, 1, :, :] = np.tril(np.ones(att.shape[2:], np.float16))  # head 1: uniform
    att[0, 1] /= att[0, 1].sum(-1, keepdims=True)
    one_token = replace(base, lm_attention=att)
    results = explain_layer(one_token, 0, 0, workers=1)  # 1-token answer: the only token
    for r in results:
        assert np.isfinite(r.head_importance)
        json.dumps(r.to_dict(), allow_nan=False)
    sink = results[0]
    image = set(one_token.tokens.image_positions.tolist())
    assert len(image & set(sink.nodes)) == 2  # the two image nodes select_nodes always keeps
    assert sink.target == one_token.tokens.prompt_length - 1
    with pytest.raises(IndexError, match="answer token 1"):
        explain_token(one_token, 0, 0, 1)
