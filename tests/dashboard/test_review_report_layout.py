"""The report as a stakeholder sees it (found in review): the relevancy modes, which the
report calls its method comparison, stood one under another down a 10,000-pixel page."""

from __future__ import annotations

import pytest

from dashboard.report import build_report
from store import open_store


@pytest.mark.browser
def test_relevancy_modes_stand_side_by_side(demo_store, tmp_path, browser):
    with open_store(demo_store.directory) as store:
        html = build_report(store, [demo_store.main])
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(path.as_uri(), wait_until="load")
    boxes = page.evaluate(
        "Array.from(document.querySelectorAll('figure img'))"
        ".filter(i => i.alt.startsWith('Relevancy ('))"
        ".map(i => { const r = i.getBoundingClientRect(); return [r.top, r.right]; })"
    )
    width = page.evaluate("document.documentElement.clientWidth")
    page.close()
    assert len(boxes) >= 2, boxes
    tops = [round(top) for top, _ in boxes]
    assert tops[0] == tops[1], f"first two modes not on one row: {boxes}"
    assert all(right <= width for _, right in boxes), (boxes, width)
