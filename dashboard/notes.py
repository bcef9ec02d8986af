"""Analysts' notes on a trace page: read them, add one (on the trace, the selected tokens or
a region of an image), delete one.

Notes are user text: shown with ``st.text`` (never Markdown or HTML). They are written
through the same handle as causal results (:func:`dashboard.data.results_store`), which is
writable when the server may write the store; where it may not, the notes still show and
adding is disabled with the reason. The list is read from the index on every run, so a note
another viewer added shows at the next click.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from dashboard import data, state
from dashboard.components import text
from dashboard.config import StoreConfig
from store import MAX_NOTE_LENGTH, InvalidName, Note, StoredTrace, StoreError, TraceStore

ON_TRACE, ON_TOKENS, ON_REGION = "the trace", "the selected answer tokens", "an image region"
READ_ONLY = (
    "Adding notes is off: this server cannot write the store (read-only directory or index)."
)
_MESSAGE = "notes:message"  # session key: what the last add or delete did, shown once


@dataclass(frozen=True)
class Region:
    """A box in one image's original pixels."""

    image: int
    box: tuple[float, float, float, float]


def where(note: Note, trace: StoredTrace) -> str:
    """What a note is about, as a short plain label."""
    if note.region is not None:
        image, (x0, y0, x1, y1) = note.region
        return f"image {image}, box ({x0:.0f}, {y0:.0f})–({x1:.0f}, {y1:.0f}) px"
    if note.token_position is not None:
        tokens, position = trace.tokens, note.token_position
        label = text.token_label(tokens.text[position]) if position < len(tokens.text) else "?"
        if position >= tokens.prompt_length:
            return f"answer token {position - tokens.prompt_length}: {label}"
        return f"prompt token {position}: {label}"
    return "trace"


def selection_region(trace: StoredTrace) -> Region:
    """The box around the selected image patches (the photo picker's shared selection) in the
    first image they lie on; the whole first image when no patch is selected."""
    geometry = trace.image
    picked = [p for p in state.ints(state.PATCHES) if 0 <= p < geometry.num_patches]
    if not picked:
        width, height = geometry.images[0].size
        return Region(0, (0.0, 0.0, float(width), float(height)))
    images = np.array([geometry.tiles[t].image for t in geometry.patch_tile[picked]])
    image = int(images[0])
    boxes = geometry.patch_boxes[np.array(picked)[images == image]]
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    return Region(image, (float(x0), float(y0), float(x1), float(y1)))


def _say(message: str) -> None:
    st.session_state[_MESSAGE] = message


def _delete(writer: TraceStore, note_id: int) -> None:
    try:
        writer.delete_note(note_id)
    except KeyError:
        _say("That note was already deleted.")
    except StoreError as error:
        _say(f"The note could not be deleted: {str(error).splitlines()[0]}")


def _add(writer: TraceStore, trace: StoredTrace, key: str) -> None:
    """The form was submitted: add the note where it was asked for (one note per selected
    token), or say in one line why not."""
    values = st.session_state
    body, target = values[f"{key}:text"], values[f"{key}:on"]
    tokens = trace.tokens
    selected = sorted(set(state.ints(state.TOKENS)) & set(range(tokens.answer_length)))
    try:
        if not body.strip():
            raise InvalidName("write the note first")
        if target == ON_TOKENS:
            if not selected:
                raise InvalidName("select answer tokens first (the token pills above)")
            for k in selected:
                writer.add_note(trace.trace_id, body, token_position=tokens.prompt_length + k)
        elif target == ON_REGION:
            image = int(values[f"{key}:image"])
            box = tuple(float(values[f"{key}:{c}"]) for c in ("x0", "y0", "x1", "y1"))
            width, height = trace.image.images[image].size
            if not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
                raise InvalidName(
                    f"the box must lie inside image {image} ({width}×{height} px) with "
                    "x0 < x1 and y0 < y1"
                )
            writer.add_note(trace.trace_id, body, region=(image, box))
        else:
            writer.add_note(trace.trace_id, body)
    except (InvalidName, StoreError) as error:
        _say(f"Not added: {str(error).splitlines()[0]}")
        return
    values[f"{key}:text"] = ""


def _form(writer: TraceStore, trace: StoredTrace) -> None:
    key = f"notes:add:{trace.trace_id}"
    st.text_area("New note", key=f"{key}:text", max_chars=MAX_NOTE_LENGTH, height=80)
    target = st.radio("On", [ON_TRACE, ON_TOKENS, ON_REGION], key=f"{key}:on", horizontal=True)
    if target == ON_TOKENS:
        st.caption("One note on each selected answer token (select them with the pills).")
    elif target == ON_REGION:
        region = selection_region(trace)
        images = trace.image.images
        st.caption(
            "Box in the image's original pixels, filled in from the selected image patches "
            "(click them on Raw attention → text → image) or the whole image; edit as needed."
        )
        seed = f"{key}:{region}"  # a new patch selection fills the inputs anew
        if st.session_state.get(f"{key}:seed") != seed:
            st.session_state[f"{key}:seed"] = seed
            st.session_state[f"{key}:image"] = region.image
            for name, value in zip(("x0", "y0", "x1", "y1"), region.box, strict=True):
                st.session_state[f"{key}:{name}"] = round(value, 1)
        cells = st.columns(5)
        cells[0].selectbox("Image", range(len(images)), key=f"{key}:image")
        for cell, name in zip(cells[1:], ("x0", "y0", "x1", "y1"), strict=True):
            cell.number_input(name, min_value=0.0, step=1.0, format="%.1f", key=f"{key}:{name}")
    st.button(
        "Add note",
        key=f"{key}:submit",
        icon=":material/note_add:",
        on_click=_add,
        args=(writer, trace, key),
    )


def panel(config: StoreConfig, trace: StoredTrace) -> None:
    """The notes of ``trace`` in an expander (open when there are notes): each with what it is
    about, when, and a Delete button; then the form to add one (or the reason it is off). The
    content is drawn only while the expander is open (opening it reruns the page), so a trace
    without notes sends its heatmap without the form."""
    notes = data.notes(config, trace.trace_id)
    box = st.expander(f"Notes ({len(notes)})", expanded=bool(notes), key="notes", on_change="rerun")
    if not box.open:
        return
    writer = data.results_store(config)
    writable = writer.mode == "a"
    with box:
        message = st.session_state.pop(_MESSAGE, None)
        if message:
            st.warning(text.markdown_literal(message))
        for note in notes:
            left, right = st.columns([10, 1], vertical_alignment="center")
            left.text(f"{where(note, trace)} · {text.short_time(note.created_at)}\n{note.text}")
            right.button(
                "Delete",
                key=f"notes:delete:{note.note_id}",
                on_click=_delete,
                args=(writer, note.note_id),
                disabled=not writable,
            )
        if writable:
            _form(writer, trace)
        else:
            st.caption(READ_ONLY)
