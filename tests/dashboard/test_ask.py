"""The Ask page's pure parts (image edits, progress lines, conversations) and the page itself
under AppTest: read-only without a worker, one clear line for each refused question."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dashboard.components import ask, edit
from store import TraceInfo, open_store
from store.jobs import MAX_PROMPT_CHARS, JobQueue, png_bytes
from store.synthetic import make_synthetic_trace

# --- image edits -------------------------------------------------------------------------


def _photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8))


BOX = edit.Box(10, 5, 30, 25)


def _inside(array: np.ndarray, box: edit.Box) -> np.ndarray:
    return array[box.y0 : box.y1, box.x0 : box.x1]


def _outside_equal(a: np.ndarray, b: np.ndarray, box: edit.Box) -> bool:
    keep = np.ones(a.shape[:2], bool)
    keep[box.y0 : box.y1, box.x0 : box.x1] = False
    return bool(np.array_equal(a[keep], b[keep]))


def test_erase_fills_the_region_with_the_mean_colour_and_keeps_the_rest():
    photo = _photo()
    before = np.asarray(photo)
    after = np.asarray(edit.apply(photo, edit.Edit("erase", (BOX,))))
    mean = np.round(before.reshape(-1, 3).mean(axis=0))
    assert (_inside(after, BOX) == mean).all()
    assert _outside_equal(before, after, BOX)


def test_paint_uses_the_chosen_colour():
    after = np.asarray(edit.apply(_photo(), edit.Edit("paint", (BOX,), colour=(1, 2, 3))))
    assert (_inside(after, BOX) == (1, 2, 3)).all()
    assert not (after == (1, 2, 3)).all(axis=2)[0, 0]


def test_blur_smooths_only_inside_the_region():
    photo = _photo()
    before = np.asarray(photo).astype(float)
    after = np.asarray(edit.apply(photo, edit.Edit("blur", (BOX,), radius=4))).astype(float)
    assert _outside_equal(before, after, BOX)
    # neighbouring pixels differ far less once blurred (noise has no structure to keep)
    step = lambda a: np.abs(np.diff(_inside(a, BOX), axis=1)).mean()  # noqa: E731
    assert step(after) < step(before) / 4
    assert edit.Edit("blur", (BOX,), radius=4).describe() == "blur radius 4 (10, 5)-(30, 25)"


def test_several_boxes_and_boxes_past_the_edge():
    photo = _photo()
    boxes = (edit.Box(0, 0, 5, 5), edit.Box(55, 35, 99, 99))
    after = np.asarray(edit.apply(photo, edit.Edit("paint", boxes, colour=(0, 0, 0))))
    assert (after[:5, :5] == 0).all() and (after[35:, 55:] == 0).all()
    assert int((after == 0).all(axis=2).sum()) == 25 + 25


def test_an_array_works_like_an_image_and_an_unknown_action_is_refused():
    pixels = np.asarray(_photo())
    assert np.array_equal(
        np.asarray(edit.apply(pixels, edit.Edit("paint", (BOX,)))),
        np.asarray(edit.apply(_photo(), edit.Edit("paint", (BOX,)))),
    )
    with pytest.raises(ValueError, match="unknown edit"):
        edit.apply(pixels, edit.Edit("melt", (BOX,)))


def test_png_bytes_are_lossless():
    photo = _photo()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(photo)))), photo)


def test_canvas_rectangles_become_image_boxes():
    objects = [
        {"type": "rect", "left": 49, "top": 39, "width": 70, "height": 60, "scaleX": 1},
        # dragged up and left, then resized to twice its width
        {"type": "rect", "left": 100, "top": 100, "width": -20, "height": -30, "scaleX": 2},
        {"type": "path", "left": 0, "top": 0, "width": 10, "height": 10},
        {"type": "rect", "left": 500, "top": 500, "width": 10, "height": 10},  # off the image
        {"type": "rect", "left": "x", "top": 0, "width": 10, "height": 10},  # garbled
        {"type": "rect", "left": float("nan"), "top": 0, "width": 10, "height": 10},
    ]
    boxes = edit.boxes_from_canvas(objects, scale=5.0, width=60, height=40)
    assert boxes == [edit.Box(9, 7, 24, 20), edit.Box(12, 14, 20, 20)]


def test_canvas_drawing_carries_the_image_at_the_canvas_size():
    drawing, height, scale = edit.canvas_drawing(_photo(), 360)
    assert (height, scale) == (240, 6.0)
    background = drawing["backgroundImage"]
    assert (background["width"], background["height"]) == (360, 240)
    assert background["src"].startswith("data:image/png;base64,")
    assert drawing["objects"] == []


def test_colours_parse_and_refuse():
    assert edit.parse_colour("#ff0080") == (255, 0, 128)
    assert edit.hex_colour((255, 0, 128)) == "#ff0080"
    for bad in ("red", "#fff", "#gg0000", "javascript:alert(1)"):
        with pytest.raises(ValueError):
            edit.parse_colour(bad)


# --- what the page says ------------------------------------------------------------------


def test_limits_and_progress_lines():
    assert ask.image_limits(20 << 20, 4096) == "At most 20 MB and 4096 pixels on each side."
    assert ask.size_label(1536) == "1.5 KB" and ask.size_label(900) == "900 bytes"
    assert ask.progress("queued", 0, 0, "", None).line == "Queued: next in line."
    assert ask.progress("queued", 2, 0, "", None).line == "Queued: 2 questions ahead."
    running = ask.progress("running", None, 1.7, "generating 3/32", None)
    assert (running.line, running.fraction, running.finished) == (
        "Running: generating 3/32",
        1.0,
        False,
    )
    failed = ask.progress("failed", None, 0, "", "CUDA out of memory\nTraceback ...")
    assert (failed.line, failed.failed, failed.finished) == (
        "Failed: CUDA out of memory",
        True,
        True,
    )
    assert ask.progress("done", None, 1, "", None).finished
    assert ask.progress("failed", None, 0, "", "").line == "Failed: the worker gave no reason"


def _info(trace_id: str, parent: str | None = None, **extra) -> TraceInfo:
    if parent:
        extra["parent_trace_id"] = parent
    return TraceInfo(
        trace_id=trace_id,
        model_id="m",
        model_revision="r",
        prompt=f"q{trace_id}",
        answer=f"a{trace_id}",
        image_name="x.png",
        image_sha256="0" * 64,
        created_at="2026-11-30T00:00:00+00:00",
        extra=extra,
    )


def test_conversation_follows_parents_oldest_first_and_stops_safely():
    infos = {"1": _info("1"), "2": _info("2", "1"), "3": _info("3", "2")}
    assert [i.trace_id for i in ask.conversation("3", infos.get)] == ["1", "2", "3"]
    assert [i.trace_id for i in ask.conversation("3", infos.get, limit=2)] == ["2", "3"]
    del infos["1"]  # a deleted parent ends the chain
    assert [i.trace_id for i in ask.conversation("3", infos.get)] == ["2", "3"]
    loop = {"a": _info("a", "b"), "b": _info("b", "a")}
    assert [i.trace_id for i in ask.conversation("a", loop.get)] == ["b", "a"]
    assert ask.conversation("missing", infos.get) == []


def test_edit_note():
    assert ask.edit_note(_info("1")) is None
    edited = _info("2", edited_from="f" * 32, edit="erase (1, 2)-(3, 4)")
    assert ask.edit_note(edited) == "Image edited from trace ffffffff: erase (1, 2)-(3, 4)"


# --- the page ----------------------------------------------------------------------------


@pytest.fixture
def ask_store(tmp_path: Path) -> tuple[Path, str]:
    """A store of its own (the queue adds its tables) holding one trace."""
    with open_store(tmp_path, writable=True) as store:
        trace_id = store.add(make_synthetic_trace(seed=21, grid=(4, 6)))
    return tmp_path, trace_id


@pytest.fixture
def live(ask_store: tuple[Path, str]):
    """The store with a worker announced through the queue, as ``lvlm-interpret worker``
    does on start; the test itself plays the worker's part (claim, finish, fail)."""
    directory, trace_id = ask_store
    with JobQueue(directory) as queue:
        worker = queue.register_worker("demo-model", "sha256:0")
        yield directory, trace_id, queue, worker
        queue.unregister_worker(worker)


