"""The Ask page end to end: a real worker on the bundled demo model, the real dashboard server
and headless Chromium. An uploaded image is asked about and its trace opens; two tabs ask at
once and both get their answers; a follow-up continues the conversation; an edited image is
asked about again and lands on Compare beside the original."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.demo import world
from store import open_store
from store.jobs import JobQueue
from tests.dashboard.browser import SCREENSHOTS, running_dashboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "engine" / "demo" / "checkpoint"
TIMEOUT = 60_000
ANSWER_TIMEOUT = 120_000  # queue + generation + recording on a busy 2-core machine
UPLOAD_INPUT = "[data-testid='stFileUploaderDropzoneInput']"


def _png(seed: int) -> tuple[bytes, world.Scene]:
    scene = world.make_scene(seed)
    buffer = io.BytesIO()
    scene.image.save(buffer, format="PNG")
    return buffer.getvalue(), scene


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ask-store")
    open_store(directory, writable=True).close()
    return directory


@pytest.fixture(scope="module")
def worker(store_dir: Path):
    """``lvlm-interpret worker`` on the demo model, until its heartbeat says it is alive."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "worker",
            "--store",
            str(store_dir),
            "--model",
            str(CHECKPOINT),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    queue = JobQueue(store_dir)
    deadline = time.monotonic() + 120
    try:
        while not any(w.alive for w in queue.workers()):
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode()[-2000:])
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not come alive within 120 s")
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def site(store_dir: Path, worker):
    with running_dashboard(store_dir) as url:
        yield url


def _tab(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    return context, page


@pytest.fixture
def page(browser):
    context, tab = _tab(browser)
    yield tab
    context.close()


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOTS / f"ask-{name}.png"), full_page=True)


def _ask_upload(page, site: str, png: bytes, prompt: str) -> None:
    page.goto(f"{site}/ask")
    page.locator(UPLOAD_INPUT).set_input_files(
        files=[{"name": "scene.png", "mimeType": "image/png", "buffer": png}]
    )
    page.get_by_text("scene.png").wait_for()
    page.get_by_label("Question").fill(prompt)
    page.get_by_role("button", name="Ask", exact=True).click()


def _trace_in_url(page) -> str:
    page.wait_for_url(re.compile(r"trace=[0-9a-f]{32}"), timeout=ANSWER_TIMEOUT)
    return re.search(r"trace=([0-9a-f]{32})", page.url).group(1)


def _wait_answer(page) -> str:
    """The new trace's id once its turn shows in the conversation."""
    trace_id = _trace_in_url(page)
    page.get_by_text(f"id {trace_id[:8]}").first.wait_for()
    return trace_id


def test_upload_ask_and_the_trace_opens(site, page, store_dir):
    png, scene = _png(3)
    obj = scene.objects[0]
    _ask_upload(page, site, png, f"What color is the {obj.shape}?")
    page.get_by_text(re.compile(r"Queued|Running")).first.wait_for()
    trace_id = _wait_answer(page)
    info = open_store(store_dir).get(trace_id)
    assert info.prompt == f"What color is the {obj.shape}?"
    page.get_by_text(info.answer, exact=True).wait_for()
    _shot(page, "answer")
    page.get_by_role("link", name="Interpret on Relevancy").click()
    page.locator(".st-key-heatmap img").wait_for()
    assert f"trace={trace_id}" in page.url
    _shot(page, "relevancy")


def test_a_corrupt_upload_is_one_line_and_submits_nothing(site, page, store_dir):
    queue = JobQueue(store_dir)
    before = len(queue.recent(1000))
    page.goto(f"{site}/ask")
    page.locator(UPLOAD_INPUT).set_input_files(
        files=[{"name": "broken.png", "mimeType": "image/png", "buffer": b"\x89PNG not really"}]
    )
    page.get_by_text("broken.png").wait_for()
    page.get_by_label("Question").fill("What color is the circle?")
    page.get_by_role("button", name="Ask", exact=True).click()
    page.get_by_test_id("stAlertContentError").wait_for()
    assert len(page.get_by_test_id("stAlertContentError").inner_text().splitlines()) == 1
    _shot(page, "refused")
    assert len(queue.recent(1000)) == before


def test_two_tabs_ask_at_once_and_both_get_their_answers(site, browser, store_dir):
    tabs = [_tab(browser) for _ in range(2)]
    try:
        prompts = ["How many shapes are there?", "Where is the circle?"]
        for (_, tab), prompt, seed in zip(tabs, prompts, (4, 5), strict=True):
            _ask_upload(tab, site, _png(seed)[0], prompt)
        ids = [_wait_answer(tab) for _, tab in tabs]
        assert ids[0] != ids[1]
        with open_store(store_dir) as store:
            assert [store.get(t).prompt for t in ids] == prompts
        for (_, tab), trace_id in zip(tabs, ids, strict=True):
            tab.get_by_text(f"id {trace_id[:8]}").first.wait_for()
        _shot(tabs[1][1], "two-tabs")
    finally:
        for context, _ in tabs:
            context.close()


def test_follow_up_then_edit_and_ask_again_lands_on_compare(site, page, store_dir):
    png, scene = _png(6)
    _ask_upload(page, site, png, "How many shapes are there?")
    first = _wait_answer(page)

    page.get_by_test_id("stButtonGroup").get_by_text("Follow-up").click()
    follow = page.get_by_label("Follow-up question")
    follow.fill(f"Where is the {scene.objects[0].colour} {scene.objects[0].shape}?")
    page.get_by_role("button", name="Ask the follow-up").click()
    page.wait_for_url(lambda url: first not in url, timeout=ANSWER_TIMEOUT)
    second = _wait_answer(page)
    with open_store(store_dir) as store:
        assert store.get(second).extra["parent_trace_id"] == first
    # the earlier turn is shown in the conversation (other traces in the module's store may
    # ask the same question elsewhere on the page, e.g. in the trace picker)
    page.get_by_test_id("stChatMessage").get_by_text("How many shapes are there?").wait_for()
    _shot(page, "follow-up")

    page.get_by_test_id("stButtonGroup").get_by_text("Edit and ask again").click()
    canvas = page.frame_locator("iframe[title*='drawable_canvas']").locator("canvas.upper-canvas")
    canvas.last.wait_for()
    canvas.last.scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # the background image is drawn after the canvas appears
    box = canvas.last.bounding_box()
    target = scene.objects[0].box  # erase the object the question was about
    scale = box["width"] / scene.image.width
    page.mouse.move(box["x"] + target[0] * scale - 4, box["y"] + target[1] * scale - 4)
    page.mouse.down()
    page.mouse.move(box["x"] + target[2] * scale + 4, box["y"] + target[3] * scale + 4, steps=6)
    page.mouse.up()
    page.get_by_text("Edited image", exact=True).wait_for()
    _shot(page, "edit")
    page.get_by_role("button", name="Ask again about the edited image").click()
    page.wait_for_url(re.compile(r"/compare\?.*compare=[0-9a-f]{32}"), timeout=ANSWER_TIMEOUT)
    edited = re.search(r"compare=([0-9a-f]{32})", page.url).group(1)
    assert f"trace={second}" in page.url
    with open_store(store_dir) as store:
        info = store.get(edited)
        assert info.extra["edited_from"] == second
        assert info.extra["edit"].startswith("erase ")
        assert info.image_sha256 != store.get(second).image_sha256
    page.locator(".st-key-cmp-diff img").wait_for()
    _shot(page, "compare")
