"""CLEANN as a map method on a real demo trace: ``analyse --metrics cleann`` computes the
explanations ``record --causal`` would (under the Causal page's keys, once), and the map's
positive patches are the explanation's image tokens' patches, worked out here from the
stored per-head payloads."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cli import app
from methods import get
from methods.cleann.method import CleannMapParams
from methods.cleann.trace import KIND, CausalParams, record_causal, result_key
from methods.maps import MAPS_KIND, stored_maps
from store import StoreReadOnly, TraceQuery, open_store
from store.schema import TokenRole

runner = CliRunner()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """One demo trace recorded without explanations, then analysed with cleann."""
    store = tmp_path_factory.mktemp("cleann") / "store"
    args = ["demo", "record", "--store", str(store), "--count", "1", "--no-causal"]
    recorded = runner.invoke(app, args)
    assert recorded.exit_code == 0, recorded.output
    with open_store(store) as opened:
        (info,) = opened.query().items
        assert opened.list_results(info.trace_id, KIND) == {}
    analysed = runner.invoke(
        app, ["analyse", info.trace_id, "--store", str(store), "--metrics", "cleann"]
    )
    assert analysed.exit_code == 0, analysed.output
    assert f"{info.trace_id} maps: cleann@" in analysed.output
    return store, info.trace_id


def _expected_positive(store, trace_id: str) -> list[set[int]]:
    """Per answer token: the patches read by the image tokens of the explanation of the head
    with the largest stored head importance (lower head on ties), last layer."""
    out = []
    with store.open(trace_id) as trace:
        last, roles = trace.num_layers - 1, np.asarray(trace.tokens.roles)
        mapping = trace.image.token_patches
        for k in range(trace.answer_length):
            payloads = [
                store.get_result(trace_id, KIND, result_key(last, h, k, CausalParams()))
                for h in range(trace.num_heads)
            ]
            best = max(payloads, key=lambda p: (p["head_importance"], -p["head"]))
            members = {v for vs in best["explanation_by_radius"].values() for v in vs}
            images = [v for v in members if roles[v] == TokenRole.IMAGE]
            out.append({int(p) for v in images for p in mapping.patches[mapping.rows == v]})
    return out


def test_analyse_stores_what_record_causal_would_under_its_keys(plain):
    store, trace_id = plain
    with open_store(store, writable=True) as opened:
        with opened.open(trace_id) as trace:
            heads, tokens, last = trace.num_heads, trace.answer_length, trace.num_layers - 1
        keys = set(opened.list_results(trace_id, KIND))
        assert keys == {
            result_key(last, h, k, CausalParams()) for h in range(heads) for k in range(tokens)
        }
        assert record_causal(opened, trace_id) == 0  # nothing left for record --causal to do
        before = opened.list_results(trace_id, KIND)
    again = runner.invoke(app, ["analyse", trace_id, "--store", str(store), "--metrics", "cleann"])
    assert again.exit_code == 0, again.output
    with open_store(store) as opened:
        assert opened.list_results(trace_id, KIND) == before  # read back, not recomputed
        (key,) = opened.list_results(trace_id, MAPS_KIND)  # one summary, replaced in place
        payload = opened.get_result(trace_id, MAPS_KIND, key)
        # per head only the shown head's number and index: no explanation is copied
        assert set(payload["per_token"]) == {"map", "head", "head_importance", "image_tokens"}
        explained = sum(n > 0 for n in payload["per_token"]["image_tokens"])
        found = opened.query(TraceQuery(metric_ranges={"explained_tokens.cleann": (1, None)}))
        assert explained >= 1 and [t.trace_id for t in found.items] == [trace_id]


def test_map_positive_patches_are_the_explanations_image_patches(plain):
    store, trace_id = plain
    with open_store(store) as opened:
        maps = stored_maps(opened, trace_id)
        expected = _expected_positive(opened, trace_id)
        with opened.open(trace_id) as trace:
            assert maps["cleann"].shape == (trace.answer_length, trace.image.num_patches)
    positive = [set(np.flatnonzero(row > 0).tolist()) for row in maps["cleann"]]
    assert positive == expected
    assert any(expected)  # the check is not vacuous


def test_one_head_and_read_only_store(plain, tmp_path):
    store, trace_id = plain
    method = get("cleann")()
    with open_store(store) as opened, opened.open(trace_id) as trace:
        assert method.skip_reason(trace) is None
        fixed = method.run(trace, CleannMapParams(head=0), store=opened)  # all cached
        assert fixed.per_token["head"] == [0] * trace.answer_length
        with pytest.raises(ValueError, match="out of range"):
            method.run(trace, CleannMapParams(layer=trace.num_layers), store=opened)
        # another layer is not stored: a read-only store refuses before computing anything
        with pytest.raises(StoreReadOnly):
            method.run(trace, CleannMapParams(layer=0), store=opened)
