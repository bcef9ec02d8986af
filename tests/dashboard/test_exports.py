"""Exports in the dashboard (issue 15): Browse's CSV and Parquet of every matching trace,
'Export report' for a trace, a comparison and the filtered set, and each trace page's
figures as PNG and SVG — downloaded by clicking in headless Chromium, then read back."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from PIL import Image

from dashboard.components.filters import BrowseFilters
from store import open_store
from store.frames import csv_bytes, query_frame, token_frame

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT = 60_000


@pytest.fixture(scope="module")
def site(demo_site):
    return demo_site


@pytest.fixture(scope="module")
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT)
    yield tab
    context.close()


def _download(page, name: str, where=None) -> bytes:
    """Click the download button called ``name`` and return the file's bytes."""
    button = (where or page).get_by_role("button", name=name, exact=True)
    button.wait_for()
    with page.expect_download(timeout=TIMEOUT) as info:
        button.click()
    return open(info.value.path(), "rb").read()


def test_browse_exports_every_matching_trace(site, page, demo_store):
    page.goto(f"{site}/?q=a&sort=prompt&asc=1&page=1")
    page.get_by_test_id("stDataFrame").wait_for()
    filters = BrowseFilters.from_params({"q": "a", "sort": "prompt", "asc": "1"})
    with open_store(demo_store.directory) as store:
        expected = query_frame(store, filters.to_query())
    assert len(expected) >= 3
    got = _download(page, f"CSV ({len(expected)} traces)")
    assert got == csv_bytes(expected)
    parquet = pd.read_parquet(io.BytesIO(_download(page, "Parquet")))
    assert parquet["trace_id"].tolist() == expected["trace_id"].tolist()
    report = _download(page, "Export report (filtered set)").decode()
    assert f"{len(expected)} trace(s) match" in report
    assert "<script" not in report.lower()


def test_generation_exports_the_per_token_table(site, page, demo_store):
    page.goto(f"{site}/generation?trace={demo_store.main}")
    with open_store(demo_store.directory) as store:
        expected = token_frame(store, [demo_store.main])
    assert len(expected) >= 1
    assert _download(page, "Tokens as CSV") == csv_bytes(expected)
    got = pd.read_parquet(io.BytesIO(_download(page, "Parquet")))
    assert got["token"].tolist() == expected["token"].tolist()


def test_trace_and_comparison_reports_and_figures(site, page, demo_store):
    page.goto(f"{site}/relevancy?trace={demo_store.main}&tokens=1")
    page.locator(".st-key-heatmap img").wait_for()
    report = _download(page, "Export report (this trace)").decode()
    assert demo_store.main in report and "<html" in report.lower()
    page.get_by_text("Figures (3): PNG and SVG").click()
    gallery = page.locator(".st-key-figures")
    png = _download(page, "PNG", gallery.get_by_test_id("stDownloadButton").first)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.width > 400
    svg = _download(page, "SVG", gallery.get_by_test_id("stDownloadButton").nth(1)).decode()
    assert "<svg" in svg and "<script" not in svg.lower()

    page.goto(f"{site}/compare?trace={demo_store.main}&compare={demo_store.second}")
    page.locator(".st-key-cmp-diff img").wait_for()
    report = _download(page, "Export report (comparison)").decode()
    assert demo_store.main in report and demo_store.second in report


def test_every_trace_page_offers_its_figures_and_a_report(app, demo_store, tmp_path):
    """Without a browser: each trace page lists its figures (Causal once an explanation is
    shown) and the sidebar offers the report of what is on screen."""
    from store.synthetic import make_synthetic_trace

    for view, count in (("generation", 2), ("attention", 2), ("relevancy", 3)):
        at = app(view, trace=demo_store.main, tokens="1", expand=("figures",))
        assert not at.exception
        assert f"Figures ({count}): PNG and SVG" in [e.label for e in at.expander], view
        labels = [b.proto.label for b in at.get("download_button")]
        assert "Export report (this trace)" in labels and labels.count("PNG") == count, view
    faithfulness = app("faithfulness", trace=demo_store.main, tokens="1")
    assert "Export report (this trace)" in [
        b.proto.label for b in faithfulness.get("download_button")
    ]
    closed = app("attention", trace=demo_store.main, tokens="1")  # lazy: drawn when opened
    assert "PNG" not in [b.proto.label for b in closed.get("download_button")]
    with open_store(tmp_path, writable=True) as store:
        trace_id = store.add(make_synthetic_trace(seed=1, grid=(4, 6)))
    at = app("causal", store_dir=tmp_path, trace=trace_id, tokens="0", head="1")
    at.button[0].click().run()
    assert any(e.label.startswith("Figures (") for e in at.expander)
