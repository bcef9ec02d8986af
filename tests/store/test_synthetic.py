import numpy as np
import pytest

from store import RecordingPolicy, TokenRole
from store.policy import policy_rows
from store.synthetic import make_synthetic_trace


def _rows_sum_to_one(att: np.ndarray) -> None:
    np.testing.assert_allclose(att.astype(np.float32).sum(-1), 1.0, atol=3e-3)


def test_attention_is_causal_softmax_and_tables_agree():
    tr = make_synthetic_trace(num_layers=2, num_heads=3, prompt_len=30, answer_len=5, grid=(3, 4))
    att = tr.lm_attention.astype(np.float32)
    t = len(tr.tokens.text)
    assert att.shape == (2, 3, t, t) and tr.lm_attention.dtype == np.float16
    _rows_sum_to_one(att)
    assert not np.triu(att, k=1).any(), "attention must be causal"
    roles = tr.tokens.roles
    assert (roles == TokenRole.IMAGE).sum() == 12
    assert (roles[tr.tokens.prompt_length :] == TokenRole.ANSWER).all()
    assert (tr.tokens.image_patch[tr.tokens.image_positions] == np.arange(12)).all()
    assert (tr.tokens.image_index[tr.tokens.image_positions] == 0).all()
    assert tr.info.answer.split() == tr.tokens.text[tr.tokens.prompt_length :]
    assert tr.summaries.attention_shares.shape == (2, 3, 5, 3)
    np.testing.assert_allclose(tr.summaries.attention_shares.sum(-1), 1.0, atol=2e-3)
    assert tr.relevancy.llm.shape == (5, t) and tr.relevancy.all.shape == (5, 12)
    assert tr.relevancy.llm_through_vision.shape == (5, 12)
    assert [v.shape for v in tr.vision_attention] == [(2, 2, 13, 13)]
    assert tr.image.single_grid == (3, 4) and tr.image.vision_has_cls
    assert tr.image.patch_boxes.shape == (12, 4) and tr.lm_rows is None
    w, h = tr.image.original_size
    assert tr.image.images[0].pixels.shape == (h, w, 3)
    # the one tile's patches tile the whole image
    boxes = tr.image.patch_boxes
    assert boxes[:, 0].min() == 0 and boxes[:, 2].max() == w and boxes[:, 3].max() == h


def test_same_seed_same_tensors_and_image_heads_look_at_the_image():
    a = make_synthetic_trace(seed=3, trace_id="0" * 32)
    b = make_synthetic_trace(seed=3, trace_id="0" * 32)
    assert np.array_equal(a.lm_attention, b.lm_attention) and a.info == b.info
    # the red disk drawn on the image is where image-looking heads attend
    pixels = a.image.images[0].pixels
    red_y, red_x = np.argwhere((pixels == (200, 40, 40)).all(-1)).mean(0)
    p, n = a.tokens.prompt_length, a.tokens.answer_length
    rows = a.lm_attention[:, :, p - 1 : p - 1 + n][..., a.tokens.image_positions]
    peak = rows.astype(np.float32).mean((0, 1, 2)).argmax()
    x0, y0, x1, y1 = a.image.patch_boxes[a.tokens.image_patch[a.tokens.image_positions[peak]]]
    cell = x1 - x0
    assert np.hypot((x0 + x1) / 2 - red_x, (y0 + y1) / 2 - red_y) <= 1.5 * cell


