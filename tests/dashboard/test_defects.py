"""Defects a new user found in the dashboard (issue 10 §3 and §4), one test each, in AppTest.

Each test names its defect number; each failed before its fix.
"""

from __future__ import annotations

import math

import h5py
import pyarrow
import pytest

from store import RelevancyMode, open_store, reindex_store
from store.synthetic import make_synthetic_trace
from tests.dashboard.conftest import MD_HOSTILE, XSS_IMG
from tests.dashboard.test_pages import _ok, _texts

MARKDOWN_KINDS = ("markdown", "caption", "info", "warning", "error", "success", "title")
MARKDOWN_KINDS += ("header", "subheader")


def _markdown(at) -> list[str]:
    """Every string on the page that Streamlit renders as Markdown."""
    bodies = [str(e.value) for kind in MARKDOWN_KINDS for e in at.get(kind)]
    bodies += [e.proto.label for e in at.get("metric")]
    for kind in ("selectbox", "multiselect", "slider", "text_input", "toggle", "button"):
        bodies += [e.label for e in at.get(kind)]
    bodies += [str(o) for group in at.get("button_group") for o in group.options]
    bodies += [img.caption for e in at.get("image") for img in e.proto.imgs]
    return bodies


def _widget(at, kind: str, label: str):
    return next(e for e in at.get(kind) if e.label == label)


def test_1_two_maps_in_one_causal_result_share_one_set_of_controls(app, demo_store):
    at = app("causal", trace=demo_store.main, layer="0", tokens="5")
    _ok(at)
    assert len(at.get("image")) == 2  # patch_effect and patch_effect_2
    assert [s.label for s in at.selectbox].count("Colour map") == 1


def test_3_4_causal_p_values_and_chart_heading(app, tmp_path):
    with open_store(tmp_path, writable=True) as store:
        trace_id = store.add(make_synthetic_trace(seed=1, grid=(4, 6)))
    at = app("causal", store_dir=tmp_path, trace=trace_id, tokens="0")
    at.button[0].click().run()
    _ok(at)
    table = at.dataframe[0].value
    assert all(p == "–" or "e" in p for p in table["p-value"])  # 2.80e-106, never 0.00
    assert "Layer 3: heads ranked by causal importance" in [h.value for h in at.subheader]


def test_6_compare_warns_about_different_images_and_keeps_layer_and_map_in_url(app, demo_store):
    at = app("compare", trace=demo_store.main, compare=demo_store.second, layer="1")
    _ok(at)
    assert "two different images" in at.warning[0].value
    assert _widget(at, "slider", "Layer").value == 1
    _widget(at, "slider", "Layer").set_value(2).run()
    assert at.query_params["layer"] == "2"
    at.button_group[2].set_value("relevancy (llm)").run()  # token / pills / map
    assert at.query_params["map"] == "relevancy (llm)"
    again = app("compare", trace=demo_store.main, compare=demo_store.second, map="relevancy (llm)")
    assert again.button_group[2].value == "relevancy (llm)"
    same = app("compare", trace=demo_store.main, compare=demo_store.main)
    assert not same.warning


def test_8_unknown_model_or_tag_in_the_url_shows_and_clears(app, demo_store):
    at = app(model="nope", tag="nada")
    _ok(at)
    model = _widget(at, "selectbox", "Model")
    assert model.value == "nope" and "no trace has this model" in model.format_func("nope")
    model.set_value("any").run()
    assert "model" not in at.query_params
    _widget(at, "selectbox", "Tag").set_value("any").run()
    assert len(at.dataframe[0].value) == 6


def test_9_clear_selection_and_selected_rows_are_marked(app, demo_store):
    at = app(trace=demo_store.main)
    _ok(at)
    table = at.dataframe[0].value
    assert list(table[table["open"] == "✓"]["id"]) == [demo_store.main[:8]]
    with open_store(demo_store.directory) as store:
        prompt = store.get(demo_store.main).prompt
    assert any(demo_store.main[:8] in t.value and prompt[:20] in t.value for t in at.text)
    next(b for b in at.button if b.label == "Clear selection").click().run()
    assert "trace" not in at.query_params and not at.dataframe[0].value["open"].any()


