"""Share links (issue 15): a copied link reopens the same view in a fresh browser.

Settings are changed through the page's own widgets, the link is read from the clipboard the
"Copy link" button wrote, and the main figure is compared pixel for pixel (tolerance 0) in a
new browser context, which shares no cookies, storage or session with the first; and again
after leaving the page and coming back through the navigation.
"""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from tests.dashboard.browser import SCREENSHOTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT = 30_000
GALLERY = ".st-key-heatmaps"
MAP = ".st-key-heatmap"


@pytest.fixture(scope="module")
def site(demo_site):
    return demo_site


def _fresh(browser, site: str):
    """A new browser context (nothing shared with any other) and its page."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    return context, page


def _settled(page, selector: str) -> np.ndarray:
    """The element's pixels once two screenshots 0.4 s apart agree (reruns and image
    decoding finished)."""
    element = page.locator(selector)
    element.locator("img").first.wait_for()
    previous = None
    for _ in range(40):
        page.wait_for_timeout(400)
        shot = element.screenshot(animations="disabled")
        if shot == previous:
            return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
        previous = shot
    raise AssertionError(f"{selector} kept changing")


def _copy_link(page) -> str:
    """Click the sidebar's Copy link and read what it put on the clipboard."""
    frame = page.frame_locator("iframe[title='st.iframe']")
    frame.get_by_role("button", name="Copy link").click()
    frame.get_by_text("Link copied").wait_for()
    link = page.evaluate("navigator.clipboard.readText()")
    assert link == frame.get_by_label("Link to this view").input_value()
    return link


def _params(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


def _nav(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()


def _same(a: np.ndarray, b: np.ndarray, name: str) -> None:
    """Pixel-equal, or both pictures saved under artifacts/screenshots for a look."""
    difference = np.abs(a.astype(int) - b.astype(int)).max() if a.shape == b.shape else None
    if difference != 0:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(SCREENSHOTS / f"share-{name}-got.png")
        Image.fromarray(b).save(SCREENSHOTS / f"share-{name}-expected.png")
    assert difference == 0, f"{name}: {a.shape} vs {b.shape}, largest difference {difference}"


def test_a_copied_link_reopens_the_view(site, browser, demo_store):
    first, page = _fresh(browser, site)
    page.goto(f"{site}/attention?trace={demo_store.main}")
    page.locator(f"{GALLERY} img").first.wait_for()
    default = _settled(page, GALLERY)

    layer = page.get_by_test_id("stSlider").filter(has_text="Layer").get_by_role("slider")
    layer.focus()
    page.keyboard.press("Home")
    page.wait_for_url(lambda url: "layer=0" in url)
    heads = page.get_by_label("Heads shown (ranked by attention on the image)")
    heads.fill("3")
    heads.press("Enter")
    page.wait_for_url(lambda url: "heads=3" in url)
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_test_id("stSelectbox").filter(has_text="Colour map").click()
    page.get_by_role("option", name="viridis").click()
    page.wait_for_url(lambda url: "cmap=viridis" in url)
    sidebar.get_by_text("Smooth").click()
    page.wait_for_url(lambda url: "smooth=1" in url)
    page.get_by_test_id("stButtonGroup").nth(2).get_by_role("button").nth(1).click()
    page.wait_for_url(lambda url: "tokens=1" in url)
    changed = _settled(page, GALLERY)
    assert changed.shape != default.shape or np.abs(changed - default.astype(int)).max() > 0

    link = _copy_link(page)
    wanted = {"layer": "0", "heads": "3", "cmap": "viridis", "smooth": "1", "tokens": "1"}
    assert wanted.items() <= _params(link).items()
    assert link.startswith(f"{site}/attention?")  # the browser's own address

    second, other = _fresh(browser, site)
    other.goto(link)
    _same(_settled(other, GALLERY), changed, "fresh")

    # Away and back through the navigation: the state is kept, and so is every link.
    _nav(other, "Generation")
    other.locator("[data-testid='stVegaLiteChart']").first.wait_for()
    assert wanted.items() <= _params(_copy_link(other)).items()
    _nav(other, "Raw attention")
    _same(_settled(other, GALLERY), changed, "back")

    # Relevancy: its mode and the opacity, then the link in a third context.
    _nav(other, "Relevancy")
    other.locator(f"{MAP} img").wait_for()
    other.get_by_test_id("stButtonGroup").get_by_text("vision tower", exact=True).click()
    other.wait_for_url(lambda url: "mode=vision" in url)
    opacity = (
        other.get_by_test_id("stSidebar")
        .get_by_test_id("stSlider")
        .filter(has_text="Heatmap opacity")
        .get_by_role("slider")
    )
    opacity.focus()
    other.keyboard.press("End")
    other.wait_for_url(lambda url: "alpha=1.00" in url)
    relevancy = _settled(other, MAP)
    link = _copy_link(other)
    assert {"mode": "vision", "alpha": "1.00", **wanted}.items() <= _params(link).items()
    _nav(other, "Raw attention")  # the new opacity holds there too
    opaque = _settled(other, GALLERY)
    assert np.abs(opaque.astype(int) - changed).max() > 0
    third, last = _fresh(browser, site)
    last.goto(link)
    _same(_settled(last, MAP), relevancy, "relevancy")
    _nav(last, "Raw attention")
    _same(_settled(last, GALLERY), opaque, "relevancy-then-attention")
    for context in (first, second, third):
        context.close()


def test_every_setting_rides_along_to_pages_that_do_not_use_it(app, demo_store):
    """Navigation drops the query string; the next page puts every remembered setting back
    (Browse's filters on a trace page, a view's layer on Browse), so any page's link is
    whole."""
    settings = {"layer": "1", "heads": "2", "mode": "vision", "cmap": "jet", "q": "corner"}
    at = app("attention", trace=demo_store.main, **settings)
    for param in list(at.query_params):
        del at.query_params[param]  # what a click in the page navigation does
    at.switch_page("views/generation.py").run()
    assert not at.exception
    kept = {k: v[-1] if isinstance(v, list) else v for k, v in at.query_params.items()}
    assert {**settings, "trace": demo_store.main}.items() <= kept.items()
