"""Round trips through a real store: lossless must be exact, lossy within its stated bound."""

import h5py
import hdf5plugin  # noqa: F401 - registers the Blosc2 filter for plain h5py reads
import numpy as np
import pytest

from store import (
    FORMAT_VERSION,
    LOG8_RELATIVE_ERROR,
    LOG8_ZERO_BELOW,
    SPARSE_THRESHOLD,
    CorruptTrace,
    FormatTooNew,
    Precision,
    StoredTrace,
)

from ._compare import assert_same


def test_lossless_round_trip_is_exact(store, make_trace):
    trace = make_trace(seed=1)
    trace.info.tags = ["demo"]
    trace.info.metrics = {"accuracy": 0.5}
    tid = store.add(trace)
    with store.open(tid) as st:
        back = st.read()
        assert st.precision is Precision.LOSSLESS
    assert back.lm_attention.dtype == np.float16
    assert np.array_equal(back.lm_attention, trace.lm_attention)
    assert_same(back, trace)


def test_accessors_match_numpy_slices(store, make_trace):
    trace = make_trace(seed=2)
    ref = trace.lm_attention.astype(np.float32)
    p, n = trace.tokens.prompt_length, trace.tokens.answer_length
    img = trace.tokens.image_positions
    with store.open(store.add(trace)) as st:
        assert (
            (st.num_layers, st.num_heads, st.seq_len) == ref.shape[:3] == st.lm_attention.shape[:3]
        )
        assert st.prompt_length == p and st.answer_length == n
        assert np.array_equal(st.attention(1, 2), ref[1, 2])
        assert np.array_equal(st.attention(-1, -1), ref[-1, -1])
        assert st.attention(0, 0).dtype == np.float32
        assert np.array_equal(st.answer_attention(3), ref[:, :, p - 1 + 3])
        assert np.array_equal(st.attention_heads(2, [1, 2]), ref[2, [1, 2]])
        assert np.array_equal(st.attention_heads(0, [3, 0, 3]), ref[0, [3, 0, 3]])
        rows = [p + 2, 5, p + 2, 7]  # unsorted, duplicated
        assert np.array_equal(st.attention_rows(rows), ref[:, :, rows])
        assert np.array_equal(st.attention_rows(rows, layers=[2, 0]), ref[[2, 0]][:, :, rows])
        answer_rows = range(p - 1, p - 1 + n)
        block = st.attention_block(answer_rows, img)
        assert block.shape == (3, 4, n, len(img))
        assert np.array_equal(block, ref[:, :, p - 1 : p - 1 + n][..., img])
        cols = [30, 2, 9]  # non-contiguous, unsorted
        assert np.array_equal(st.attention_block([4, 1], cols), ref[:, :, [4, 1]][..., cols])
        vis = trace.vision_attention[0].astype(np.float32)
        assert st.has_vision_attention and st.vision_shape == vis.shape
        assert np.array_equal(st.vision_attention(1, 0), vis[1, 0])
        assert np.array_equal(st.vision_attention_layer(0), vis[0])
        with pytest.raises(IndexError):
            st.attention(3, 0)
        with pytest.raises(IndexError):
            st.answer_attention(n)
        with pytest.raises(IndexError):
            st.attention_rows([st.seq_len])
        with pytest.raises(IndexError):
            st.attention_heads(0, [st.num_heads])


def test_trace_without_vision_or_relevancy(store, make_trace):
    trace = make_trace(vision_layers=0, with_relevancy=False)
    with store.open(store.add(trace)) as st:
        assert not st.has_vision_attention and st.vision_shape is None
        assert st.vision_attention(0, 0) is None and st.vision_attention_layer(0) is None
        assert st.relevancy is None
        assert st.read().vision_attention is None


@pytest.mark.parametrize("lossy", ["log8", True])
def test_log8_within_stated_bound(store, make_trace, lossy):
    trace = make_trace(seed=4)
    ref = trace.lm_attention.astype(np.float32)
    with store.open(store.add(trace, lossy=lossy)) as st:
        assert st.precision is Precision.LOG8
        got = np.stack([st.attention(layer, h) for layer in range(3) for h in range(4)])
        got = got.reshape(ref.shape)
        p = st.prompt_length
        assert np.allclose(st.answer_attention(0), got[:, :, p - 1])
        full = st.read().lm_attention.astype(np.float32)
    floor = LOG8_ZERO_BELOW * ref.max(-1, keepdims=True)
    big = ref >= floor
    assert (np.abs(got - ref)[big] <= LOG8_RELATIVE_ERROR * ref[big]).all()
    assert (np.abs(got - ref)[~big] <= np.broadcast_to(floor, ref.shape)[~big]).all()
    assert (got[ref == 0] == 0).all()
    # read() gives float16: the bound plus fp16 rounding (2**-11 relative)
    tol = (1 + LOG8_RELATIVE_ERROR) * (1 + 2**-11) - 1
    assert (np.abs(full - ref)[big] <= tol * ref[big]).all()


def test_sparse_within_stated_bound(store, make_trace):
    trace = make_trace(seed=5, prompt_len=120, grid=(6, 8), noise=3.0)
    ref = trace.lm_attention
    assert (ref[ref > 0] < SPARSE_THRESHOLD).any(), "test needs values below the threshold"
    with store.open(store.add(trace, lossy="sparse")) as st:
        back = st.read().lm_attention
    keep = ref >= SPARSE_THRESHOLD
    assert np.array_equal(back[keep], ref[keep])
    assert (back[~keep] == 0).all()


def test_plain_h5py_can_read_the_file(store, make_trace):
    trace = make_trace(seed=6)
    tid = store.add(trace)
    with h5py.File(store.layout.trace_path(tid), "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION and f.attrs["trace_id"] == tid
        assert f["lm_attention"].chunks == (1, 4, 16, 46)
        assert np.array_equal(f["lm_attention"][2, 1], trace.lm_attention[2, 1])
        assert f["tokens/text"].asstr()[()].tolist() == trace.tokens.text


def test_not_hdf5_gives_corrupt_trace(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(CorruptTrace, match="not a readable HDF5"):
        StoredTrace(bad)
    with pytest.raises(CorruptTrace, match="missing"):
        StoredTrace(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CorruptTrace, match="not a lvlm-interpret trace"):
        StoredTrace(tmp_path / "other.h5")


def test_newer_format_is_refused_clearly(store, make_trace):
    tid = store.add(make_trace())
    path = store.layout.trace_path(tid)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(FormatTooNew, match="pip install -U"):
        store.open(tid)