def test_without_a_worker_the_page_says_how_to_start_one_and_asks_nothing(app, ask_store):
    directory, trace_id = ask_store
    at = app("ask", store_dir=directory, trace=trace_id)
    assert not at.exception
    assert any("No worker is running" in i.value for i in at.info)
    command = next(c.value for c in at.get("code") if "worker" in c.value)
    assert f"lvlm-interpret worker --store {directory} --model PATH" in command
    assert "serve --store" in command and "--model PATH" in command
    assert not [b for b in at.button if b.label.startswith("Ask")]
    assert not at.get("file_uploader") and not at.text_area
    assert "Conversation" in [s.value for s in at.subheader]  # reading stays possible
    assert JobQueue(directory).recent(10) == []


def _from_store(app, directory: Path, trace_id: str, prompt: str):
    at = app("ask", store_dir=directory, trace=trace_id)
    at.radio(key="ask:source").set_value("An image from the store").run()
    at.text_area(key="ask:prompt").input(prompt)  # sent with the form's submit
    return at.button(key="ask:go").click().run()


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("   ", "The prompt is empty"),
        ("What\x07 is it?", "The prompt contains control characters"),
        ("What is <image> here?", "Remove '<image>' from the prompt"),
    ],
)
def test_a_refused_question_is_one_line_and_nothing_is_queued(app, live, prompt, message):
    directory, trace_id, queue, _ = live
    at = _from_store(app, directory, trace_id, prompt)
    assert not at.exception
    assert len(at.error) == 1
    assert at.error[0].value.replace("\\", "").startswith(message)  # shown escaped
    assert queue.recent(10) == []


