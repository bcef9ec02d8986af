"""Page logic through Streamlit's AppTest: every view renders, and every gap is a message."""

from __future__ import annotations

import pytest

from store import open_store
from tests.dashboard.conftest import XSS_SCRIPT

TRACE_PAGES = ["generation", "attention", "relevancy", "causal", "faithfulness"]


def _texts(at) -> str:
    parts = [
        e.value for kind in ("text", "info", "warning", "error", "caption") for e in at.get(kind)
    ]
    return "\n".join(str(p) for p in parts)


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.get("error"), [e.value for e in at.get("error")]


def test_browse_lists_traces_with_thumbnails(app, demo_store):
    at = app()
    _ok(at)
    table = at.dataframe[0].value
    assert len(table) == 6
    assert demo_store.main[:8] in set(table["id"])  # short ids on screen
    assert table["image"].str.startswith("data:image/jpeg;base64,").sum() == 5  # broken: None


def test_browse_filters_come_from_and_go_to_the_url(app, demo_store):
    at = app(tag="demo")
    _ok(at)
    assert list(at.dataframe[0].value["id"]) == [demo_store.main[:8]]
    at.text_input[1].set_value("no such words").run()  # "Prompt or answer contains"
    assert at.query_params["q"] == "no such words"
    assert "No trace matches these filters." in _texts(at)


def test_empty_store_is_a_message(app, tmp_path):
    from store import open_store

    open_store(tmp_path, writable=True).close()
    at = app(store_dir=tmp_path)
    _ok(at)
    assert "The store is empty" in _texts(at)


def test_missing_store_is_a_message(app, tmp_path):
    at = app(store_dir=tmp_path / "nowhere")
    assert not at.exception
    assert "could not be opened" in at.get("error")[0].value


@pytest.mark.parametrize("page", [*TRACE_PAGES, "compare"])
def test_every_page_renders_a_complete_trace(app, demo_store, page):
    at = app(page, trace=demo_store.main, compare=demo_store.second)
    _ok(at)
    assert at.get("imgs") or at.get("image") or page in ("causal", "faithfulness")


@pytest.mark.parametrize("page", TRACE_PAGES)
def test_no_trace_selected_points_to_browse(app, page):
    at = app(page)
    _ok(at)
    assert "No trace selected" in _texts(at)


@pytest.mark.parametrize("page", ["generation", "relevancy"])
def test_missing_trace_file_is_a_message(app, demo_store, page):
    at = app(page, trace=demo_store.broken)
    assert not at.exception
    assert "missing or unreadable" in at.get("error")[0].value


def test_unknown_trace_is_a_message(app):
    at = app("generation", trace="0" * 32)
    assert not at.exception
    assert "not in the store" in _texts(at)


def test_optional_parts_missing_are_messages(app, demo_store):
    texts = _texts(app("relevancy", trace=demo_store.bare))
    assert "Relevancy was not recorded for this trace" in texts
    texts = _texts(app("attention", trace=demo_store.bare, view="vision tower"))
    assert "Vision-tower attention was not recorded" in texts
    at = app("causal", trace=demo_store.bare)
    assert "Not computed yet for all 4 heads of layer 3" in _texts(at)
    assert not at.get("header")[1:]  # CLEANN only: no other causal results to list


def test_causal_results_are_drawn(app, demo_store):
    at = app("causal", trace=demo_store.main, layer="0", tokens="5")  # CLEANN: not computed
    _ok(at)
    assert at.get("metric")[0].value == "0.8"
    assert len(at.get("imgs") or at.get("image")) == 2
    assert at.get("vega_lite_chart")


def test_token_selection_is_shared_through_session_and_url(app, demo_store):
    at = app("generation", trace=demo_store.main)
    _ok(at)
    at.button_group[1].set_value([2, 3]).run()  # the answer-token pills
    assert at.query_params["tokens"] == "2,3"
    at.switch_page("views/relevancy.py").run()
    _ok(at)
    assert at.query_params["tokens"] == "2,3"
    assert at.button_group[1].value == [2, 3]
    assert "Mode LLM · 2:" in _texts(at)


def test_repeated_answer_words_are_distinct_pills(app, demo_store):
    """Streamlit maps a pill back through its label: of two "the" pills, the first must not
    select the second."""
    at = app("generation", trace=demo_store.main)
    labels = [str(o) for o in at.button_group[1].options]
    assert len(set(labels)) == len(labels)
    with open_store(demo_store.directory) as store, store.open(demo_store.main) as trace:
        answer = trace.tokens.text[trace.tokens.prompt_length :]
    repeated = [k for k, t in enumerate(answer) if answer.count(t) > 1]
    assert repeated  # the demo answer repeats a word: the case this guards
    at.button_group[1].set_value([repeated[0]]).run()
    assert at.query_params["tokens"] == str(repeated[0])


def test_word_selection_selects_all_its_tokens(app, demo_store):
    at = app("generation", trace=demo_store.main, unit="word")
    _ok(at)
    at.button_group[1].set_value([0]).run()
    assert at.query_params["tokens"]


def test_attention_views(app, demo_store):
    main = demo_store.main
    at = app("attention", trace=main, tokens="0,1", layer="2")
    _ok(at)
    assert len(at.get("imgs") or at.get("image")) >= 2  # legend + per-head maps
    assert next(s for s in at.slider if s.label == "Layer").value == 2
    for view in ("analysis", "vision tower"):
        _ok(app("attention", trace=main, view=view))
    at = app("attention", trace=main, view="text → image")
    assert "Click image patches" in _texts(at)
    at = app("attention", trace=main, view="text → image", patches="8,9")
    _ok(at)
    assert len(at.get("vega_lite_chart")) == 2  # token bars, layer x token


def test_compare_without_second_trace_offers_a_choice(app, demo_store):
    at = app("compare", trace=demo_store.main)
    _ok(at)
    assert "Pick a second trace" in _texts(at)


def test_escaped_everywhere_in_streamlit_elements(app, demo_store):
    at = app("relevancy", trace=demo_store.xss)
    _ok(at)
    assert XSS_SCRIPT not in "".join(e.proto.body for e in at.get("html"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in "".join(e.proto.body for e in at.get("html"))
    labels = at.button_group[1].options
    assert all("<" not in str(label) or "\\<" in str(label) for label in labels)
