"""What every view needs first: the store, the selected trace, the shared controls.

Each ``*_or_stop`` helper either returns what the view needs or shows a friendly message and
stops the script, so views never show a traceback for an empty store or a missing file.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import streamlit as st

from dashboard import data, state
from dashboard.components import colormap, text
from dashboard.components.overlay import OverlayStyle
from dashboard.config import StoreConfig, resolve
from store import CorruptTrace, StoredTrace, StoreError, TokenRole, TraceNotFound

BROWSE_PAGE = "views/browse.py"


def config_or_stop() -> StoreConfig:
    """The configured, openable store."""
    config = resolve(sys.argv[1:], os.environ)
    if config is None:
        st.error("No trace store configured: run `lvlm-interpret serve --store DIR`.")
        st.stop()
    try:
        data.store(config)
    except StoreError as error:
        st.error("The trace store could not be opened.")
        st.text(str(error))
        st.stop()
    return config


def trace_or_stop(config: StoreConfig, param: str = state.TRACE) -> StoredTrace:
    """The trace named by ``param`` in the URL, opened lazily."""
    trace_id = state.get(param)
    if not trace_id:
        st.info("No trace selected. Pick one on the Browse page.")
        st.page_link(BROWSE_PAGE, label="Go to Browse", icon=":material/table_view:")
        st.stop()
    try:
        return data.trace(config, trace_id)
    except TraceNotFound:
        st.warning("This trace is not in the store (it may have been deleted).")
    except CorruptTrace as error:
        st.error("This trace's file is missing or unreadable, so it can't be shown.")
        st.text(str(error))
    except StoreError as error:
        st.error("This trace could not be opened.")
        st.text(str(error))
    st.text(f"trace id: {trace_id}")
    st.page_link(BROWSE_PAGE, label="Go to Browse", icon=":material/table_view:")
    st.stop()


def trace_page(title: str) -> tuple[StoreConfig, StoredTrace]:
    """Open a page about one trace: the store, the trace, the title and the trace's header."""
    config = config_or_stop()
    trace = trace_or_stop(config)
    st.title(title)
    trace_header(trace)
    return config, trace


def trace_header(trace: StoredTrace) -> None:
    """Which trace this is: model, checkpoint, date and prompt, all shown as plain text."""
    info = trace.info
    st.text(f"{info.model_id} @ {info.model_revision} · {info.created_at} · {info.image_name}")
    st.text(f"Prompt: {info.prompt}")
    st.text(f"Answer: {info.answer}")


def answer_words(trace: StoredTrace) -> list[text.Word]:
    """The answer's words, positions given as answer-token indices (k)."""
    tokens = trace.tokens
    found = text.words(tokens.text, tokens.roles, tokens.word_ids, TokenRole.ANSWER)
    prompt = tokens.prompt_length
    return [text.Word(w.index, tuple(p - prompt for p in w.positions), w.text) for w in found]


def answer_selection(
    trace: StoredTrace, where: st.delta_generator.DeltaGenerator | None = None
) -> list[int]:
    """The selected answer tokens (indices k), picked by token or by word; shared by all views.

    Falls back to the first answer token, so every view has something to show at once.
    """
    area = where or st.container()
    tokens = trace.tokens
    labels = [text.token_label(t) for t in tokens.text[tokens.prompt_length :]]
    if not labels:
        area.info("This trace has no answer tokens.")
        st.stop()
    unit = state.get(state.UNIT) or "token"
    unit = (
        area.segmented_control(
            "Select by",
            ["token", "word"],
            **state.widget(f"unit:{trace.trace_id}", unit, lambda v: state.put(state.UNIT, v)),
        )
        or "token"
    )
    chosen = set(state.ints(state.TOKENS)) & set(range(len(labels)))
    if unit == "word":
        groups = [w.positions for w in answer_words(trace)]
        names = [w.text for w in answer_words(trace)]
    else:
        groups = [(k,) for k in range(len(labels))]
        names = labels
    seed = [i for i, g in enumerate(groups) if chosen & set(g)]
    area.pills(
        "Answer tokens" if unit == "token" else "Answer words",
        list(range(len(groups))),
        selection_mode="multi",
        format_func=lambda i: text.markdown_literal(names[i]),
        **state.widget(
            f"pick:{unit}:{trace.trace_id}",
            seed,
            lambda picked: state.put_ints(state.TOKENS, [k for i in picked for k in groups[i]]),
        ),
    )
    selected = sorted(set(state.ints(state.TOKENS)) & set(range(len(labels))))
    if not selected:
        area.caption("Nothing selected: showing the first answer token.")
        return [0]
    return selected


def overlay_style() -> OverlayStyle:
    """Colour map, opacity and smoothing for every heatmap, set in the sidebar."""
    with st.sidebar:
        st.subheader("Heatmaps")
        name = st.selectbox(
            "Colour map",
            list(colormap.SEQUENTIAL),
            **state.widget(
                "style:cmap",
                _valid(state.get("cmap"), colormap.SEQUENTIAL),
                lambda v: state.put("cmap", v),
            ),
        )
        opacity = st.slider(
            "Heatmap opacity",
            0.0,
            1.0,
            step=0.05,
            **state.widget(
                "style:alpha",
                _float(state.get("alpha"), 0.6),
                lambda v: state.put("alpha", f"{v:.2f}"),
            ),
        )
        smooth = st.toggle(
            "Smooth",
            **state.widget(
                "style:smooth",
                state.get("smooth") == "1",
                lambda v: state.put("smooth", "1" if v else None),
            ),
        )
    return OverlayStyle(colormap=name or "inferno", opacity=float(opacity), smooth=bool(smooth))


def _valid(value: str | None, options: tuple[str, ...]) -> str:
    return value if value in options else options[0]


def _float(value: str | None, default: float) -> float:
    try:
        return float(np.clip(float(value), 0.0, 1.0)) if value else default
    except ValueError:
        return default


def int_param(param: str, default: int, upper: int) -> int:
    """An integer URL parameter clipped to ``0..upper``; ``default`` when absent or garbled."""
    try:
        value = int(state.get(param) or default)
    except ValueError:
        value = default
    return min(max(value, 0), upper)


def layer_slider(label: str, param: str, layers: int, default: int) -> int:
    """A layer picker bound to URL parameter ``param`` (shared by the views that use it)."""
    return (
        st.slider(
            label,
            0,
            max(layers - 1, 0),
            **state.widget(
                f"layer:{param}",
                int_param(param, default, layers - 1),
                lambda v: state.put(param, str(v)),
            ),
        )
        if layers > 1
        else 0
    )
