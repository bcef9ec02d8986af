import numpy as np
import pytest

from store import TokenRole
from store.synthetic import make_synthetic_trace


def test_attention_is_causal_softmax_and_tables_agree():
    tr = make_synthetic_trace(num_layers=2, num_heads=3, prompt_len=30, answer_len=5, grid=(3, 4))
    att = tr.lm_attention.astype(np.float32)
    t = len(tr.tokens.text)
    assert att.shape == (2, 3, t, t) and tr.lm_attention.dtype == np.float16
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=2e-3)
    assert not np.triu(att, k=1).any(), "attention must be causal"
    roles = tr.tokens.roles
    assert (roles == TokenRole.IMAGE).sum() == 12
    assert (roles[tr.tokens.prompt_length :] == TokenRole.ANSWER).all()
    assert (tr.tokens.image_patch[tr.tokens.image_positions] == np.arange(12)).all()
    assert tr.info.answer.split() == tr.tokens.text[tr.tokens.prompt_length :]
    assert tr.summaries.attention_shares.shape == (2, 3, 5, 3)
    np.testing.assert_allclose(tr.summaries.attention_shares.sum(-1), 1.0, atol=2e-3)
    assert tr.relevancy.llm.shape == (5, t) and tr.relevancy.all.shape == (5, 12)
    assert tr.relevancy.llm_through_vision.shape == (5, 12)
    assert tr.vision_attention.shape == (2, 2, 13, 13)
    assert tr.image.patch_boxes.shape == (12, 4) and tr.image.processed.shape == (42, 56, 3)


def test_same_seed_same_tensors_and_image_heads_look_at_the_image():
    a = make_synthetic_trace(seed=3, trace_id="0" * 32)
    b = make_synthetic_trace(seed=3, trace_id="0" * 32)
    assert np.array_equal(a.lm_attention, b.lm_attention) and a.info == b.info
    # the red disk drawn on the image is where image-looking heads attend
    red = np.argwhere((a.image.processed == (200, 40, 40)).all(-1)).mean(0) / 14 - 0.5
    p, n = a.tokens.prompt_length, a.tokens.answer_length
    rows = a.lm_attention[:, :, p - 1 : p - 1 + n][..., a.tokens.image_positions].astype(np.float32)
    peak = np.unravel_index(rows.mean((0, 1, 2)).argmax(), (a.image.grid_rows, a.image.grid_cols))
    assert np.hypot(*(np.array(peak) - red)) <= 1.5


def test_rejects_impossible_layouts():
    with pytest.raises(ValueError):
        make_synthetic_trace(prompt_len=10, grid=(4, 6))
