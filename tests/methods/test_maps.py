"""Maps other methods stored are read back by name: the newest version wins, and a payload
that is not a finite [N, G] array is never used."""

from __future__ import annotations

import numpy as np

from methods.maps import MAPS_KIND, MapChoice, candidate_maps, stored_maps
from store import open_store
from store.synthetic import make_synthetic_trace


def _payload(version: str, values) -> dict:
    return {"method": "occlusion", "version": version, "per_token": {"map": values}}


def test_the_newest_version_wins_and_bad_payloads_are_skipped(tmp_path):
    trace = make_synthetic_trace(num_layers=2, prompt_len=24, answer_len=3, grid=(2, 2))
    with open_store(tmp_path / "store", writable=True) as st:
        trace_id = st.add(trace)
        with st.open(trace_id) as stored:
            n, g = stored.answer_length, stored.image.num_patches
        old, new = np.zeros((n, g)), np.arange(n * g, dtype=float).reshape(n, g)
        st.put_result(trace_id, MAPS_KIND, "occlusion@9/aaa", _payload("9", old.tolist()))
        st.put_result(trace_id, MAPS_KIND, "occlusion@10/bbb", _payload("10", new.tolist()))
        bad = {"method": "cleann", "version": "1", "per_token": {"map": [["x"]]}}
        st.put_result(trace_id, MAPS_KIND, "cleann@1/ccc", bad)
        nan = _payload("1", [[float("nan")] * g] * n) | {"method": "nan"}
        st.put_result(trace_id, MAPS_KIND, "nan@1/ddd", nan)
        found = stored_maps(st, trace_id)
        assert set(found) == {"occlusion"}
        np.testing.assert_array_equal(found["occlusion"], new)  # "10" is newer than "9"
        wrong_shape = {"other": np.ones((n + 1, g))}
        impostor = {"relevancy.llm": np.ones((n, g)), "random": np.ones((n, g))}
        with st.open(trace_id) as stored:
            maps = candidate_maps(stored, MapChoice(), found | wrong_shape | impostor)
            own = candidate_maps(stored, MapChoice())
        assert "occlusion" in maps and "other" not in maps
        for name in impostor:  # a stored result never replaces the trace's own map
            np.testing.assert_array_equal(maps[name], own[name])
