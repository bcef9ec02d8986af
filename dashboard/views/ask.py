"""Ask: put a new question to a model, follow a trace up, or ask again about an edited image.

The dashboard never loads a model. A question goes into the store's job queue
(:class:`store.jobs.JobQueue`); a worker process (``lvlm-interpret worker``) answers it and
records a trace like any other. This page submits, shows the queue position and progress
(a fragment polls once a second: no loop holds the server), and opens the new trace when it
lands — an edited image's trace opens on Compare beside the original. Without a live worker
the page says how to start one and submits nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st
from PIL import Image
from streamlit_drawable_canvas import st_canvas

from dashboard import context, data, state
from dashboard.components import ask, edit, text
from dashboard.config import StoreConfig
from store import StoreError, TraceInfo, TraceNotFound, TraceQuery
from store.jobs import (
    MAX_IMAGE_SIDE,
    MAX_NEW_TOKENS_LIMIT,
    MAX_PROMPT_CHARS,
    MAX_UPLOAD_BYTES,
    METHODS,
    InvalidRequest,
    InvalidUpload,
    JobQueue,
    LiveRequest,
    png_bytes,
)

POLL_S = 1.0
PENDING = "ask:pending"  # the question this browser tab waits for
OPEN_COMPARE = "ask:open-compare"  # an edited image's answer landed: show it on Compare
FAILED = "ask:failed"  # the last question's one-line failure, shown until the next one
NEW, FOLLOW_UP, EDIT = "New question", "Follow-up", "Edit and ask again"
UPLOAD, FROM_STORE, SCENE = "Upload an image", "An image from the store", "A shapes-world scene"
CANVAS_PX = 360
PREVIEW_PX = 240
PAGES = (
    ("views/generation.py", "Generation", ":material/chat:"),
    ("views/relevancy.py", "Relevancy", ":material/insights:"),
    ("views/attention.py", "Raw attention", ":material/grid_on:"),
)


@dataclass(frozen=True)
class Pending:
    """A submitted question; ``edited_from``: the original trace to compare the answer with."""

    job_id: str
    edited_from: str | None = None


@st.cache_resource(show_spinner=False, max_entries=4)
def _queue(config: StoreConfig) -> JobQueue:
    return JobQueue(config.directory, config.db_url)


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _refuse(error: BaseException) -> None:
    """A mistake in what was asked: one line, shown as text, nothing submitted."""
    st.error(text.markdown_literal(_one_line(error)))


def _worker_line(queue: JobQueue, config: StoreConfig) -> bool:
    """Whether a worker is alive to answer; if none, how to start one."""
    alive = [w for w in queue.workers() if w.alive]
    if alive:
        models = sorted({w.model_id for w in alive})
        st.caption(
            text.markdown_literal(
                f"{len(alive)} worker{'s' if len(alive) > 1 else ''} answering with "
                + ", ".join(models)
            )
        )
        return True
    st.info(
        "No worker is running, so this page cannot ask a model anything (the dashboard "
        "itself never loads one). Start a worker on this store, next to the dashboard:"
    )
    st.code(
        f"lvlm-interpret worker --store {config.directory} --model PATH\n"
        f"# or serve the dashboard together with a worker:\n"
        f"lvlm-interpret serve --store {config.directory} --model PATH",
        language="bash",
    )
    return False


def _settings() -> dict[str, Any]:
    """Generation settings and methods to record, shared by the three ways of asking."""
    with st.expander("Generation settings and what to record"):
        sample = st.toggle("Sample (off: greedy decoding)", key="ask:sample")
        cols = st.columns(4)
        temperature = cols[0].number_input(
            "Temperature", min_value=0.01, value=1.0, step=0.1, disabled=not sample, key="ask:t"
        )
        top_p = cols[1].number_input(
            "Top-p",
            min_value=0.0,
            max_value=1.0,
            value=1.0,
            step=0.05,
            disabled=not sample,
            key="ask:p",
        )
        max_new = cols[2].number_input(
            "Max new tokens", min_value=1, max_value=MAX_NEW_TOKENS_LIMIT, value=32, key="ask:n"
        )
        seed = cols[3].number_input("Seed", min_value=0, value=0, key="ask:seed")
        methods = st.multiselect("Record", METHODS, default=["relevancy"], key="ask:methods")
    return {
        "do_sample": bool(sample),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": int(max_new),
        "seed": int(seed),
        "methods": tuple(methods),
    }


def _submit(queue: JobQueue, request: LiveRequest, edited_from: str | None = None) -> None:
    try:
        request.check()
        job_id = queue.submit(request)
    except InvalidRequest as error:
        _refuse(error)
        return
    st.session_state[PENDING] = Pending(job_id, edited_from)
    st.session_state.pop(FAILED, None)
    st.rerun()


@st.fragment(run_every=POLL_S)
def _progress(queue: JobQueue) -> None:
    """The waiting question's position or progress; opens its trace when it lands."""
    pending: Pending | None = st.session_state.get(PENDING)
    if pending is None:
        return
    job = queue.get(pending.job_id)
    if job is None:
        shown = ask.progress("failed", None, 0.0, "", "the queue no longer knows this question")
    else:
        position = queue.position(job.job_id) if job.state == "queued" else None
        shown = ask.progress(
            job.state, position, job.progress or 0.0, job.progress_text or "", job.error
        )
    if shown.finished:
        st.session_state.pop(PENDING, None)
        if shown.failed:
            st.session_state[FAILED] = shown.line
        elif pending.edited_from:
            state.select_trace(pending.edited_from, compare_id=job.trace_id)
            st.session_state[OPEN_COMPARE] = True  # a fragment's rerun cannot switch pages
        else:
            state.select_trace(job.trace_id)
        st.rerun(scope="app")
    st.text(shown.line)
    st.progress(shown.fraction or 0.0)


