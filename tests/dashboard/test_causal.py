"""CLEANN on the Causal page: pure helpers, then compute-once / read-back through AppTest."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard.components import causal_graph, explanation, patches
from methods.cleann.trace import KIND, CausalParams, explain_token, result_key
from store import open_store
from store.synthetic import make_synthetic_trace


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_trace(seed=1, grid=(4, 6))


def test_cells_cover_images_whose_size_is_not_a_grid_multiple():
    rows, cols = 3, 4
    cells = [
        (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows)
        for r in range(rows)
        for c in range(cols)
    ]
    boxes = [patches.pixel_box(f, 50, 31) for f in cells]
    assert boxes[0][:2] == (0, 0) and boxes[-1][2:] == (50, 31)
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes)
    assert area == 50 * 31  # every pixel in exactly one cell


def test_highlight_keeps_chosen_patch_pixels_and_dims_the_rest():
    image = np.zeros((40, 60, 3), np.uint8)  # 2 x 3 patches of 20 px
    patch_5 = (2 / 3, 1 / 2, 1.0, 1.0)
    picture = np.asarray(patches.highlight(image, [(patch_5, "#ff0000")], min_side=60))
    assert picture.shape == (40, 60, 3)
    assert tuple(picture[30, 50]) == (0, 0, 0)  # inside patch 5: the image itself
    assert tuple(picture[40 - 1, 59]) == (255, 0, 0)  # its outline
    assert picture[5, 5].min() > 100  # elsewhere: dimmed towards white
    assert patches.crop(image, patch_5, size=40).size == (40, 40)


def test_explanation_maps_tokens_to_patches_and_graph_nodes(synthetic):
    result = explain_token(synthetic, layer=3, head=0, token=2)
    view = explanation.TraceView(synthetic.tokens, synthetic.image)
    radii = explanation.radius_of(result)
    image_members = [p for p in radii if synthetic.tokens.roles[p] == 1]
    colours = explanation.patch_colours(view, result, result.params.max_radius)
    assert sorted(colours) == sorted(int(synthetic.tokens.image_patch[p]) for p in image_members)
    nodes, edges = explanation.graph(view, result)
    assert {n.position for n in nodes} == {result.target, *radii}
    assert all((n.picture is not None) == bool(view.patches(n.position)) for n in nodes)
    assert all(e.mark_a in causal_graph.MARKS and e.mark_b in causal_graph.MARKS for e in edges)
    whole, _ = explanation.graph(view, result, whole=True)
    assert len(whole) == len(result.nodes)
    table = explanation.rows(view, result)
    assert [r["position"] for r in table] == sorted(radii, key=lambda p: (radii[p], p))
    picture = causal_graph.draw_graph(nodes, edges, result.params.max_radius)
    assert picture.width >= 720 and picture.height > picture.width // 2


def test_text_only_explanation_highlights_no_patch(synthetic):
    result = explain_token(synthetic, layer=3, head=0, token=2)
    tokens = synthetic.tokens
    text_only = [p for p in range(tokens.prompt_length) if p not in tokens.image_positions]
    result.explanation_by_radius = {1: text_only[:2], 2: [], 3: []}
    view = explanation.TraceView(tokens, synthetic.image)
    assert explanation.patch_colours(view, result, 3) == {}


def _images(at) -> list:
    return at.get("imgs") or at.get("image")


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.get("error") and not at.get("warning")


def test_compute_stores_results_and_the_next_visit_reads_them(app, tmp_path, monkeypatch):
    with open_store(tmp_path, writable=True) as store:
        trace_id = store.add(make_synthetic_trace(seed=1, grid=(4, 6)))
    at = app("causal", store_dir=tmp_path, trace=trace_id, tokens="0")
    _ok(at)
    assert [b.label for b in at.button] == ["Compute"] and not _images(at)
    at.button[0].click().run()
    _ok(at)
    assert len(_images(at)) == CausalParams().max_radius + 2  # radii, minimal, graph
    assert at.get("vega_lite_chart")  # heads ranked
    with open_store(tmp_path) as store:
        keys = [result_key(3, h, 0, CausalParams()) for h in range(4)]
        assert all(store.get_result(trace_id, KIND, k) for k in keys)

    def recompute(*args, **kwargs):
        raise AssertionError("a stored explanation was computed again")

    monkeypatch.setattr("methods.cleann.trace.explain_layer", recompute)
    again = app("causal", store_dir=tmp_path, trace=trace_id, tokens="0")
    _ok(again)
    assert not again.button and len(_images(again)) == len(_images(at))


def test_one_head_and_a_one_token_answer(app, tmp_path):
    with open_store(tmp_path, writable=True) as store:
        trace_id = store.add(make_synthetic_trace(seed=8, answer_len=1, grid=(4, 6)))
    at = app("causal", store_dir=tmp_path, trace=trace_id, head="2", layer="0")
    _ok(at)
    at.button[0].click().run()
    _ok(at)
    assert not at.get("vega_lite_chart")  # one head: nothing to rank
    with open_store(tmp_path) as store:
        assert list(store.list_results(trace_id, KIND)) == [result_key(0, 2, 0, CausalParams())]


def test_explanation_without_image_patches_is_a_message(app, tmp_path):
    """A stored explanation whose sets hold text only (its image members removed)."""
    with open_store(tmp_path, writable=True) as store:
        trace_id = store.add(make_synthetic_trace(seed=7, grid=(3, 5)))
    at = app("causal", store_dir=tmp_path, trace=trace_id, tokens="1", head="0")
    at.button[0].click().run()
    key = result_key(3, 0, 1, CausalParams())
    with open_store(tmp_path, writable=True) as store:
        image = set(store.open(trace_id).tokens.image_positions.tolist())
        payload = store.get_result(trace_id, KIND, key)
        payload["explanation_by_radius"] = {
            r: [p for p in members if p not in image]
            for r, members in payload["explanation_by_radius"].items()
        }
        payload["minimal_explanation"] = [
            p for p in payload["minimal_explanation"] if p not in image
        ]
        store.put_result(trace_id, KIND, key, payload)
    at = app("causal", store_dir=tmp_path, trace=trace_id, tokens="1", head="0")
    _ok(at)
    assert "No image patch is in this head's explanation" in at.info[0].value
    assert len(_images(at)) == 1  # the graph is still drawn


def test_2_explained_node_is_named_by_its_answer_token(synthetic):
    """The explained node is row P-1+k; it must read as answer token k, not as token P-1+k."""
    tokens = synthetic.tokens
    result = explain_token(synthetic, layer=3, head=0, token=2)
    view = explanation.TraceView(tokens, synthetic.image)
    nodes, _ = explanation.graph(view, result)
    (target,) = [n for n in nodes if n.position == result.target]
    assert result.target == tokens.prompt_length - 1 + 2
    assert target.label == tokens.text[tokens.prompt_length + 2]
    assert target.label != tokens.text[result.target]


def test_a_token_reading_a_2x2_block_highlights_and_crops_all_four_patches():
    trace = make_synthetic_trace(seed=9, grid=(4, 6), merge=2)
    view = explanation.TraceView(trace.tokens, trace.image)
    first = int(trace.tokens.image_positions[0])
    read = view.patches(first)
    assert len(read) == 4
    boxes = trace.image.patch_boxes[read]
    block = (boxes[:, 2].max() - boxes[:, 0].min(), boxes[:, 3].max() - boxes[:, 1].min())
    assert block[0] == pytest.approx(2 * (boxes[0, 2] - boxes[0, 0]))  # two patches wide
    assert view.crop(first, size=40).size == (40, 40)  # the square block, scaled
    assert "(+3 more patches)" in view.where(first)