def test_the_prompt_box_holds_at_most_the_limit(app, live):
    directory, trace_id, _, _ = live
    at = app("ask", store_dir=directory, trace=trace_id)
    assert at.text_area(key="ask:prompt").max_chars == MAX_PROMPT_CHARS
    assert f"At most {MAX_PROMPT_CHARS} characters." in [c.value for c in at.caption]


def test_asking_without_an_image_is_refused(app, live):
    directory, trace_id, queue, _ = live
    at = app("ask", store_dir=directory, trace=trace_id)
    at.text_area(key="ask:prompt").input("What is it?")
    at.button(key="ask:go").click().run()
    assert [e.value for e in at.error] == ["Choose an image to upload first."]
    assert queue.recent(10) == []


def test_a_question_is_queued_then_its_trace_opens(app, live):
    directory, trace_id, queue, worker = live
    at = _from_store(app, directory, trace_id, "What colour is it?")
    assert not at.exception and not at.error
    [job] = queue.recent(10)
    assert job.request.prompt == "What colour is it?" and job.state == "queued"
    assert job.request.image == queue.image_of_trace(trace_id)
    assert "Queued: next in line." in [t.value for t in at.text]
    assert at.button(key="ask:go").disabled  # one question at a time per tab
    claimed = queue.claim(worker)
    queue.report_progress(claimed.job_id, 0.5, "generating 4/8")
    at.run()
    assert "Running: generating 4/8" in [t.value for t in at.text]
    with open_store(directory, writable=True) as store:  # the worker records a trace
        answer = store.add(make_synthetic_trace(seed=22, grid=(4, 6)))
    queue.finish(claimed.job_id, answer)
    at.run()
    assert not at.exception
    assert at.query_params["trace"] == answer
    assert "Conversation" in [s.value for s in at.subheader]
    assert not at.button(key="ask:go").disabled


def test_a_shapes_world_scene_drawn_from_its_seed_is_asked_about(app, live):
    from engine.demo.world import make_scene

    directory, trace_id, queue, _ = live
    at = app("ask", store_dir=directory, trace=trace_id)
    at.radio(key="ask:source").set_value("A shapes-world scene").run()
    at.number_input(key="ask:scene_seed").set_value(7).run()
    at.selectbox(key="ask:scene_count").set_value(4).run()
    at.text_area(key="ask:prompt").input("How many shapes are there?")
    at.button(key="ask:go").click().run()
    assert not at.exception and not at.error
    [job] = queue.recent(10)
    sent = np.asarray(Image.open(queue.upload_path(job.request.image)))
    assert np.array_equal(sent, np.asarray(make_scene(7, 4).image.convert("RGB")))
    assert not np.array_equal(sent, np.asarray(make_scene(8, 4).image.convert("RGB")))
    assert job.request.scene == (7, 4)  # the worker stores this scene's ground truth


def test_a_failed_question_shows_its_one_line_error(app, live):
    directory, trace_id, queue, worker = live
    at = _from_store(app, directory, trace_id, "What colour is it?")
    claimed = queue.claim(worker)
    queue.fail(claimed.job_id, "CUDA out of memory\nTraceback (most recent call last): ...")
    at.run()
    assert [e.value for e in at.error] == [
        "Failed\\: CUDA out of memory Traceback \\(most recent call last\\)\\: \\.\\.\\."
    ]
    assert at.query_params["trace"] == trace_id


def test_edit_and_ask_again_sends_the_edited_image_and_opens_compare(app, live):
    """The typed box (the keyboard's way; the canvas needs a browser): the edited upload
    differs from the original inside the box only, and the answer opens on Compare."""
    directory, trace_id, queue, worker = live
    at = app("ask", store_dir=directory, trace=trace_id)
    at.segmented_control(key="ask:mode").set_value("Edit and ask again").run()
    at.segmented_control(key="ask:action").set_value("paint").run()
    for i, value in enumerate((2, 3, 10, 9)):  # left, top, right, bottom
        at.number_input(key=f"ask:box:{i}").set_value(value)
    at.run()
    assert "paint #000000 (2, 3)-(10, 9)" in [c.value.replace("\\", "") for c in at.caption]
    at.button(key="ask:go3").click().run()
    assert not at.exception and not at.error
    [job] = queue.recent(10)
    request = job.request
    assert (request.edited_from, request.edit) == (trace_id, "paint #000000 (2, 3)-(10, 9)")
    original = np.asarray(Image.open(queue.upload_path(queue.image_of_trace(trace_id))))
    edited = np.asarray(Image.open(queue.upload_path(request.image)))
    assert (edited[3:9, 2:10] == 0).all()
    changed = (edited != original).any(axis=2)
    assert changed.any() and not changed[:3].any() and not changed[9:].any()
    claimed = queue.claim(worker)
    with open_store(directory, writable=True) as store:
        answer = store.add(make_synthetic_trace(seed=23, grid=(4, 6)))
    queue.finish(claimed.job_id, answer)
    at.run()
    assert not at.exception
    assert (at.query_params["trace"], at.query_params["compare"]) == (trace_id, answer)
    assert "Compare" in [t.value for t in at.title]
