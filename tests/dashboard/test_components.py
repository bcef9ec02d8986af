"""The pure helpers, without Streamlit."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from dashboard import serve
from dashboard.components import analysis, colormap, html, overlay, text
from dashboard.components.filters import BrowseFilters
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.config import DB_ENV, STORE_ENV, StoreConfig, resolve


def test_colormap_ends_and_nan():
    rgb = colormap.apply(np.array([0.0, 1.0, np.nan]), "viridis", 0.0, 1.0)
    assert rgb.shape == (3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0]) == (68, 1, 84) and tuple(rgb[1]) == (253, 231, 37)
    assert tuple(rgb[2]) == tuple(rgb[0])
    with pytest.raises(ValueError, match="unknown colour map"):
        colormap.lut("rainbow")


def test_overlay_honours_non_square_grid():
    image = np.zeros((40, 60, 3), np.uint8)  # 2 rows x 3 cols of 20 px patches
    grid = overlay.grid_values(np.array([1.0, 0.0]), np.array([5, 0]), rows=2, cols=3)
    assert grid.shape == (2, 3) and grid[1, 2] == 1.0 and np.isnan(grid[0, 1])
    style = OverlayStyle(colormap="viridis", opacity=1.0)
    picture = np.asarray(overlay.overlay(image, grid, style, Scale(0.0, 1.0, "w"), min_side=60))
    assert picture.shape == (40, 60, 3)
    assert tuple(picture[30, 50]) == (253, 231, 37)  # bottom-right patch is the maximum
    assert tuple(picture[5, 5]) == (68, 1, 84)


def test_overlay_enlarges_small_images_keeping_aspect():
    picture = overlay.overlay(
        np.zeros((10, 20, 3), np.uint8), np.zeros((1, 2)), OverlayStyle(), Scale(0, 1, "w")
    )
    assert picture.size == (336, 168)


def test_opacity_zero_shows_the_image():
    image = np.full((8, 8, 3), 77, np.uint8)
    style = OverlayStyle(opacity=0.0)
    picture = overlay.overlay(image, np.ones((2, 2)), style, Scale(0, 1, "w"), min_side=8)
    assert np.all(np.asarray(picture) == 77)


def test_legend_and_scales():
    assert Scale.of(np.array([-2.0, 1.0]), "d", symmetric=True) == Scale(-2.0, 2.0, "d")
    assert Scale.of(np.array([3.0, 3.0]), "flat").vmax > 3.0
    assert Scale.of(np.array([np.nan]), "none") == Scale(0.0, 1.0, "none")
    picture = overlay.with_legend(
        overlay.overlay(np.zeros((4, 4, 3), np.uint8), np.eye(2), OverlayStyle(), Scale(0, 1, "w")),
        OverlayStyle(),
        Scale(0, 1, "w"),
    )
    assert picture.size == (336, 336 + 44)


def test_words_group_by_segment_and_word_id():
    texts = ["A", " big", "gest", "<img>", " dog", "s"]
    roles = np.array([2, 2, 2, 1, 2, 2])
    word_ids = np.array([0, 1, 1, -1, 0, 0])
    found = text.words(texts, roles, word_ids, role=2)
    assert [(w.positions, w.text) for w in found] == [
        ((0,), "A"),
        ((1, 2), "biggest"),
        ((4, 5), "dogs"),
    ]


def test_markdown_literal_and_labels():
    assert text.markdown_literal("![x](y) :red[z]") == r"\!\[x\]\(y\) \:red\[z\]"
    assert text.token_label("  ") == "␣" and text.token_label("a\nb") == "a↵b"


def test_answer_diff():
    pieces = text.answer_diff("a red ball", "a blue ball")
    assert [(p.op, p.text) for p in pieces] == [
        ("equal", "a"),
        ("delete", "red"),
        ("insert", "blue"),
        ("equal", "ball"),
    ]


def test_html_escapes_model_text():
    payload = "<script>alert(1)</script><img src=x onerror=alert(1)>"
    fragment = html.shaded_tokens([payload, '"quoted"'], np.array([0.1, 0.9]), "inferno")
    assert "<script" not in fragment and "<img" not in fragment
    assert "&lt;script&gt;" in fragment and "&quot;quoted&quot;" in fragment
    diff = html.diff(text.answer_diff(payload, "ok"))
    assert "<script" not in diff and "&lt;img" in diff


def test_rollout_is_row_stochastic_and_identity_for_self_attention():
    rng = np.random.default_rng(0)
    layers = rng.random((3, 2, 5, 5))
    layers /= layers.sum(-1, keepdims=True)
    flow = analysis.rollout(iter(layers))
    assert np.allclose(flow.sum(-1), 1.0)
    assert np.allclose(analysis.rollout([np.eye(4)[None]] * 3), np.eye(4))


def test_js_divergence_bounds():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert analysis.js_divergence(p, p) == pytest.approx(0.0)
    assert analysis.js_divergence(p, p[::-1]) == pytest.approx(1.0)
    assert math.isnan(analysis.js_divergence(np.zeros(3), p[:3]))
    assert analysis.layer_divergence(np.stack([p, p]), np.stack([p, p, p])).shape == (2,)


def test_shares_and_ranking():
    rows = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    shares = analysis.image_share(rows, np.array([1, 2]))
    assert np.allclose(shares, [0.9, 0.5])
    assert list(analysis.rank_heads(shares)) == [0, 1]
    summary = np.arange(2 * 1 * 3 * 3, dtype=float).reshape(2, 1, 3, 3)
    assert analysis.token_shares(summary, [0, 2]).shape == (2, 1, 3)
    llm = np.array([[1.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    assert np.allclose(analysis.relevancy_image_share(llm, np.array([2])), [0.5, 0.0])


def test_filters_round_trip_and_query():
    filters = BrowseFilters(
        model="m",
        text="red",
        correct=False,
        after=date(2025, 1, 2),
        metric="iou",
        metric_min=0.5,
        sort="answer",
        descending=False,
        page=3,
    )
    params = {k: v for k, v in filters.to_params().items() if v is not None}
    assert BrowseFilters.from_params(params) == filters
    query = filters.to_query(page_size=25)
    assert (query.limit, query.offset) == (25, 50)
    assert query.metric_ranges == {"iou": (0.5, None)} and query.correct is False
    junk = BrowseFilters.from_params({"page": "x", "after": "nope", "mmin": "inf", "sort": "drop"})
    assert junk == BrowseFilters()


def test_config_prefers_arguments_over_environment(tmp_path: Path):
    env = {STORE_ENV: "/env/store", DB_ENV: "sqlite:///x.db"}
    assert resolve(["--store", str(tmp_path)], env) == StoreConfig(tmp_path, "sqlite:///x.db")
    assert resolve([], env) == StoreConfig(Path("/env/store"), "sqlite:///x.db")
    assert resolve(["--other"], {}) is None


def test_serve_command_is_local_by_default(tmp_path: Path):
    command = serve.command(tmp_path)
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"
    assert command[-2:] == ["--store", str(tmp_path.resolve())]
    assert serve.command(tmp_path, db_url="sqlite:///i.db")[-2:] == ["--db", "sqlite:///i.db"]
