"""What every view needs first: the store, the selected trace, the shared controls.

Each ``*_or_stop`` helper either returns what the view needs or shows a friendly message and
stops the script, so views never show a traceback for an empty store or a missing file.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Sequence

import streamlit as st

from dashboard import data, state
from dashboard.components import colormap, text
from dashboard.components.overlay import OverlayStyle
from dashboard.config import StoreConfig, resolve
from store import CorruptTrace, StoredTrace, StoreError, TokenRole, TraceNotFound

BROWSE_PAGE = "views/browse.py"
TRACE_ID = re.compile(r"[0-9a-f]{32}")


def store_config() -> StoreConfig | None:
    """The store the server was started on (``serve --store``), ``None`` if none."""
    return resolve(sys.argv[1:], os.environ)


def config_or_stop() -> StoreConfig:
    """The configured, openable store."""
    config = store_config()
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
    """The trace named by ``param`` in the URL, opened lazily.

    Ids are accepted in any case (people copy them from places that upper-case hex) and
    checked against the index on every run, so a trace removed with ``store rm`` disappears
    at once instead of living on in the cache.
    """
    raw = state.get(param)
    if not raw:
        st.info("No trace selected. Pick one on the Browse page.")
        st.page_link(BROWSE_PAGE, label="Go to Browse", icon=":material/table_view:")
        st.stop()
    trace_id = raw.strip().lower()
    if not TRACE_ID.fullmatch(trace_id):
        st.warning("This link does not name a trace: a trace id is 32 hexadecimal digits.")
        st.text(f"{param} = {raw[:80]}")
    elif trace_id not in data.store(config):
        st.warning("This trace is not in the store (it may have been deleted).")
    else:
        if trace_id != raw:
            state.put(param, trace_id)
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


def damaged(error: BaseException) -> None:
    """One line for a trace whose file fails while a view reads it (a flipped byte, a
    truncated chunk): what is wrong and the command that checks the whole store."""
    trace_id = state.get(state.TRACE) or "?"
    detail = text.markdown_literal(
        str(error).splitlines()[0] if str(error) else type(error).__name__
    )
    st.error(
        f"trace {text.markdown_literal(trace_id[:32])} is damaged: {detail}; "
        "run `lvlm-interpret store verify`"
    )


def trace_page(title: str) -> tuple[StoreConfig, StoredTrace]:
    """Open a page about one trace: the store, the trace, the title and the trace's header."""
    config = config_or_stop()
    trace = trace_or_stop(config)
    st.title(title)
    trace_header(trace)
    return config, trace


def trace_header(trace: StoredTrace) -> None:
    """Which trace this is: model, checkpoint, date, prompt, answer and, when the trace
    carries one, the reference answer; all shown as plain text."""
    info = trace.info
    st.text(
        f"{info.model_id} @ {info.model_revision} · {text.short_time(info.created_at)} · "
        f"{info.image_name} · id {text.short_id(info.trace_id)}"
    )
    st.text(f"Prompt: {info.prompt}")
    verdict = {True: "  (correct)", False: "  (wrong)", None: ""}[info.correct]
    st.text(f"Answer: {info.answer}{verdict}")
    if info.reference_answer is not None:
        st.text(f"Reference answer: {info.reference_answer}")


def template_positions(trace: StoredTrace) -> set[int]:
    """Positions of chat-template tokens in the prompt (``<s>``, USER, ASSISTANT, ":")."""
    tokens = trace.tokens
    return text.template_positions(
        tokens.text, tokens.roles, tokens.prompt_length, trace.info.prompt
    )


def hide_template_toggle() -> bool:
    """Whether charts leave out the chat template's tokens (URL ``hide=0`` shows them)."""
    return st.toggle(
        "Hide template tokens",
        help=text.markdown_literal("The chat template's tokens: <s>, USER, ASSISTANT, ':' ..."),
        **state.widget(
            "text:hide", state.get("hide") != "0", lambda v: state.put("hide", None if v else "0")
        ),
    )


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
    unit = choice_param(state.UNIT, ("token", "word"), "token")
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
        names = text.distinct([w.text for w in answer_words(trace)])
    else:
        groups = [(k,) for k in range(len(labels))]
        names = text.distinct(labels)
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