def test_10_shared_settings_survive_a_page_the_link_did_not_use(app, demo_store):
    at = app("attention", trace=demo_store.main, view="text → image", tokens="1", cmap="viridis")
    _ok(at)
    at.query_params.clear()  # the sidebar's page links drop the query string
    at.switch_page("views/relevancy.py").run()
    _ok(at)
    assert at.query_params["tokens"] == "1" and at.query_params["cmap"] == "viridis"
    assert _widget(at, "selectbox", "Colour map").value == "viridis"


def test_12_removed_trace_disappears_and_reindex_is_noticed(app, tmp_path):
    with open_store(tmp_path, writable=True) as store:
        gone = store.add(make_synthetic_trace(seed=1, grid=(4, 6)))
    at = app("causal", store_dir=tmp_path, trace=gone, tokens="0")
    assert at.button  # "Compute" is offered while the trace exists
    with open_store(tmp_path, writable=True) as store:
        store.delete(gone)
    at = app("causal", store_dir=tmp_path, trace=gone, tokens="0")
    assert not at.exception and not at.button
    assert "not in the store" in _texts(at)
    with open_store(tmp_path, writable=True) as store:
        store.add(make_synthetic_trace(seed=2, grid=(4, 6)))
    assert len(app(store_dir=tmp_path).dataframe[0].value) == 1  # the handle is cached now
    reindex_store(tmp_path)
    with open_store(tmp_path, writable=True) as store:
        store.add(make_synthetic_trace(seed=3, grid=(4, 6)))
    assert len(app(store_dir=tmp_path).dataframe[0].value) == 2


HOSTILE_PARAMS = {
    "alpha": "nan",
    "cmap": "rainbow",
    "smooth": "maybe",
    "layer": "1e30",
    "vlayer": "-4",
    "head": "nan",
    "tokens": "1e30,-1,x,99999999999999999999",
    "patches": "nan,-5,100000",
    "unit": "letters",
    "view": "nowhere",
    "mode": "psychic",
    "map": "bogus",
    "hide": "2",
    "page": "1e30",
    "q": "\x00abc",
    "mmin": "nan",
    "after": "yesterday",
}


@pytest.mark.parametrize(
    "page", [None, "generation", "attention", "relevancy", "causal", "compare"]
)
def test_13_garbled_url_parameters_fall_back_to_defaults(app, demo_store, page):
    at = app(page, trace=demo_store.main, compare=demo_store.second, **HOSTILE_PARAMS)
    _ok(at)
    assert not at.get("warning") or page in (None, "compare")  # compare: two images
    if page in ("attention", "relevancy", "compare"):
        opacity = _widget(at, "slider", "Heatmap opacity").value
        assert math.isfinite(opacity) and opacity == 0.6


def test_13_browse_page_past_the_end_and_nul_in_text(app, demo_store):
    at = app(page="1" + "0" * 30)
    _ok(at)
    assert len(at.dataframe[0].value) == 6
    at = app(page="9")
    assert "there is 1 page." in _texts(at)  # 16: not "there are 1 pages"
    with open_store(demo_store.directory) as store:
        word = store.get(demo_store.main).prompt.split()[0]
    at = app(q=f"\x00{word}")
    _ok(at)
    assert len(at.dataframe[0].value) >= 1 and not at.warning


def test_15_browse_filters_by_answer_text_and_answer_token(app, demo_store):
    at = app()
    _widget(at, "text_input", "Answer contains").set_value(":red[painted]").run()
    assert list(at.dataframe[0].value["id"]) == [demo_store.xss[:8]]
    at = app(tok="PAINT")
    _ok(at)
    assert "No trace matches these filters." in _texts(at)  # a whole token, not a part
    with open_store(demo_store.directory) as store:
        word = store.open(demo_store.main).tokens.text[-1]
    at = app(tok=word.upper())
    assert demo_store.main[:8] in set(at.dataframe[0].value["id"])


def test_16_revision_filter_matches_part_of_the_revision(app, demo_store):
    at = app(rev="THETIC-")  # the synthetic traces' revision is "synthetic-0"
    _ok(at)
    assert len(at.dataframe[0].value) == 5  # all but the one with a hostile revision


def test_16_upper_case_ids_work_and_bad_ids_get_a_user_message(app, demo_store):
    at = app("generation", trace=demo_store.main.upper())
    _ok(at)
    assert at.query_params["trace"] == demo_store.main
    at = app("generation", trace="not-an-id")
    assert not at.exception
    texts = _texts(at)
    assert "32 hexadecimal digits" in texts and "store.schema" not in texts


