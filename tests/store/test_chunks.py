"""The direct Blosc2 read path returns exactly what h5py returns, or declines."""

from __future__ import annotations

import numpy as np
import pytest

from store import _chunks
from store._h5 import open_file


@pytest.mark.parametrize("lossy", [False, "log8"])
def test_fast_read_matches_h5py(store, make_trace, lossy):
    tid = store.add(make_trace(seed=3), lossy=lossy)
    with open_file(str(store.layout.trace_path(tid))) as f:
        ds = f["lm_attention"]
        t = ds.shape[2]
        indexes = [
            (1, 2, slice(None), slice(None)),
            (slice(None), slice(None), t - 3, slice(None)),
            (slice(None), slice(None), slice(5, t - 1), slice(3, 30)),
            (slice(0, 2), slice(1, 3), slice(10, 40), slice(None)),
            (2, slice(None), slice(None), slice(None)),
        ]
        for index in indexes:
            got = _chunks.read(ds, index)
            assert got is not None, index  # the fast path applies to these
            want = ds[index]
            assert got.dtype == want.dtype and np.array_equal(got, want), index
        # index arrays, steps and single chunks are left to h5py
        assert _chunks.read(ds, (0, 0, np.array([1, 5]), slice(None))) is None
        assert _chunks.read(ds, (0, 0, slice(0, t, 2), slice(None))) is None
        assert _chunks.read(ds, (0, 0, 3, slice(None))) is None