def _trace_info(config: StoreConfig, trace_id: str) -> TraceInfo | None:
    try:
        return data.info(config, trace_id)
    except (TraceNotFound, StoreError):
        return None


def _selected(config: StoreConfig) -> TraceInfo | None:
    """The trace the other pages show, if there is one and it is in the store."""
    raw = (state.get(state.TRACE) or "").strip().lower()
    return _trace_info(config, raw) if context.TRACE_ID.fullmatch(raw) else None


def _conversation(config: StoreConfig, selected: TraceInfo) -> None:
    """The open trace and the turns before it: prompts and answers as plain text."""
    turns = ask.conversation(selected.trace_id, lambda t: _trace_info(config, t))
    st.subheader("Conversation")
    image_col, chat_col = st.columns([1, 2])
    image_col.image(data.trace(config, selected.trace_id).image.images[0].pixels, width=240)
    with chat_col:
        for info in turns:
            with st.chat_message("user"):
                st.text(info.prompt)
                note = ask.edit_note(info)
                if note:
                    st.caption(text.markdown_literal(note))
            with st.chat_message("assistant"):
                st.text(info.answer)
                st.caption(
                    text.markdown_literal(
                        f"{info.model_id} · {text.short_time(info.created_at)}"
                        f" · id {text.short_id(info.trace_id)}"
                    )
                )
    cols = st.columns(len(PAGES))
    for col, (page, label, icon) in zip(cols, PAGES, strict=True):
        col.page_link(page, label=f"Interpret on {label}", icon=icon)


def _image_from_store(config: StoreConfig, selected: TraceInfo | None) -> str:
    """A recent trace whose image to ask about, chosen from a list ("" when none)."""
    recent = data.query(config, TraceQuery(limit=50)).items
    if not recent:
        st.info("The store holds no trace yet: upload an image.")
        return ""
    ids = [i.trace_id for i in recent]
    if selected is not None and selected.trace_id not in ids:
        recent, ids = [selected, *recent], [selected.trace_id, *ids]
    labels = {
        i.trace_id: f"{i.image_name} · {i.prompt} · {text.short_id(i.trace_id)}" for i in recent
    }
    chosen = st.selectbox(
        "Image of the trace",
        ids,
        index=ids.index(selected.trace_id) if selected is not None else 0,
        format_func=lambda t: text.markdown_literal(labels[t]),
        key="ask:from",
    )
    st.image(data.trace(config, chosen).image.images[0].pixels, width=160)
    return chosen


