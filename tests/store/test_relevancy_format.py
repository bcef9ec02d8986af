"""Relevancy modes on disk: format 2 holds all four, format-1 files stay readable and say so."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from store import RelevancyMode, open_store, reindex_store

from .test_format3 import FORMAT2

FORMAT2_ID = "f2" * 16

LVLM_INTERPRET = Path(sys.executable).parent / "lvlm-interpret"


def test_every_mode_round_trips(store, make_trace):
    trace = make_trace()
    trace_id = store.add(trace)
    with store.open(trace_id) as stored:
        relevancy = stored.relevancy
    assert relevancy.modes == list(RelevancyMode)
    assert relevancy.legacy_note is None
    for mode in RelevancyMode:
        np.testing.assert_array_equal(relevancy.map(mode), trace.relevancy.map(mode))
    with store.open(trace_id) as stored, h5py.File(stored.path, "r") as f:
        for mode in RelevancyMode:  # plain h5py readers learn the definition too
            assert f["relevancy"][mode.value].attrs["definition"] == mode.definition


@pytest.fixture
def format_one(store_dir) -> tuple[str, np.ndarray]:
    """A store holding one trace file as lvlm-interpret 0.1 wrote it (format 1: its "all" is
    today's llm_through_vision), made from a real format-2 file; its id and that map."""
    with open_store(store_dir, writable=True) as st:
        path = st.layout.trace_path(FORMAT2_ID)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(FORMAT2, path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
        through = f["relevancy/llm_through_vision"][()]
        del f["relevancy/all"]
        f["relevancy"].move("llm_through_vision", "all")
    reindex_store(store_dir)
    return FORMAT2_ID, through


def test_format_one_trace_reads_its_all_as_llm_through_vision(store_dir, format_one):
    trace_id, through = format_one
    with open_store(store_dir) as st, st.open(trace_id) as stored:
        relevancy = stored.relevancy
    assert relevancy.all is None
    assert relevancy.map(RelevancyMode.ALL) is None
    assert RelevancyMode.ALL not in relevancy.modes
    np.testing.assert_array_equal(relevancy.llm_through_vision, through)
    assert "llm_through_vision" in relevancy.legacy_note


def _relevancy_cli(store_dir, *args: str) -> subprocess.CompletedProcess:
    command = [str(LVLM_INTERPRET), "store", "relevancy", *args, "--store", str(store_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _printed_grid(stdout: str, rows: int) -> np.ndarray:
    lines = [line.split() for line in stdout.splitlines() if line.strip()][-rows:]
    return np.array(lines, dtype=np.float64) / 100


def test_cli_prints_each_mode_on_the_patch_grid(store, store_dir, make_trace):
    trace = make_trace(grid=(4, 5))
    trace_id = store.add(trace)
    positions = trace.tokens.image_positions
    patches = trace.tokens.image_patch[positions]
    for mode in RelevancyMode:
        done = _relevancy_cli(store_dir, trace_id, "--mode", mode.value, "--token", "2")
        assert done.returncode == 0, done.stderr
        assert mode.definition[:40] in " ".join(done.stdout.split())
        if mode is RelevancyMode.LLM:
            expected = np.zeros(20)
            expected[patches] = trace.relevancy.llm[2, positions]
        else:
            expected = trace.relevancy.map(mode)[2]
        np.testing.assert_allclose(_printed_grid(done.stdout, 4).ravel(), expected, atol=5e-5)


def test_cli_refuses_what_the_trace_does_not_hold(store_dir, format_one):
    trace_id, _ = format_one
    for args in (["--mode", "all"], ["--token", "99"], ["--mode", "bogus"]):
        done = _relevancy_cli(store_dir, trace_id, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stdout == "" and done.stderr.startswith("error: ")
        assert len(done.stderr.splitlines()) == 1, done.stderr
    done = _relevancy_cli(store_dir, trace_id, "--mode", "llm_through_vision")
    assert done.returncode == 0
