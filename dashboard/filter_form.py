"""The Browse filter form: one widget per :class:`BrowseFilters` field, each writing its own
URL parameter, so every page that shows it (Browse, Dataset) filters the same set and a
filter set on one page holds on the other. (``components/filters.py`` keeps the filters'
values and URL form, free of Streamlit.)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import streamlit as st

from dashboard import state
from dashboard.components.filters import SORT_COLUMNS, BrowseFilters
from store import TraceStore

SORT_LABELS = {
    "created_at": "recorded",
    "model_id": "model",
    "model_revision": "checkpoint",
    "prompt": "prompt",
    "answer": "answer",
    "correct": "correct",
}
ANY = "any"


def _write(field_param: str, value: object) -> None:
    """Store one filter's new value and go back to the first page."""
    if isinstance(value, date):
        value = value.isoformat()
    elif isinstance(value, float):
        value = repr(value)
    state.update({field_param: None if value in (None, "", ANY) else str(value), "page": None})


def _options(known: list[str], current: str | None, what: str) -> tuple[list[str], Callable]:
    """Choices for a model or tag filter. A value from the URL that no trace has stays
    visible (marked as such), so the widget shows what filters the table and choosing
    "any" clears it."""
    options = [ANY, *known]
    if current and current not in known:
        options.append(current)
    return options, lambda v: f"{v} (no trace has this {what})" if v not in (ANY, *known) else v


def filter_form(
    store: TraceStore, filters: BrowseFilters, scope: str = "browse", sorting: bool = True
) -> None:
    """The filter form; each widget writes its own URL parameter, so every page that shows
    it (Browse, Dataset) filters the same set. ``sorting=False`` leaves out the sort order
    (a page that aggregates the whole set has none)."""

    def bound(param: str, seed: object) -> dict:
        return state.widget(f"{scope}:{param}", seed, lambda v: _write(param, v))

    top = st.columns([2, 2, 3, 1.2])
    models, model_label = _options(store.models(), filters.model, "model")
    top[0].selectbox(
        "Model", models, format_func=model_label, **bound("model", filters.model or ANY)
    )
    top[1].text_input("Checkpoint / revision contains", **bound("rev", filters.revision or ""))
    top[2].text_input("Prompt or answer contains", **bound("q", filters.text or ""))
    correct = {True: "yes", False: "no", None: ANY}[filters.correct]
    top[3].selectbox("Correct", [ANY, "yes", "no"], **bound("correct", correct))
    answers = st.columns([3, 2, 3])
    answers[0].text_input("Answer contains", **bound("ans", filters.answer or ""))
    answers[1].text_input(
        "Answer token",
        help="One whole generated token, e.g. red (case ignored)",
        **bound("tok", filters.answer_token or ""),
    )
    answers[2].text_input("Notes contain", **bound("note", filters.note or ""))
    row = st.columns([2, 1.5, 1.5, 2, 1.2, 1.2])
    tags, tag_label = _options(store.tags(), filters.tag, "tag")
    row[0].selectbox("Tag", tags, format_func=tag_label, **bound("tag", filters.tag or ANY))
    row[1].date_input("Recorded after", value=None, **bound("after", filters.after))
    row[2].date_input("Recorded before", value=None, **bound("before", filters.before))
    row[3].text_input("Metric name", **bound("metric", filters.metric or ""))
    row[4].number_input("Metric min", value=None, **bound("mmin", filters.metric_min))
    row[5].number_input("Metric max", value=None, **bound("mmax", filters.metric_max))
    st.toggle(
        "With a flagged token",
        help="Traces where the grounding method flagged a content word (flagged_tokens ≥ 1)",
        **state.widget(
            f"{scope}:flagged", filters.flagged, lambda v: _write("flagged", "1" if v else None)
        ),
    )
    if not sorting:
        return
    sort_row = st.columns([2, 1.5, 4.5])
    sorts = list(
        dict.fromkeys([*SORT_COLUMNS, *([f"metric:{filters.metric}"] if filters.metric else [])])
    )
    sort_row[0].selectbox(
        "Sort by",
        sorts,
        format_func=lambda c: SORT_LABELS.get(c, c.replace("metric:", "metric ")),
        **bound("sort", filters.sort),
    )
    sort_row[1].toggle(
        "Descending",
        **state.widget(
            f"{scope}:desc", filters.descending, lambda v: _write("asc", None if v else "1")
        ),
    )
