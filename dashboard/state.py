"""Selections shared by every view, mirrored in the URL so a view can be shared and reloaded.

The URL is the source of truth when it names a value (a shared link, a reload); session state
keeps the value when Streamlit's page navigation drops the query string, and puts it back.
Widgets get their own keys, seeded from here and written back by ``on_change`` callbacks,
because Streamlit forgets widget state on page switches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

TRACE = "trace"
COMPARE = "compare"
TOKENS = "tokens"
UNIT = "unit"  # "token" or "word": how answer selections are made

PATCHES = "patches"
TILE = "tile"  # one tile drawn on its own; absent: every image with its tiles stitched
_PREFIX = "url:"
_TRACE_SCOPED = (TOKENS, PATCHES, TILE)  # meaningless once the trace changes
# Settings that hold on every page: a shared link names them once, whatever page it opens.
SHARED = (TRACE, COMPARE, TOKENS, UNIT, PATCHES, TILE, "cmap", "alpha", "smooth", "fade", "hide")
# Settings of one page's views (layer, heads, relevancy mode...). They ride along in the URL
# on every page too, so a link copied anywhere reopens every page as it was left.
VIEWS = (
    "view",
    "layer",
    "heads",  # image -> answer: how many ranked heads are shown
    "head",  # one head; absent: the mean of heads (all heads ranked on Causal)
    "vlayer",
    "vhead",
    "vseq",
    "vquery",
    "xlayer",
    "mode",
    "map",
    "result",
)


def get(param: str) -> str | None:
    """The current value of a URL parameter, restoring it to the URL if navigation dropped it."""
    if param in st.query_params:
        value = st.query_params[param]
        previous = st.session_state.get(_PREFIX + param)
        if param == TRACE and previous not in (None, value):
            _forget_trace_scoped()
        st.session_state[_PREFIX + param] = value
        return value
    value = st.session_state.get(_PREFIX + param)
    if value is not None:
        st.query_params[param] = value
    return value


def keep(params: Iterable[str]) -> None:
    """Before any page runs: remember the values the URL names now, and put back into the URL
    the remembered values that page navigation dropped.

    Without this, a parameter that the opened page does not use (``cmap`` on a page without
    heatmaps) would be lost when navigation drops the query string, and a link copied on that
    page would not carry it. ``params`` must list ``TRACE`` before the trace's selections.
    The dropped values go back in one update (one message to the browser, not one each).
    """
    dropped = {}
    for param in params:
        if param in st.query_params:
            get(param)
        elif (value := st.session_state.get(_PREFIX + param)) is not None:
            dropped[param] = value
    if dropped:
        st.query_params.update(dropped)


def _forget_trace_scoped() -> None:
    """A link opened another trace: drop remembered selections the URL doesn't restate."""
    for param in _TRACE_SCOPED:
        if param not in st.query_params:
            st.session_state.pop(_PREFIX + param, None)


def put(param: str, value: str | None) -> None:
    """Set (or with ``None`` remove) a parameter in both the URL and the session."""
    if value is None or value == "":
        st.session_state.pop(_PREFIX + param, None)
        if param in st.query_params:
            del st.query_params[param]
    else:
        st.session_state[_PREFIX + param] = value
        st.query_params[param] = value


def update(values: Mapping[str, str | None]) -> None:
    for param, value in values.items():
        put(param, value)


def snapshot(params: Iterable[str]) -> dict[str, str]:
    """The present values of ``params`` (absent ones left out)."""
    return {p: v for p in params if (v := get(p)) is not None}


def select_trace(trace_id: str | None, compare_id: str | None = None) -> None:
    """Switch traces; selections that index into the old trace are cleared."""
    if get(TRACE) != trace_id:
        for param in _TRACE_SCOPED:
            put(param, None)
    put(TRACE, trace_id)
    put(COMPARE, compare_id)


def as_int(text: str | None) -> int | None:
    """``text`` as an integer, or ``None``: str.isdigit() lets '²' and (after lstrip('-'))
    '--1' through to int(), whose ValueError was an exception box on the page."""
    text = (text or "").strip()
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else None


def ints(param: str) -> list[int]:
    """A comma-separated list of integers, ignoring anything that isn't one."""
    return [n for p in (get(param) or "").split(",") if (n := as_int(p)) is not None]


def put_ints(param: str, values: Iterable[int]) -> None:
    put(param, ",".join(str(v) for v in sorted(set(values))) or None)


def widget(key: str, seed: object, write: Callable[[Any], None]) -> dict[str, Any]:
    """Keyword arguments that bind a widget to shared state.

    The widget's own key is seeded with ``seed`` (the shared value) before it is drawn, and
    its ``on_change`` hands the new value to ``write``; pass no ``value``/``default``. Keys are
    scoped to the page: a widget of the same name on the previous page must not hand its
    stale value to this one during a page switch.
    """
    ctx = get_script_run_ctx()
    key = f"{ctx.page_script_hash if ctx else ''}:{key}"
    if st.session_state.get(key) != seed:
        st.session_state[key] = seed
    return {"key": key, "on_change": lambda: write(st.session_state[key])}
