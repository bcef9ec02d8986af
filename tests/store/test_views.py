"""The attention view: the same answers as numpy on the full tensor, in memory and stored."""

from __future__ import annotations

import numpy as np
import pytest

from store import MissingData, RecordingPolicy
from store.views import AttentionView

# Keys as users write them; each array picks along its own axis (np.ix_ semantics).
KEYS = [
    (1, 2),
    (-1, -2, 7),
    (slice(None), 0, 5, slice(2, 9)),
    (0, slice(1, 3), slice(30, 40), slice(None, None, 4)),
    (slice(None), slice(None), [44, 40, 44], slice(None)),
    (np.array([2, 0]), 1, slice(40, 44), np.array([0, 5, 7])),
    (slice(None), [3, 1], slice(38, 45), [30, 2, 9]),
    (Ellipsis, 41, slice(None)),
    (2, Ellipsis),
    (slice(None, None, -1), 0, 42),
    (0, 0, slice(5, 5)),
    (slice(None), slice(None), [3, 4, 20, 44], [1]),
]


def _numpy(full: np.ndarray, key: tuple) -> np.ndarray:
    """``full[key]`` with every array selecting along its own axis, ints dropping theirs."""
    if any(k is Ellipsis for k in key):
        key = _expand(key)
    key = key + (slice(None),) * (4 - len(key))
    axes = [
        np.arange(n)[k] if not isinstance(k, int) else np.array([k])
        for k, n in zip(key, full.shape, strict=True)
    ]
    out = full[np.ix_(*[np.atleast_1d(a) for a in axes])]
    return out[tuple(0 if isinstance(k, int) else slice(None) for k in key)]


def _expand(key: tuple) -> tuple:
    at = next(i for i, k in enumerate(key) if k is Ellipsis)
    return key[:at] + (slice(None),) * (5 - len(key)) + key[at + 1 :]


@pytest.fixture
def full_and_stored(store, make_trace):
    trace = make_trace(seed=21)
    with store.open(store.add(trace)) as st:
        yield trace, st


@pytest.mark.parametrize("key", KEYS, ids=[str(k) for k in KEYS])
def test_view_equals_numpy_in_memory_and_stored(full_and_stored, key):
    trace, st = full_and_stored
    ref = _numpy(trace.lm_attention.astype(np.float32), key)
    for view in (trace.lm_view, st.lm_attention):
        got = view[key]
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.array_equal(got, ref)


def test_a_policy_view_reads_kept_rows_by_absolute_position(store, make_trace):
    full = make_trace(seed=22)
    part = make_trace(seed=22, policy=RecordingPolicy.TEXT_ROWS)
    ref = full.lm_attention.astype(np.float32)
    kept = part.lm_rows
    with store.open(store.add(part)) as st:
        for view in (part.lm_view, st.lm_attention):
            assert view.shape == ref.shape and np.array_equal(view.kept_rows, kept)
            assert np.array_equal(view[:, :, kept[::-1]], ref[:, :, kept[::-1]])
            assert np.array_equal(view[1, 2, kept[-3:], 4:9], ref[1, 2, kept[-3:], 4:9])
            assert view.has_rows(kept) and not view.has_rows(full.tokens.image_positions)
            with pytest.raises(MissingData, match=r"text_rows.*--policy full"):
                view[0, 0]


def test_bad_keys_are_index_errors():
    view = AttentionView.of_array(np.zeros((2, 3, 4, 4), np.float16))
    for key in [(2,), (0, 3), (0, 0, 4), (0, 0, 0, -5), (0, 0, 0, 0, 0), (0, 0, [[1]]), (0.5,)]:
        with pytest.raises(IndexError):
            view[key]


def test_cross_attention_shaped_view_keeps_its_key_axis():
    weights = np.random.default_rng(0).random((2, 3, 5, 7)).astype(np.float16)
    view = AttentionView.of_array(weights)
    assert view.shape == (2, 3, 5, 7)
    assert np.array_equal(view[1, :, [4, 0]], weights[1][:, [4, 0]].astype(np.float32))
