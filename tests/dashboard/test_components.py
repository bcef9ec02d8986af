"""The pure helpers, without Streamlit."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from dashboard import serve
from dashboard.components import (
    analysis,
    charts,
    colormap,
    fonts,
    groundtruth,
    html,
    overlay,
    text,
)
from dashboard.components.explanation import p_value_text
from dashboard.components.filters import MAX_PAGE, BrowseFilters, clean_text
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.config import DB_ENV, STORE_ENV, StoreConfig, resolve
from store.frames import relevancy_image_share


def test_colormap_ends_and_nan():
    rgb = colormap.apply(np.array([0.0, 1.0, np.nan]), "viridis", 0.0, 1.0)
    assert rgb.shape == (3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0]) == (68, 1, 84) and tuple(rgb[1]) == (253, 231, 37)
    assert tuple(rgb[2]) == tuple(rgb[0])
    with pytest.raises(ValueError, match="unknown colour map"):
        colormap.lut("rainbow")


def test_overlay_honours_non_square_grid():
    image = np.zeros((40, 60, 3), np.uint8)  # 2 rows x 3 cols of 20 px patches
    grid = np.array([[0.0, np.nan, 0.5], [0.5, 0.5, 1.0]])
    style = OverlayStyle(colormap="viridis", opacity=1.0, fade=False)
    picture = overlay.overlay(
        image, grid, style, Scale(0.0, 1.0, "w"), min_side=60, outlines=[(0, 0, 1 / 3, 1 / 2)]
    )
    picture = np.asarray(picture)
    assert picture.shape == (40, 60, 3)
    assert tuple(picture[30, 50]) == (253, 231, 37)  # bottom-right patch is the maximum
    assert tuple(picture[5, 5]) == (68, 1, 84)
    assert tuple(picture[5, 30]) == (0, 0, 0)  # NaN: unknown, the photo shows through
    assert tuple(picture[0, 10]) == (0, 229, 255)  # the outlined patch's top edge


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
    assert picture.size == (336, 336 + 52)


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


def test_repeated_labels_are_told_apart():
    assert text.distinct(["the", "cat", "the"]) == ["the #0", "cat", "the #2"]
    assert text.distinct(["a", "b"]) == ["a", "b"]


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
    assert np.allclose(relevancy_image_share(llm, np.array([2])), [0.5, 0.0])


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


def test_fade_keeps_the_photo_where_the_map_is_low():
    image = np.full((20, 20, 3), 200, np.uint8)
    grid = np.array([[0.0, 1.0]])
    style = OverlayStyle(colormap="inferno", opacity=1.0)
    picture = np.asarray(overlay.overlay(image, grid, style, Scale(0, 1, "w"), min_side=20))
    assert tuple(picture[5, 2]) == (200, 200, 200)  # value 0: the photo, not inferno's black
    assert tuple(picture[5, 17]) == tuple(colormap.lut("inferno")[255])
    assert OverlayStyle().fade  # on by default
    difference = overlay.overlay(
        image, np.array([[0.0, -1.0]]), style, Scale(-1, 1, "d"), min_side=20
    )
    assert tuple(np.asarray(difference)[5, 2]) == (200, 200, 200)  # 0: no change, no colour


def test_scales_of_weights_start_at_zero():
    assert Scale.of(np.array([9.21e-06, 0.4]), "w", zero=True) == Scale(0.0, 0.4, "w")
    assert Scale.of(np.array([0.2, 0.4]), "score").vmin == 0.2


def _ink_rows(picture) -> int:
    rows = np.flatnonzero((np.asarray(picture.convert("L"))[:18] < 128).any(axis=1))
    return int(rows[-1] - rows[0] + 1)


def test_legend_text_is_at_least_13_px_and_has_no_missing_glyphs():
    style = OverlayStyle()
    title = overlay.legend(style, Scale(0, 1, "Ag|"))
    assert _ink_rows(title) >= 13  # ascender to descender of "Ag|": the font's full size
    minus = np.asarray(overlay.legend(style, Scale(-1, 1, "right − left")))
    hyphen = np.asarray(overlay.legend(style, Scale(-1, 1, "right - left")))
    assert np.array_equal(minus, hyphen)  # U+2212 drawn as a minus, not as an empty box
    face = fonts.font(13)
    assert fonts.drawable("café − 中", face) == "cafe - ?"


def test_p_values_in_scientific_notation():
    assert p_value_text(2.8e-106) == "2.80e-106"
    assert p_value_text(5e-5) == "5.00e-05"
    assert p_value_text(None) == "–"


def test_template_tokens_are_found_around_the_users_prompt():
    texts = ["<s>", "USER", ":", "What", "▁is", "<image>", "it", "?", "ASSISTANT", ":", "red"]
    roles = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2])
    found = text.template_positions(texts, roles, 10, "What is it?")
    assert found == {0, 1, 2, 8, 9}
    assert text.template_positions(texts, roles, 10, "not there") == {0}  # only <s>


def test_short_ids_and_times():
    assert text.short_id("0123456789abcdef" * 2) == "01234567"
    assert text.short_time("2026-11-29T10:31:05.123456+00:00") == "2026-11-29 10:31:05 UTC"
    assert text.short_time("garbage") == "garbage"


def test_filter_text_and_page_are_sanitised():
    assert clean_text("\x00abc\n") == "abc" and clean_text("\x00") is None
    assert BrowseFilters.from_params({"page": "1e30"}).page == 1
    assert BrowseFilters.from_params({"page": "1" + "0" * 30}).page == 1
    assert BrowseFilters.from_params({"page": str(MAX_PAGE + 5)}).page == MAX_PAGE
    assert BrowseFilters.from_params({"page": "7"}).page == 7
    query = BrowseFilters.from_params({"ans": "left", "tok": "Red"}).to_query()
    assert (query.answer_contains, query.answer_token) == ("left", "Red")


def test_layer_axes_have_whole_ticks_and_tokens_keep_positions():
    spec = charts.layer_divergence(np.array([0.1, 0.2, 0.3, 0.4])).to_dict()
    assert spec["encoding"]["x"]["axis"]["format"] == "d"
    assert spec["encoding"]["x"]["axis"]["tickMinStep"] == 1
    heat = charts.layer_token_heatmap(np.ones((2, 2)), ["a", "b"], "w", [73, 74])
    assert set(heat.data["token"]) == {"73: a", "74: b"}


def test_ground_truth_boxes_are_read_tolerantly_and_drawn_scaled():
    extra = {
        "ground_truth": {
            "objects": [
                {"shape": "cross", "colour": "red", "box": [0, 0, 32, 32]},
                {"shape": "circle", "box": "junk"},
            ]
        }
    }
    truths = groundtruth.objects(extra)
    assert [t.label for t in truths] == ["red cross"]
    two = [*truths, groundtruth.Truth("b", (40.0, 40.0, 60.0, 60.0))]
    drawn = np.asarray(groundtruth.draw(np.zeros((64, 64, 3), np.uint8), two, [[0, 0, 64, 64]]))
    assert drawn[int(50 * 336 / 64), int(40 * 336 / 64)].tolist() == [0, 229, 255]  # 2nd box
    assert groundtruth.objects({"ground_truth": [1]}) == []
    whole = np.array([[0, 0, 32, 64], [32, 0, 64, 64]])  # two cells covering a 64 x 64 original
    picture = groundtruth.draw(np.zeros((16, 16, 3), np.uint8), truths, whole, min_side=64)
    assert picture.size == (64, 64)
    assert np.asarray(picture)[20, 31].tolist() == [0, 229, 255]  # box edge at x 32 * 64/64 - 1
    cropped = np.array([[16, 0, 48, 64]])  # the processed image shows x 16-48 of the original
    picture = groundtruth.draw(np.zeros((64, 32, 3), np.uint8), truths, cropped, min_side=32)
    assert np.asarray(picture)[20, 15].tolist() == [0, 229, 255]  # x 32 lands at (32-16) * 1 - 1


def test_relative_l1():
    assert analysis.relative_l1(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == 1.0
    assert analysis.relative_l1(np.ones(2), np.zeros(2)) is None