def test_crops_merge_row_breaks_and_several_images():
    tr = make_synthetic_trace(
        prompt_len=80, grid=[(4, 6), (2, 4)], crops=(2, 2), merge=2, row_breaks=True
    )
    geo, tok = tr.image, tr.tokens
    assert len(geo.images) == 2 and len(geo.tiles) == 10
    assert [t.kind for t in geo.tiles[:5]] == ["global", "crop", "crop", "crop", "crop"]
    assert [t.image for t in geo.tiles] == [0] * 5 + [1] * 5
    # crops split the image into a 2x2 layout of boxes in original pixels
    w, h = geo.images[0].size
    assert geo.tiles[4].box == (w / 2, h / 2, w, h)
    # every patch box lies inside its tile's box
    for i, tile in enumerate(geo.tiles):
        box = geo.patch_boxes[geo.tile_patches(i)]
        assert (box[:, :2] >= np.array(tile.box[:2]) - 1e-4).all()
        assert (box[:, 2:] <= np.array(tile.box[2:]) + 1e-4).all()
    assert (np.diff(geo.patch_tile) >= 0).all() and geo.num_patches == 5 * 24 + 5 * 8
    # image 0: 6 global tokens + a 4x6 token grid over the crops, 4 row breaks; image 1: 2+8+2
    on_image = tok.image_positions
    assert len(on_image) == (6 + 24 + 4) + (2 + 8 + 2)
    assert list(np.bincount(tok.image_index[on_image])) == [34, 12]
    # every token reads 4 patches of one tile with weight 1/4, except row breaks (none)
    pm = geo.token_patches
    reading = np.unique(pm.rows)
    assert len(reading) == len(on_image) - 6
    assert (np.bincount(pm.rows)[reading] == 4).all()
    np.testing.assert_allclose(pm.weights, 0.25)
    assert all(len(np.unique(geo.patch_tile[pm.patches[pm.rows == r]])) == 1 for r in reading)
    breaks = np.setdiff1d(on_image, reading)
    assert (tok.image_patch[breaks] == -1).all() and len(breaks) == 6
    # one vision sequence per tile, lengths differ between the images' grids
    assert [len(s) for s in geo.vision_sequences] == [25] * 5 + [9] * 5
    assert [v.shape[-1] for v in tr.vision_attention] == [25] * 5 + [9] * 5
    _rows_sum_to_one(tr.lm_attention)


def test_cls_less_tower_and_bidirectional_image_block():
    tr = make_synthetic_trace(vision_has_cls=False, bidirectional_images=True)
    assert tr.image.vision_summary == "mean" and not tr.image.vision_has_cls
    assert all((s >= 0).all() for s in tr.image.vision_sequences)
    img = tr.tokens.image_positions
    block = tr.lm_attention[:, :, img[0], img]
    assert (block[..., 1:] > 0).all(), "the first image token sees the later ones"
    assert not tr.lm_attention[:, :, img[-1], img[-1] + 1 :].any(), "text stays causal"


def test_cross_attention_has_no_image_tokens_and_maps_keys():
    tr = make_synthetic_trace(cross_attention=True, crops=(1, 2))
    assert not (tr.tokens.roles == TokenRole.IMAGE).any()
    assert "<|image|>" in tr.tokens.text and len(tr.image.token_patches.rows) == 0
    keys = tr.image.key_patches
    x = tr.cross_attention
    assert x.weights.shape[-1] == 3 * (1 + 24) and x.layers == [1, 3]
    assert x.weights.shape[:3] == (2, 4, len(tr.tokens.text))
    _rows_sum_to_one(x.weights)
    # every patch is read by exactly one key; each tile's CLS key reads none
    assert sorted(keys.patches) == list(range(tr.image.num_patches))
    assert len(np.setdiff1d(np.arange(x.weights.shape[-1]), keys.rows)) == 3


@pytest.mark.parametrize("policy", [RecordingPolicy.TEXT_ROWS, RecordingPolicy.ANSWER_ROWS])
def test_a_policy_keeps_exactly_the_full_traces_rows(policy):
    kw = dict(prompt_len=90, grid=(4, 6), crops=(1, 2), row_breaks=True, seed=4)
    full = make_synthetic_trace(**kw)
    part = make_synthetic_trace(**kw, policy=policy)
    rows = policy_rows(policy, full.tokens)
    assert np.array_equal(part.lm_rows, rows)
    assert np.array_equal(part.lm_attention, full.lm_attention[:, :, rows])
    assert np.array_equal(part.summaries.attention_shares, full.summaries.attention_shares)
    p, n = full.tokens.prompt_length, full.tokens.answer_length
    assert set(range(p - 1, p - 1 + n)) <= set(rows.tolist())


def test_rejects_impossible_layouts():
    with pytest.raises(ValueError):
        make_synthetic_trace(prompt_len=10, grid=(4, 6))
    with pytest.raises(ValueError, match="merge"):
        make_synthetic_trace(grid=(3, 4), merge=2)


def test_cross_attention_relevancy_sits_on_the_keys():
    rel = make_synthetic_trace(cross_attention=True).relevancy
    assert rel.all is None and rel.llm_keys.shape == (8, 25)
    np.testing.assert_allclose(rel.llm.sum(-1) + rel.llm_keys.sum(-1), 1.0, rtol=1e-5)
