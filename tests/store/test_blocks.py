"""Block reads return exactly what h5py returns through the filter, or decline."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from store import _blocks
from store._blocks import reading, writing
from store._h5 import attention_datasets, open_file, vision_datasets


def _indexes(t: int) -> list[tuple]:
    return [
        (1, 2, slice(None), slice(None)),  # a heatmap
        (slice(None), slice(None), t - 3, slice(None)),  # one row, every layer and head
        (slice(None), slice(None), slice(5, t - 1), slice(3, 30)),  # a block
        (slice(0, 2), slice(1, 3), slice(10, 40), slice(None)),
        (2, slice(None), slice(None), slice(None)),  # a whole layer
        (0, 0, 3, slice(None)),  # a single row of a single head
        (2, 1, slice(t - 2, t), slice(t - 5, t)),  # inside the padded last chunk
    ]


@pytest.mark.parametrize("lossy", [False, "sparse", "log8"])
def test_block_read_matches_h5py(store, make_trace, lossy):
    tid = store.add(make_trace(seed=3), lossy=lossy)
    with open_file(str(store.layout.trace_path(tid))) as f:
        blocked, _ = attention_datasets(f, "lm_attention")
        assert blocked.header is not None  # the writer produced a usable block table
        t = blocked.values.shape[2]
        for index in _indexes(t):
            got = _blocks.read(blocked, index)
            assert got is not None, index
            want = blocked.values[index]  # h5py + hdf5plugin decode the same chunks
            assert got.dtype == want.dtype and np.array_equal(got, want), index
            as_float = _blocks.read(blocked, index, np.float32)
            assert as_float.dtype == np.float32 and np.array_equal(as_float, want), index
        # index arrays and steps are left to h5py
        assert _blocks.read(blocked, (0, 0, np.array([1, 5]), slice(None))) is None
        assert _blocks.read(blocked, (0, 0, slice(0, t, 2), slice(None))) is None


def test_vision_attention_is_blocked_too(store, make_trace):
    tid = store.add(make_trace(seed=4, crops=(1, 2), prompt_len=80))
    with open_file(str(store.layout.trace_path(tid))) as f:
        sequences = vision_datasets(f)
        assert len(sequences) == 3
        for blocked, _ in sequences:
            got = _blocks.read(blocked, (1, 0, slice(None), slice(None)))
            assert got is not None and np.array_equal(got, blocked.values[1, 0])


def test_one_block_per_head_in_every_chunk(store, make_trace):
    """Each stored chunk is a Blosc2 frame whose block size is one head's rows."""
    tid = store.add(make_trace(seed=5))
    with open_file(str(store.layout.trace_path(tid))) as f:
        ds = f["lm_attention"]
        _, heads, rows, cols = ds.chunks
        header = f["lm_attention_blocks"].attrs["chunk_header"].tobytes()
        assert int.from_bytes(header[8:12], "little") == rows * cols * ds.dtype.itemsize
        table = f["lm_attention_blocks"][()]
        assert table.shape == (ds.shape[0], -(-ds.shape[2] // rows), heads, 2)
        assert (table[..., 1] > table[..., 0]).all()


def test_a_copied_file_falls_back_to_h5py(store, make_trace, tmp_path):
    """Copying datasets to a new file moves the chunks; the stale table must not be used."""
    tid = store.add(make_trace(seed=6))
    copy = tmp_path / "copy.h5"
    with open_file(str(store.layout.trace_path(tid))) as src, h5py.File(copy, "w") as dst:
        dst.create_dataset("padding", data=np.arange(50_000))  # shift everything after it
        for name in ("lm_attention", "lm_attention_blocks"):
            src.copy(src[name], dst, name)
    with h5py.File(copy, "r") as f:
        blocked, _ = attention_datasets(f, "lm_attention")
        assert blocked.header is None
        assert _blocks.read(blocked, (1, 1, slice(None), slice(None))) is None


def test_files_without_a_table_read_through_h5py(tmp_path):
    import hdf5plugin

    path = tmp_path / "plain.h5"
    values = np.random.default_rng(0).random((2, 3, 20, 20)).astype(np.float16)
    with h5py.File(path, "w") as f:
        f.create_dataset("lm_attention", data=values, chunks=(1, 3, 16, 20), **hdf5plugin.Blosc2())
    with h5py.File(path, "r") as f:
        blocked, _ = attention_datasets(f, "lm_attention")
        assert _blocks.read(blocked, (0, 0, slice(None), slice(None))) is None


@pytest.mark.parametrize(
    "shape",
    [
        dict(num_heads=1, prompt_len=9, answer_len=3, grid=(2, 2)),  # fewer rows than a chunk
        dict(num_heads=7, prompt_len=50, answer_len=2, grid=(3, 3)),  # odd head count
    ],
)
def test_unusual_shapes_read_exactly(store, make_trace, shape):
    tid = store.add(make_trace(seed=8, **shape))
    with open_file(str(store.layout.trace_path(tid))) as f:
        blocked, _ = attention_datasets(f, "lm_attention")
        assert blocked.header is not None
        n_layers, n_heads, t, _ = blocked.values.shape
        for index in [
            (n_layers - 1, n_heads - 1, slice(None), slice(None)),
            (slice(None), slice(None), t - 1, slice(None)),
            (slice(None), slice(n_heads // 2, n_heads), slice(1, t), slice(0, t - 1)),
        ]:
            got = _blocks.read(blocked, index)
            assert np.array_equal(got, blocked.values[index]), index


def test_without_the_frame_shortcut_files_stay_readable(store, make_trace, monkeypatch):
    """If python-blosc2's frame layout ever differs, chunks are framed by python-blosc2
    itself: the file reads the same through h5py, and block reads decline."""
    monkeypatch.setattr(writing._Frame, "learn", classmethod(lambda cls, chunk, cparams: None))
    trace = make_trace(seed=9)
    tid = store.add(trace)
    with open_file(str(store.layout.trace_path(tid))) as f:
        blocked, _ = attention_datasets(f, "lm_attention")
        assert np.array_equal(blocked.values[()], trace.lm_attention)
        assert blocked.header is None
        assert _blocks.read(blocked, (0, 1, slice(None), slice(None))) is None


@pytest.mark.parametrize("parallel_from", [0, reading.PARALLEL_BYTES])
def test_threads_sharing_one_trace_read_exactly(store, make_trace, monkeypatch, parallel_from):
    """The dashboard reads one open trace from several script threads at once (with every
    read on the reader threads too, when ``parallel_from`` is 0)."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(reading, "PARALLEL_BYTES", parallel_from)
    trace = make_trace(seed=10, num_layers=4, num_heads=6, prompt_len=120)
    tid = store.add(trace)
    with store.open(tid) as stored:
        n_layers, n_heads = trace.lm_attention.shape[:2]

        def check(i: int) -> bool:
            layer, head, k = i % n_layers, i % n_heads, i % trace.tokens.answer_length
            heat = stored.attention(layer, head)
            row = stored.answer_attention(k)
            want_row = trace.lm_attention[:, :, trace.tokens.prompt_length - 1 + k]
            return np.array_equal(heat, trace.lm_attention[layer, head].astype(np.float32)) and (
                np.array_equal(row, want_row.astype(np.float32))
            )

        with ThreadPoolExecutor(6) as pool:
            assert all(pool.map(check, range(60)))