def _scene() -> tuple[Image.Image, tuple[int, int]]:
    """A scene of the demo model's shapes world, drawn from a seed (the world is numpy and
    Pillow only: no model is loaded), and its (seed, shapes): the worker stores the scene's
    ground truth with the trace, so its maps can be scored against the objects."""
    from engine.demo import world

    seed_column, count_column, picture = st.columns([1, 1, 2])
    seed = int(seed_column.number_input("Seed", 0, 10**9, 0, step=1, key="ask:scene_seed"))
    count = count_column.selectbox("Shapes", [2, 3, 4], index=1, key="ask:scene_count")
    image = world.make_scene(seed, count).image
    picture.image(image, width=160)
    return image, (seed, count)


def _new_question(config: StoreConfig, queue: JobQueue, settings: dict[str, Any]) -> None:
    source = st.radio("Image", [UPLOAD, FROM_STORE, SCENE], horizontal=True, key="ask:source")
    scene, drawn_from = None, None
    if source == SCENE:
        upload, chosen, (scene, drawn_from) = None, "", _scene()
    elif source == UPLOAD:
        upload = st.file_uploader(
            "Image",
            max_upload_size=max(1, -(-MAX_UPLOAD_BYTES // (1 << 20))),
            key="ask:upload",
            label_visibility="collapsed",
        )
        st.caption(ask.image_limits(MAX_UPLOAD_BYTES, MAX_IMAGE_SIDE))
        chosen = ""
    else:
        upload, chosen = None, _image_from_store(config, _selected(config))
    with st.form("ask:new", border=False):  # the question and the click arrive together
        prompt = st.text_area("Question", max_chars=MAX_PROMPT_CHARS, key="ask:prompt")
        st.caption(f"At most {MAX_PROMPT_CHARS} characters.")
        go = st.form_submit_button(
            "Ask", type="primary", disabled=PENDING in st.session_state, key="ask:go"
        )
    if not go:
        return
    if source == UPLOAD and upload is None:
        st.error("Choose an image to upload first.")
        return
    try:
        if scene is not None:
            key = queue.save_upload(png_bytes(scene), "scene.png")
        elif upload is not None:
            key = queue.save_upload(upload.getvalue(), upload.name)
        else:
            key = queue.image_of_trace(chosen)
    except (InvalidUpload, InvalidRequest, TraceNotFound) as error:
        _refuse(error)
        return
    _submit(queue, LiveRequest(image=key, prompt=prompt, scene=drawn_from, **settings))


def _follow_up(queue: JobQueue, selected: TraceInfo, settings: dict[str, Any]) -> None:
    st.caption(
        text.markdown_literal(
            f"Continues the conversation of trace {text.short_id(selected.trace_id)} "
            "about the same image; the answer becomes a new trace linked to it."
        )
    )
    with st.form("ask:follow-up", border=False):
        prompt = st.text_area(
            "Follow-up question",
            max_chars=MAX_PROMPT_CHARS,
            key=f"ask:follow:{selected.trace_id}",
        )
        go = st.form_submit_button(
            "Ask the follow-up", type="primary", disabled=PENDING in st.session_state, key="ask:go2"
        )
    if not go:
        return
    try:
        key = queue.image_of_trace(selected.trace_id)
    except (InvalidUpload, InvalidRequest, TraceNotFound) as error:
        _refuse(error)
        return
    _submit(
        queue,
        LiveRequest(image=key, prompt=prompt, parent_trace_id=selected.trace_id, **settings),
    )


@st.cache_data(show_spinner=False, max_entries=8)
def _original(_queue: JobQueue, config: StoreConfig, trace_id: str) -> Image.Image:
    """The image the trace was asked about, as the model got it: the live upload when there
    is one (the trace itself keeps a display copy of at most 1024 pixels a side)."""
    with Image.open(_queue.upload_path(_queue.image_of_trace(trace_id))) as picture:
        return picture.convert("RGB")


@st.cache_data(show_spinner=False, max_entries=8)
def _canvas_drawing(
    _queue: JobQueue, config: StoreConfig, trace_id: str, width: int
) -> tuple[dict[str, Any], int, float]:
    return edit.canvas_drawing(_original(_queue, config, trace_id), width)


def _typed_box(width: int, height: int) -> edit.Box:
    """A box typed in image pixels: the keyboard's way to choose a region."""
    with st.expander("Or type a box (image pixels)"):
        cols = st.columns(4)
        values = [
            cols[i].number_input(label, min_value=0, max_value=limit, value=0, key=f"ask:box:{i}")
            for i, (label, limit) in enumerate(
                [("left", width), ("top", height), ("right", width), ("bottom", height)]
            )
        ]
    return edit.Box(*(int(v) for v in values))


def _edit_again(
    config: StoreConfig, queue: JobQueue, selected: TraceInfo, settings: dict[str, Any]
) -> None:
    try:
        original = _original(queue, config, selected.trace_id)
    except (InvalidRequest, TraceNotFound) as error:  # several images: live questions take one
        st.info(text.markdown_literal(_one_line(error)))
        return
    st.caption(
        "Draw one or more rectangles on the image, choose what happens inside them, and ask "
        "the same question about the edited image. The answer opens on Compare beside this one."
    )
    controls, canvas_col, preview_col = st.columns([1, 1.3, 1])
    with controls:
        action = st.segmented_control("Edit", edit.ACTIONS, default="erase", key="ask:action")
        action = action or "erase"
        colour, radius = (0, 0, 0), 8.0
        if action == "paint":
            colour = edit.parse_colour(st.color_picker("Colour", "#000000", key="ask:colour"))
        if action == "blur":
            radius = float(st.slider("Blur radius (pixels)", 1, 64, 8, key="ask:radius"))
    drawing, height, scale = _canvas_drawing(queue, config, selected.trace_id, CANVAS_PX)
    with canvas_col:
        result = st_canvas(
            fill_color="rgba(255, 0, 80, 0.25)",
            stroke_width=2,
            stroke_color="#ff0050",
            drawing_mode="rect",
            initial_drawing=drawing,
            width=CANVAS_PX,
            height=height,
            key=f"ask:canvas:{selected.trace_id}",
        )
    objects = (result.json_data or {}).get("objects", []) if result is not None else []
    boxes = edit.boxes_from_canvas(objects, scale, original.width, original.height)
    typed = _typed_box(original.width, original.height)
    if not typed.empty:
        boxes.append(typed)
    prompt = st.text_area(
        "Question",
        value=selected.prompt,
        max_chars=MAX_PROMPT_CHARS,
        key=f"ask:edit-prompt:{selected.trace_id}",
    )
    if not boxes:
        preview_col.caption("No region chosen yet.")
        return
    change = edit.Edit(action, tuple(boxes), colour, radius)
    edited = edit.apply(original, change)
    preview_col.image(edited, width=PREVIEW_PX, caption="Edited image")
    preview_col.caption(text.markdown_literal(change.describe()))
    if not st.button(
        "Ask again about the edited image",
        type="primary",
        disabled=PENDING in st.session_state,
        key="ask:go3",
    ):
        return
    try:
        key = queue.save_upload(png_bytes(edited), f"edited-{selected.trace_id[:8]}.png")
    except InvalidUpload as error:
        _refuse(error)
        return
    request = LiveRequest(
        image=key,
        prompt=prompt,
        edited_from=selected.trace_id,
        edit=change.describe(),
        **settings,
    )
    _submit(queue, request, edited_from=selected.trace_id)


def render_page() -> None:
    config = context.config_or_stop()
    if st.session_state.get(OPEN_COMPARE):  # cleared by Compare once it runs: a rerun that
        st.switch_page("views/compare.py")  # interrupts this one must not lose the switch
    st.title("Ask")
    try:
        queue = _queue(config)
    except StoreError as error:  # a read-only store or index: browsing works, asking cannot
        st.info(
            "Asking needs a store the dashboard can write (questions and uploads are kept "
            "in it): " + text.markdown_literal(_one_line(error))
        )
        return
    live = _worker_line(queue, config)
    selected = _selected(config)
    if PENDING in st.session_state:  # polls only while a question is out
        _progress(queue)
    if FAILED in st.session_state:
        st.error(text.markdown_literal(st.session_state[FAILED]))
    if selected is not None:
        _conversation(config, selected)
    if not live:
        return
    st.subheader("Ask")
    settings = _settings()
    modes = [NEW, FOLLOW_UP, EDIT] if selected is not None else [NEW]
    mode = st.segmented_control("What to ask", modes, default=NEW, key="ask:mode") or NEW
    if mode == FOLLOW_UP and selected is not None:
        _follow_up(queue, selected, settings)
    elif mode == EDIT and selected is not None:
        _edit_again(config, queue, selected, settings)
    else:
        _new_question(config, queue, settings)


render_page()
