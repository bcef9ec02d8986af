"""Relevancy modes on disk: format 2 holds all four, format-1 files stay readable and say so."""

from __future__ import annotations

import h5py
import numpy as np

from store import RelevancyMode


def test_every_mode_round_trips(store, make_trace):
    trace = make_trace()
    trace_id = store.add(trace)
    with store.open(trace_id) as stored:
        relevancy = stored.relevancy
    assert relevancy.modes == list(RelevancyMode)
    assert relevancy.legacy_note is None
    for mode in RelevancyMode:
        np.testing.assert_array_equal(relevancy.map(mode), trace.relevancy.map(mode))


def test_format_one_trace_reads_its_all_as_llm_through_vision(store, make_trace):
    trace = make_trace()
    trace_id = store.add(trace)
    with store.open(trace_id) as stored:
        path = stored.path
    with h5py.File(path, "r+") as f:  # rewrite as lvlm-interpret 0.1 wrote it
        f.attrs["format_version"] = 1
        group = f["relevancy"]
        del group["all"]
        group.move("llm_through_vision", "all")
    with store.open(trace_id) as stored:
        relevancy = stored.relevancy
    assert relevancy.all is None
    assert relevancy.map(RelevancyMode.ALL) is None
    assert RelevancyMode.ALL not in relevancy.modes
    np.testing.assert_array_equal(relevancy.llm_through_vision, trace.relevancy.llm_through_vision)
    assert "llm_through_vision" in relevancy.legacy_note