def test_17_reference_answer_ground_truth_and_short_ids(app, demo_store):
    at = app("generation", trace=demo_store.main)
    _ok(at)
    texts = _texts(at)
    assert "Reference answer: orange star" in texts
    assert "Ground truth: red cross" in texts
    assert f"id {demo_store.main[:8]}" in texts and demo_store.main not in texts
    assert ".000000" not in texts and "+00:00" not in texts


def test_17_template_tokens_hidden_by_default(app, demo_store):
    template = {"<s>", "USER", ":", "ASSISTANT"}
    at = app("relevancy", trace=demo_store.main)
    _ok(at)
    assert not template & _chart_words(at)
    at = app("relevancy", trace=demo_store.main, hide="0")
    assert {"<s>", ":"} <= _chart_words(at)
    at = app("attention", trace=demo_store.main, view="text → image", patches="3,4")
    assert not template & _chart_words(at)


def _chart_words(at) -> set[str]:
    """The words named by the Relevancy page's bar chart (labels "index: word")."""
    words = set()
    for chart in at.get("vega_lite_chart"):
        for dataset in chart.proto.datasets:
            frame = pyarrow.ipc.open_stream(dataset.data.data).read_pandas()
            if "label" in frame:
                words |= {label.split(": ", 1)[1] for label in frame["label"]}
    return words


def test_relevancy_offers_held_modes_with_definitions_and_all_vs_vision(app, demo_store):
    at = app("relevancy", trace=demo_store.main, mode="all")
    _ok(at)
    assert at.button_group[2].value.value == "all"
    texts = _texts(at)
    assert "pushed through the vision tower" in texts.replace("\\", "")  # the definition
    assert "differs from 'vision' by" in texts.replace("\\", "")
    at.button_group[2].set_value(RelevancyMode.VISION).run()
    assert at.query_params["mode"] == "vision"


def test_relevancy_old_trace_explains_its_all(app, demo_store):
    at = app("relevancy", trace=demo_store.legacy, mode="all")
    _ok(at)
    assert at.button_group[2].value.value == "llm_through_vision"
    texts = _texts(at).replace("\\", "")
    assert "does not hold" in texts and "format 1" in texts
    assert "Not available for this trace: all (seed)" in texts
    assert "differs from 'vision'" not in texts


@pytest.mark.parametrize(
    ("page", "params"),
    [
        (None, {}),
        ("generation", {}),
        ("attention", {"tokens": "0,1,2,3,4"}),
        ("attention", {"view": "text → image", "patches": "3,4"}),
        ("attention", {"view": "vision tower"}),
        ("relevancy", {"tokens": "0,1,2,3,4"}),
        ("causal", {"tokens": "3"}),
        ("compare", {"tokens": "0,1,2,3,4"}),
    ],
)
def test_s4_model_and_file_text_is_never_markdown(app, demo_store, page, params):
    at = app(page, trace=demo_store.xss, compare=demo_store.main, **params)
    _ok(at)
    shown = "\n".join(_markdown(at))
    for hostile in (*MD_HOSTILE, XSS_IMG):
        assert hostile not in shown, (page, hostile)


def test_s4_damaged_chunk_is_one_line(app, tmp_path):
    with open_store(tmp_path, writable=True) as store:
        trace_id = store.add(make_synthetic_trace(seed=1, grid=(4, 6)))
    path = next(tmp_path.rglob(f"{trace_id}.h5"))
    with h5py.File(path, "r") as f:
        blocks = f["lm_attention_blocks"][()]
    data = bytearray(path.read_bytes())
    for start, end in blocks.reshape(-1, 2):
        middle = (int(start) + int(end)) // 2
        data[middle : middle + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    at = app("attention", store_dir=tmp_path, trace=trace_id)
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith(f"trace {trace_id} is damaged: ")
    assert "lvlm-interpret store verify" in error.value and "\n" not in error.value


def test_s4_legacy_fixture_is_format_1(demo_store):
    with h5py.File(next(demo_store.directory.rglob(f"{demo_store.legacy}.h5")), "r") as f:
        assert int(f.attrs["format_version"]) == 1
