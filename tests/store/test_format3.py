"""Trace format 3 on disk: every new field round-trips, policies, cross-attention, old files."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - registers the Blosc2 filter for plain h5py reads
import numpy as np
import pytest

from store import (
    LOG8_RELATIVE_ERROR,
    MissingData,
    RecordingPolicy,
    RelevancyMode,
    StoredTrace,
    TokenRole,
)
from store._h5 import chunk_rows

from ._compare import assert_same

FORMAT2 = Path(__file__).parent / "data" / "format2.h5"  # written by lvlm-interpret 0.2

SHAPES = {
    "one tile": {},
    "crops, two images, 2x2 merge, row breaks, no CLS": dict(
        prompt_len=90,
        grid=[(4, 6), (2, 4)],
        crops=(2, 2),
        merge=2,
        row_breaks=True,
        vision_has_cls=False,
    ),
    "cross-attention over crops": dict(cross_attention=True, crops=(1, 2)),
    "bidirectional image block, answer rows": dict(
        bidirectional_images=True, policy=RecordingPolicy.ANSWER_ROWS
    ),
    "text rows": dict(prompt_len=70, crops=(1, 2), policy=RecordingPolicy.TEXT_ROWS),
}


@pytest.mark.parametrize("kwargs", SHAPES.values(), ids=SHAPES.keys())
def test_every_field_round_trips_exactly(store, make_trace, kwargs):
    trace = make_trace(seed=11, **kwargs)
    with store.open(store.add(trace)) as st:
        back = st.read()
        assert st.policy is trace.policy
        assert st.vision_shapes == [v.shape for v in trace.vision_attention]
    assert_same(back, trace)


def test_log8_keeps_its_bound_on_every_tensor(store, make_trace):
    trace = make_trace(seed=12, cross_attention=True, policy=RecordingPolicy.TEXT_ROWS)
    with store.open(store.add(trace, lossy="log8")) as st:
        back = st.read()
    pairs = [(back.lm_attention, trace.lm_attention)]
    pairs += list(zip(back.vision_attention, trace.vision_attention, strict=True))
    pairs.append((back.cross_attention.weights, trace.cross_attention.weights))
    tol = (1 + LOG8_RELATIVE_ERROR) * (1 + 2**-11) - 1  # log8, then fp16 rounding
    for got, ref in pairs:
        got, ref = got.astype(np.float32), ref.astype(np.float32)
        big = ref >= 1e-3 * ref.max(-1, keepdims=True)
        assert (np.abs(got - ref)[big] <= tol * ref[big]).all()
    assert np.array_equal(back.lm_rows, trace.lm_rows)


def test_policy_rows_are_absolute_and_missing_rows_say_how_to_record(store, make_trace):
    kw = dict(seed=13, prompt_len=80, crops=(1, 2))
    full = make_trace(**kw)
    part = make_trace(**kw, policy=RecordingPolicy.ANSWER_ROWS)
    ref = full.lm_attention.astype(np.float32)
    p, n = full.tokens.prompt_length, full.tokens.answer_length
    with store.open(store.add(part)) as st:
        assert st.policy is RecordingPolicy.ANSWER_ROWS
        assert st.lm_attention.shape == ref.shape
        assert np.array_equal(st.answer_attention(2), ref[:, :, p + 1])
        assert np.array_equal(st.attention_rows([p + 1, p - 1]), ref[:, :, [p + 1, p - 1]])
        img = full.tokens.image_positions
        assert np.array_equal(
            st.attention_block(range(p - 1, p - 1 + n), img), ref[:, :, p - 1 : p - 1 + n][..., img]
        )
        assert st.has_rows(p - 1) and st.has_rows(slice(p - 1, p - 1 + n))
        assert not st.has_rows(0) and not st.has_rows([p - 1, 3])
        with pytest.raises(MissingData, match=r"answer_rows.*--policy text_rows"):
            st.attention(0, 0)
        with pytest.raises(MissingData, match=r"rows 3 were not recorded"):
            st.attention_rows([p - 1, 3])
    in_memory = part.lm_view
    assert np.array_equal(in_memory[:, 1, p - 1 : p + 2, ::3], ref[:, 1, p - 1 : p + 2, ::3])
    with pytest.raises(MissingData, match="answer_rows"):
        in_memory[0, 0, 0]


def test_text_rows_keep_the_prompt_words_but_not_the_image(store, make_trace):
    trace = make_trace(seed=14, policy=RecordingPolicy.TEXT_ROWS)
    words = np.flatnonzero(trace.tokens.roles != TokenRole.IMAGE)
    with store.open(store.add(trace)) as st:
        assert st.policy is RecordingPolicy.TEXT_ROWS and st.has_rows(words)
        assert not st.has_rows(trace.tokens.image_positions[:1])
        with pytest.raises(MissingData, match=r"text_rows.*--policy full"):
            st.attention_rows(trace.tokens.image_positions)


def test_cross_attention_reads_by_layer_and_rows(store, make_trace):
    trace = make_trace(seed=15, cross_attention=True)
    ref = trace.cross_attention.weights.astype(np.float32)
    rows = [trace.tokens.answer_row(k) for k in (0, 2)]
    with store.open(store.add(trace)) as st:
        assert st.cross_layers == trace.cross_attention.layers == [1]
        assert np.array_equal(st.cross_attention_rows(0, rows), ref[0][:, rows])
        assert np.array_equal(st.cross_attention[0, 2, 5], ref[0, 2, 5])
        assert st.cross_attention.shape == ref.shape
    with store.open(store.add(make_trace(seed=16))) as st:
        assert st.cross_layers is None and st.cross_attention is None
        with pytest.raises(MissingData, match="no cross-attention"):
            st.cross_attention_rows(0, [0])


def test_vision_attention_per_sequence(store, make_trace):
    trace = make_trace(seed=17, prompt_len=80, grid=[(4, 5), (2, 2)], crops=(1, 2))
    with store.open(store.add(trace)) as st:
        assert len(st.vision_shapes) == 6
        for s, ref in enumerate(trace.vision_attention):
            ref = ref.astype(np.float32)
            assert np.array_equal(st.vision_attention(1, 1, sequence=s), ref[1, 1])
            assert np.array_equal(st.vision_attention_layer(0, sequence=s), ref[0])
        with pytest.raises(IndexError, match="vision sequence"):
            st.vision_attention(0, 0, sequence=6)


def test_a_format_2_file_reads_as_one_image_of_one_tile(tmp_path):
    path = tmp_path / "old.h5"
    shutil.copy(FORMAT2, path)
    with h5py.File(path, "r") as f:  # plain h5py: the reference
        processed = f["image/processed"][()]
        lm = f["lm_attention"][()].astype(np.float32)
        vision = f["vision_attention"][()].astype(np.float32)
        image_patch = f["tokens/image_patch"][()]
        grid = (int(f["image"].attrs["grid_rows"]), int(f["image"].attrs["grid_cols"]))
    with StoredTrace(path) as st:
        assert st.format_version == 2 and st.policy is RecordingPolicy.FULL
        geo, tokens = st.image, st.tokens
        assert st.lm_rows is None and st.cross_layers is None
        np.testing.assert_array_equal(st.lm_attention[:, :, 5:9, :12], lm[:, :, 5:9, :12])
        assert np.array_equal(st.vision_attention_layer(1), vision[1])
        back = st.read()
    h, w = processed.shape[:2]
    assert len(geo.images) == 1 and geo.single_grid == grid
    assert np.array_equal(geo.images[0].pixels, processed) and geo.images[0].size == (w, h)
    assert np.array_equal(geo.processed, processed)
    assert geo.tiles[0].box == (0, 0, w, h) and geo.vision_summary == "cls"
    # patch boxes are the processed image's grid cells, row-major
    cell = np.array([w / grid[1], h / grid[0]])
    assert np.allclose(geo.patch_boxes[grid[1] + 1], [cell[0], cell[1], 2 * cell[0], 2 * cell[1]])
    on_image = tokens.image_positions
    assert np.array_equal(geo.token_patches.rows, on_image)
    assert np.array_equal(geo.token_patches.patches, image_patch[on_image])
    assert (tokens.image_index[on_image] == 0).all() and (
        tokens.image_index[: on_image[0]] == -1
    ).all()
    assert [len(s) for s in geo.vision_sequences] == [vision.shape[-1]] == [1 + grid[0] * grid[1]]
    llm = back.relevancy.on_patches(RelevancyMode.LLM, geo)
    np.testing.assert_allclose(llm[:, image_patch[on_image]], back.relevancy.llm[:, on_image])
    np.testing.assert_array_equal(back.relevancy.on_patches("llm", geo), llm)  # by name too


def test_a_format_2_file_copies_into_a_format_3_store(store, tmp_path):
    with StoredTrace(FORMAT2) as st:
        old = st.read()
    old.info.trace_id = ""
    with store.open(store.add(old)) as st:
        assert st.format_version == 3
        assert_same(st.read().tokens, old.tokens)
        assert np.array_equal(st.image.images[0].pixels, old.image.processed)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: setattr(t, "lm_rows", np.array([5, 3], np.int32)), "lm_rows"),
        (
            lambda t: setattr(t.image.token_patches, "weights", t.image.token_patches.weights * 2),
            "sum to 1",
        ),
        (
            lambda t: setattr(
                t.image.token_patches, "patches", t.image.token_patches.patches + 100
            ),
            "patches must lie",
        ),
        (lambda t: t.vision_attention.pop(), "sequences"),
        (lambda t: setattr(t.image, "patch_boxes", t.image.patch_boxes[:-1]), "patch_boxes"),
        (lambda t: setattr(t.tokens, "image_index", t.tokens.image_index + 1), "image_index"),
        (lambda t: setattr(t.image, "vision_summary", "first"), "vision_summary"),
        (lambda t: setattr(t.relevancy, "llm_keys", t.relevancy.vision), "llm_keys"),
    ],
)
def test_inconsistent_traces_are_refused_before_writing(store, make_trace, change, message):
    trace = make_trace(seed=18)
    change(trace)
    with pytest.raises(ValueError, match=message):
        store.add(trace)
    assert store.query().total == 0


def test_long_rows_take_fewer_rows_per_chunk():
    # 7B LLaVA-1.5 (T ~ 700) keeps the measured 16 rows; LLaVA-NeXT lengths take fewer, and a
    # policy's rows (read a token at a time) fewer still.
    assert chunk_rows(700, 700, 2, subset=False) == 16
    assert chunk_rows(3000, 3000, 2, subset=False) == 32 * 1024 // 6000
    assert chunk_rows(20, 3000, 2, subset=True) == 1
    assert chunk_rows(4, 3000, 1, subset=False) == 4