def url_style() -> OverlayStyle:
    """The heatmap style the URL names (``cmap``, ``alpha``, ``smooth``, ``fade``), every
    value checked; what the sidebar's controls start from, and what exports draw with."""
    defaults = OverlayStyle()
    return OverlayStyle(
        colormap=choice_param("cmap", colormap.SEQUENTIAL, defaults.colormap),
        opacity=round(number_param("alpha", defaults.opacity, 0.0, 1.0), 2),
        smooth=state.get("smooth") == "1",
        fade=state.get("fade") != "0",
    )


def overlay_style() -> OverlayStyle:
    """Colour map, opacity and smoothing for every heatmap, set in the sidebar.

    Call it once per page run (its widgets have fixed keys) and pass the style on.
    """
    defaults, asked = OverlayStyle(), url_style()
    with st.sidebar:
        st.subheader("Heatmaps")
        name = st.selectbox(
            "Colour map",
            list(colormap.SEQUENTIAL),
            **state.widget(
                "style:cmap",
                asked.colormap,
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
                asked.opacity,
                lambda v: state.put("alpha", f"{v:.2f}"),
            ),
        )
        fade = st.toggle(
            "Fade low values (show the photo where the map is low)",
            **state.widget(
                "style:fade",
                asked.fade,
                lambda v: state.put("fade", None if v else "0"),
            ),
        )
        smooth = st.toggle(
            "Smooth",
            **state.widget(
                "style:smooth",
                asked.smooth,
                lambda v: state.put("smooth", "1" if v else None),
            ),
        )
    return OverlayStyle(
        colormap=name or defaults.colormap,
        opacity=float(opacity),
        smooth=bool(smooth),
        fade=bool(fade),
    )


def choice_param(param: str, options: Sequence[str], default: str) -> str:
    """A URL parameter that must be one of ``options``; ``default`` otherwise."""
    value = state.get(param)
    return value if value in options else default


def number_param(param: str, default: float, low: float, high: float) -> float:
    """A finite number from the URL clipped to ``low..high``; ``default`` when absent or not a
    finite number (``nan`` and ``inf`` would break sliders and paint maps black)."""
    try:
        value = float(state.get(param) or "")
    except ValueError:
        return default
    return min(max(value, low), high) if math.isfinite(value) else default


def int_param(param: str, default: int, upper: int) -> int:
    """An integer URL parameter clipped to ``0..upper``; ``default`` when absent or garbled."""
    raw = (state.get(param) or "").strip()
    value = int(raw) if raw.isdecimal() and len(raw) < 12 else default
    return min(max(value, 0), max(upper, 0))


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


MEAN_OF_HEADS = "mean of heads"


def head_select(label: str, param: str, heads: int, key: str) -> int | None:
    """One head, or ``None`` for the mean of heads (URL parameter ``param``; absent: mean)."""
    raw = (state.get(param) or "").strip()
    seed = int(raw) if raw.isdecimal() and len(raw) < 6 and int(raw) < heads else MEAN_OF_HEADS
    picked = st.selectbox(
        label,
        [MEAN_OF_HEADS, *range(heads)],
        **state.widget(
            key, seed, lambda v: state.put(param, None if v == MEAN_OF_HEADS else str(v))
        ),
    )
    return None if picked == MEAN_OF_HEADS else int(picked)


def index_select(
    label: str, param: str, count: int, key: str, format_func: Callable[[int], str] = str
) -> int:
    """One of ``range(count)`` bound to URL parameter ``param`` (default 0, clipped)."""
    return st.selectbox(
        label,
        range(count),
        format_func=format_func,
        **state.widget(key, int_param(param, 0, count - 1), lambda v: state.put(param, str(v))),
    )
