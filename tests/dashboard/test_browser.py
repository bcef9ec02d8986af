"""End to end in headless Chromium against the real server: pages, selection, escaping."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.dashboard.browser import SCREENSHOTS, running_dashboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HEATMAP = ".st-key-heatmaps img, .st-key-heatmap img"
CHART = "[data-testid='stVegaLiteChart']"
CAUSAL_GRAPH = ".st-key-causal-graph img"
TIMEOUT = 30_000


@pytest.fixture(scope="module")
def site(demo_site):
    return demo_site


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
    page.locator(CHART).nth(1).wait_for()  # token bars, layer x token
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
    page.locator(".st-key-causal-map-0 img").wait_for()  # another tool's result
    _shot(page, "causal")

    page.goto(f"{site}/compare?trace={demo_store.main}&compare={demo_store.second}")
    page.locator(".st-key-cmp-diff img").wait_for()
    page.locator(CHART).first.wait_for()
    _shot(page, "compare")


def _boxes_overlap(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


# True when the element's centre is not covered by anything else (SVG text or HTML).
_ON_TOP = """element => {
    const box = element.getBoundingClientRect();
    const hit = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
    return hit !== null && (element.contains(hit) || hit.contains(element));
}"""


_ICON_SET = """() => [...document.querySelectorAll("link[rel*='icon']")]
    .some(link => !link.href.endsWith("favicon.png"))"""


def _table_row(page, row: int) -> None:
    """Tick (or untick) a row of the Browse table by its row marker (the grid is a canvas)."""
    grid = page.get_by_test_id("stDataFrame").bounding_box()
    page.mouse.click(grid["x"] + 16, grid["y"] + 36 + 56 * row + 28)


def test_new_user_defects_in_a_real_browser(site, page, demo_store):
    """Issue 10 §3 items 4, 9, 11 and 16, and §4's Markdown image: nothing leaves the server."""
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    # 11: a bar click adds its token to the pills' selection
    page.goto(f"{site}/generation?trace={demo_store.main}&tokens=0")
    page.locator(f"{CHART} .mark-rect path").nth(2).click()
    page.wait_for_url(re.compile(r"tokens=0%2C2|tokens=0,2"))

    # 9: unticking the only ticked row clears the selection
    page.goto(site)
    page.get_by_test_id("stDataFrame").wait_for()
    page.wait_for_timeout(1000)
    _table_row(page, 0)
    page.get_by_text("Clear selection").wait_for()
    _table_row(page, 0)
    page.get_by_text("Select a row to open a trace").wait_for()
    assert "trace=" not in page.url

    # 4: the head ranking's heading is not hidden under the graph
    page.goto(f"{site}/causal?trace={demo_store.main}&tokens=0")
    compute = page.get_by_role("button", name="Compute")
    page.locator(f"{CAUSAL_GRAPH}, .stButton button").first.wait_for()
    if compute.is_visible():
        compute.click()
    page.set_viewport_size({"width": 1280, "height": 720})
    heading = page.get_by_text("heads ranked by causal importance").first  # not the figures list
    heading.wait_for()
    heading.scroll_into_view_if_needed()
    graph = page.locator(CAUSAL_GRAPH).bounding_box()
    assert not _boxes_overlap(heading.bounding_box(), graph)
    assert heading.evaluate(_ON_TOP), "something is drawn over the heading"
    page.set_viewport_size({"width": 1400, "height": 1000})

    # 5, 6: the difference legend and the two-images warning
    page.goto(f"{site}/compare?trace={demo_store.main}&compare={demo_store.second}")
    page.locator(".st-key-cmp-diff img").wait_for()
    page.get_by_text("two different images").wait_for()
    _shot(page, "compare-different-images")

    # §4: hostile Markdown in tokens and result keys fetches nothing
    for path in ("relevancy", "causal", "generation", "compare"):
        page.goto(f"{site}/{path}?trace={demo_store.xss}&compare={demo_store.main}&tokens=3")
        page.locator("[data-testid='stImage'], [data-testid='stVegaLiteChart']").first.wait_for()
        page.wait_for_timeout(500)
    _shot(page, "xss-markdown")

    # 16: the favicon and everything else come from this server, never the internet
    page.wait_for_function(_ICON_SET)  # the page's own icon replaced Streamlit's default
    icons = page.locator("link[rel*='icon']").evaluate_all("links => links.map(l => l.href)")
    assert icons and all(icon.startswith(site) for icon in icons), icons
    hosts = {url.split("/")[2] for url in requests if url.startswith(("http:", "https:", "ws"))}
    assert hosts == {site.split("/")[2]}, hosts


PHOTO = "iframe[title='streamlit_image_coordinates.streamlit_image_coordinates']"


@pytest.fixture(scope="module")
def family_site(family_store):
    with running_dashboard(family_store.directory) as url:
        yield url


def _boxes(directory, trace_id: str):
    from store import open_store

    with open_store(directory) as store, store.open(trace_id) as trace:
        return trace.image.patch_boxes.copy(), trace.image.images[0].size


def test_clicking_the_photo_picks_the_patches_under_the_click(family_site, page, family_store):
    """Text -> image: a click on the photo selects every patch whose box holds the point (the
    global view's and the crop's where they overlap); a second click there deselects them."""
    boxes, (width, height) = _boxes(family_store.directory, family_store.tiled)
    x, y = 0.3 * width, 0.7 * height  # a point of the original image
    under = np.flatnonzero(
        (boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y) & (y < boxes[:, 3])
    )
    assert len(under) == 2  # the global view and one crop
    expected = "%2C".join(str(p) for p in under)
    page.goto(f"{family_site}/attention?trace={family_store.tiled}&view=text+%E2%86%92+image")
    photo = page.frame_locator(PHOTO).first.locator("img")
    photo.wait_for()
    page.wait_for_timeout(500)  # the frame sizes itself to the image
    shown = photo.bounding_box()
    photo.click(position={"x": 0.3 * shown["width"], "y": 0.7 * shown["height"]})
    page.wait_for_url(re.compile(rf"patches=({expected}|{expected.replace('%2C', ',')})(&|$)"))
    page.locator(CHART).first.wait_for()  # the tokens attending to them
    _shot(page, "attention-photo-picker")
    photo.click(position={"x": 0.3 * shown["width"], "y": 0.7 * shown["height"]})
    page.wait_for_url(lambda url: "patches=" not in url)
