"""Hostile text stays inert on every page (issue 15): a trace whose prompt, answer,
revision, reference answer, image name, tags, tokens and notes carry HTML, JavaScript,
Markdown and LaTeX tricks is opened on every page in headless Chromium. No script runs (a
window flag and dialogs are watched), the DOM holds no ``onerror`` handler, ``javascript:``
link or rendered LaTeX, and the text shows literally."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

import pytest

from store import open_store
from store.synthetic import make_synthetic_trace
from tests.dashboard.browser import running_dashboard
from tests.dashboard.conftest import XSS_SCRIPT, _xss_trace

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCRIPT = "<script>window.__xss=1</script>"
IMG = '<img src=x onerror="window.__xss=2">'
LINK = "[x](javascript:window.__xss=3)"
LATEX = r"$\href{javascript:window.__xss=4}{click}$"
ANCHOR = '<a href="javascript:window.__xss=5">go</a>'
BOLD = "**bold**"
HOSTILE = f"{SCRIPT} {IMG} {LINK} {LATEX} {ANCHOR} {BOLD}"
TAG = f"{IMG}{LINK}"
NOTE = f"note {SCRIPT} {LATEX} {BOLD}"

# Anything that could run or navigate: handlers, javascript: URLs, LaTeX rendered by KaTeX,
# our payload's script, in the page and every frame it has.
_DANGER = """() => [...document.querySelectorAll('*')].flatMap(el => {
    const found = [];
    for (const attr of el.attributes) {
        if (attr.name.startsWith('on')) found.push(el.tagName + ' ' + attr.name);
        if (/^\\s*javascript:/i.test(attr.value)) found.push(el.tagName + ' ' + attr.name);
    }
    if (el.classList.contains('katex')) found.push('katex');
    if (el.tagName === 'SCRIPT' && el.textContent.includes('__xss')) found.push('script');
    return found;
})"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A store with the hostile trace (tags, notes, tokens, a causal result) and a plain
    one to compare it with."""
    directory = tmp_path_factory.mktemp("hostile")
    trace = _xss_trace(31)
    info = dataclasses.replace(
        trace.info,
        prompt=f"What is {HOSTILE}?",
        answer=f"It is {HOSTILE}",
        model_revision=f"rev {LINK} {LATEX}",
        reference_answer=f"ref {ANCHOR} {BOLD}",
        image_name=f"{IMG}.png",
    )
    with open_store(directory, writable=True) as store:
        bad = store.add(dataclasses.replace(trace, info=info))
        plain = store.add(make_synthetic_trace(seed=32, grid=(4, 6)))
        store.tag(bad, TAG, SCRIPT)
        store.add_note(bad, NOTE)
        store.add_note(bad, f"token {ANCHOR}", token_position=trace.tokens.prompt_length)
        store.add_note(bad, f"region {LINK}", region=(0, (1, 1, 20, 20)))
        store.set_metrics(bad, {f"m {BOLD}": 0.5})
        patches = [i / 24 for i in range(24)]  # a map per patch of the 4x6 grid
        store.put_result(bad, "causal", LINK, {LATEX: patches, f"**{IMG}**": 0.5})
    return directory, bad, plain


@pytest.fixture(scope="module")
def site(hostile):
    with running_dashboard(hostile[0]) as url:
        yield url


def test_every_page_keeps_hostile_text_inert(site, hostile, browser):
    _, bad, plain = hostile
    pages = [
        (f"?trace={bad}", "[data-testid='stDataFrame']", [HOSTILE[:60]]),
        (f"?note={quote('__xss=1')}&trace={bad}", "[data-testid='stDataFrame']", []),
        (f"?tag={quote(TAG)}", "[data-testid='stDataFrame']", ["CSV (1 traces)"]),
        (f"generation?trace={bad}", "[data-testid='stVegaLiteChart']", [HOSTILE, NOTE]),
        (f"attention?trace={bad}", ".st-key-heatmaps img", [HOSTILE, "token " + ANCHOR]),
        (f"attention?trace={bad}&view=analysis", "[data-testid='stVegaLiteChart']", []),
        (f"attention?trace={bad}&view=text+%E2%86%92+image&patches=3,4", "iframe", []),
        (f"attention?trace={bad}&view=vision+tower", ".st-key-rollout-heatmap img", []),
        (f"relevancy?trace={bad}", ".st-key-heatmap img", [HOSTILE, "region " + LINK]),
        (f"causal?trace={bad}&tokens=0", "[data-testid='stImage']", [HOSTILE]),
        (f"compare?trace={bad}&compare={plain}", ".st-key-cmp-diff img", []),
        (f"dataset?tag={quote(SCRIPT)}", "[data-testid='stMain']", []),
        ("ask", "[data-testid='stMain']", []),
    ]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for path, ready, literal in pages:
        page.goto(f"{site}/{path}")
        page.locator(ready).first.wait_for()
        page.wait_for_timeout(800)  # late renders (charts, notes) have arrived
        assert page.evaluate("window.__xss") is None, path
        for frame in page.frames:
            assert frame.evaluate(_DANGER) == [], (path, frame.url)
        shown = page.locator("[data-testid='stMain']").inner_text()
        for text in literal:
            assert text in shown, (path, text)
        assert "Traceback" not in shown, path
        if path.startswith("relevancy"):  # the answer's tokens, shaded: HTML the app builds
            tokens = page.locator(".lvlm-tokens")
            assert XSS_SCRIPT in tokens.inner_text()
            assert tokens.locator("script, img").count() == 0
    # The tag filter lists the hostile tag as plain text.
    page.goto(f"{site}/?tag={quote(TAG)}")
    page.get_by_test_id("stSelectbox").filter(has_text="Tag").click()
    assert page.get_by_role("option", name=SCRIPT, exact=True).is_visible()
    assert page.evaluate("window.__xss") is None and dialogs == []
    context.close()
