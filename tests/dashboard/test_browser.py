"""End to end in headless Chromium against the real server: pages, selection, escaping."""

from __future__ import annotations

import re

import pytest

from tests.dashboard.browser import SCREENSHOTS, chromium, running_dashboard
from tests.dashboard.conftest import XSS_SCRIPT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HEATMAP = ".st-key-heatmaps img, .st-key-heatmap img"
CHART = "[data-testid='stVegaLiteChart']"
CAUSAL_GRAPH = ".st-key-causal-graph img"
TIMEOUT = 30_000


@pytest.fixture(scope="module")
def site(demo_store):
    with running_dashboard(demo_store.directory) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as instance:
        yield instance


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT)
    yield tab
    context.close()


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)  # let Vega finish drawing
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _pills(page):
    """The answer-token pills: the button group after the token/word switch."""
    return page.get_by_test_id("stButtonGroup").nth(1).get_by_role("button")


def test_each_page_shows_its_maps_and_charts(site, page, demo_store):
    page.goto(site)
    page.get_by_test_id("stDataFrame").wait_for()
    _shot(page, "browse")

    page.goto(f"{site}/generation?trace={demo_store.main}")
    page.locator(CHART).first.wait_for()
    _pills(page).nth(2).click()
    page.wait_for_url(re.compile(r"tokens=2"))
    page.get_by_text("Nothing selected").wait_for(state="detached")  # the rerun finished
    _shot(page, "generation")

    page.get_by_test_id("stSidebarNav").get_by_text("Raw attention").click()
    page.locator(HEATMAP).first.wait_for()
    page.locator(CHART).first.wait_for()
    assert "tokens=2" in page.url  # the selection followed us to another page
    _shot(page, "attention")

    page.goto(f"{site}/attention?trace={demo_store.main}&view=text+%E2%86%92+image&patches=8,9,14")
    page.locator(CHART).nth(2).wait_for()
    _shot(page, "attention-text-to-image")

    page.goto(f"{site}/attention?trace={demo_store.main}&view=vision+tower")
    page.locator(".st-key-rollout-heatmap img").wait_for()
    _shot(page, "attention-vision")

    page.goto(f"{site}/relevancy?trace={demo_store.main}&tokens=1")
    page.locator(".st-key-heatmap img").wait_for()
    page.locator(".st-key-gallery img").nth(3).wait_for()
    _shot(page, "relevancy")

    page.goto(f"{site}/causal?trace={demo_store.main}&tokens=0")
    compute = page.get_by_role("button", name="Compute")
    page.locator(f"{CAUSAL_GRAPH}, .stButton button").first.wait_for()
    if compute.is_visible():  # another test may have stored this explanation already
        compute.click()
    page.locator(CAUSAL_GRAPH).wait_for()
    page.locator(".st-key-causal-patches img").nth(3).wait_for()  # radii 1-3 and minimal
    page.locator(".st-key-causal-patch_effect img").wait_for()  # another tool's result
    _shot(page, "causal")

    page.goto(f"{site}/compare?trace={demo_store.main}&compare={demo_store.second}")
    page.locator(".st-key-cmp-diff img").wait_for()
    page.locator(CHART).first.wait_for()
    _shot(page, "compare")


def test_model_text_renders_as_text_and_runs_no_script(site, page, demo_store):
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for path, ready in [
        ("", "[data-testid='stDataFrame']"),
        (f"generation?trace={demo_store.xss}", CHART),
        (f"relevancy?trace={demo_store.xss}", ".st-key-gallery img"),
        (f"compare?trace={demo_store.xss}&compare={demo_store.main}", ".st-key-cmp-diff img"),
    ]:
        page.goto(f"{site}/{path}")
        page.locator(ready).first.wait_for()
        page.wait_for_timeout(500)
        assert page.evaluate("window.__xss") is None, path
    _shot(page, "xss-compare")
    assert dialogs == []
    page.goto(f"{site}/relevancy?trace={demo_store.xss}")
    page.locator(".lvlm-tokens").wait_for()
    assert XSS_SCRIPT in page.locator(".lvlm-tokens").inner_text()
    assert page.locator(".lvlm-tokens script, .lvlm-tokens img").count() == 0
    assert page.evaluate("window.__xss") is None and dialogs == []
