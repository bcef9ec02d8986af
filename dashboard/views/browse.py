"""Browse: the store's traces as a filtered, sorted, paginated table; pick one or two.

Only the visible page is queried (SQL LIMIT/OFFSET) and only its thumbnails are read, so the
table stays fast however many traces the store holds. Filters, page and selection live in
the URL.
"""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from dashboard import context, data, export, state
from dashboard.components.filters import PAGE_SIZE, PARAMS, BrowseFilters
from dashboard.components.text import short_id, short_time
from dashboard.config import StoreConfig
from dashboard.filter_form import filter_form
from store import StoreError, TraceInfo


def _notes_cell(summary: tuple[int, str] | None) -> str:
    """ "2 · newest note's start" (a note is text: the table's cells never render markup)."""
    if summary is None:
        return ""
    count, newest = summary
    snippet = " ".join(newest.split())
    return f"{count} · {snippet[:60]}{'…' if len(snippet) > 60 else ''}"


def _table(config: StoreConfig, items: list[TraceInfo], selected: set[str]) -> pd.DataFrame:
    """One row per trace, the columns people read first on the left (answer and
    correctness fit on screen); ids short, times to the second."""
    notes = data.note_summaries(config, [i.trace_id for i in items])
    return pd.DataFrame(
        {
            "open": ["✓" if i.trace_id in selected else "" for i in items],
            "image": [data.thumbnail_url(config, i.trace_id) for i in items],
            "prompt": [i.prompt for i in items],
            "answer": [i.answer for i in items],
            "correct": [i.correct for i in items],
            "recorded": [short_time(i.created_at) for i in items],
            "model": [i.model_id for i in items],
            "checkpoint": [i.model_revision for i in items],
            "tags": [", ".join(i.tags) for i in items],
            "metrics": [
                ", ".join(f"{k}={v:.3g}" for k, v in sorted(i.metrics.items())) for i in items
            ],
            "notes": [_notes_cell(notes.get(i.trace_id)) for i in items],
            "id": [short_id(i.trace_id) for i in items],
        }
    )


def _page_param(page: int) -> str | None:
    return None if page == 1 else str(page)


def _select_rows(key: str, ids: list[str]) -> None:
    """Ticked rows become the selection; unticking every row clears it."""
    rows = st.session_state[key].selection.rows
    picked = [ids[r] for r in rows[:2]]
    state.select_trace(picked[0] if picked else None, picked[1] if len(picked) > 1 else None)


def _describe(config: StoreConfig, trace_id: str) -> str:
    try:
        prompt = data.info(config, trace_id).prompt
    except StoreError:
        return f"{short_id(trace_id)} (no longer in the store)"
    return f"{short_id(trace_id)} · {prompt[:80]}{'…' if len(prompt) > 80 else ''}"


def _selection_links(config: StoreConfig) -> None:
    trace_id, compare_id = state.get(state.TRACE), state.get(state.COMPARE)
    if not trace_id:
        st.caption("Select a row to open a trace; select two to compare them.")
        return
    chosen = [_describe(config, t) for t in (trace_id, compare_id) if t]
    st.text("Selected: " + "  and  ".join(chosen))
    st.button(
        "Clear selection",
        key="browse:clear",
        on_click=lambda: state.select_trace(None),
        icon=":material/close:",
    )
    params = {state.TRACE: trace_id, **({state.COMPARE: compare_id} if compare_id else {})}
    links = st.columns(7)
    for column, (page, label) in zip(
        links,
        [
            ("views/generation.py", "Generation"),
            ("views/attention.py", "Raw attention"),
            ("views/relevancy.py", "Relevancy"),
            ("views/causal.py", "Causal"),
            ("views/faithfulness.py", "Faithfulness"),
            ("views/compare.py", "Compare"),
        ],
        strict=False,
    ):
        column.page_link(page, label=label, query_params=params)


def render() -> None:
    config = context.config_or_stop()
    st.title("Browse traces")
    filters = BrowseFilters.from_params(state.snapshot(PARAMS))
    with st.expander("Filters", expanded=True):
        filter_form(data.store(config), filters)
    try:
        page = data.query(config, filters.to_query(PAGE_SIZE))
    except (ValueError, StoreError) as error:
        st.warning("These filters can't be applied.")
        st.text(str(error).splitlines()[0] if str(error) else type(error).__name__)
        return
    if page.total == 0:
        if any(v is not None for v in filters.to_params().values()):
            st.info("No trace matches these filters.")
        else:
            st.info("The store is empty. Record a trace with `lvlm-interpret record`, then reload.")
        return
    pages = max(1, math.ceil(page.total / PAGE_SIZE))
    if filters.page > pages:
        there = "there is 1 page" if pages == 1 else f"there are {pages} pages"
        st.info(f"Page {filters.page} is past the end; {there}.")
        filters = filters.with_page(pages)
        page = data.query(config, filters.to_query(PAGE_SIZE))
    first = (filters.page - 1) * PAGE_SIZE
    st.caption(f"Traces {first + 1}-{first + len(page.items)} of {page.total}")
    ids = [i.trace_id for i in page.items]
    key = f"browse:table:{filters.page}"
    selected = {state.get(state.TRACE), state.get(state.COMPARE)} - {None}
    st.dataframe(
        _table(config, page.items, selected),
        key=key,
        on_select=lambda: _select_rows(key, ids),
        selection_mode="multi-row",
        hide_index=True,
        row_height=56,
        column_config={
            "open": st.column_config.TextColumn(
                "open", width="small", help="✓: the trace the other pages show"
            ),
            "image": st.column_config.ImageColumn("image", width="small"),
            "correct": st.column_config.CheckboxColumn("correct"),
            "prompt": st.column_config.TextColumn("prompt", width="medium"),
            "answer": st.column_config.TextColumn("answer", width="medium"),
        },
    )
    # Keyed by the filters: a new filter set starts a fresh widget at the URL's page.
    filter_key = hash(tuple(filters.with_page(1).to_params().items()))
    st.pagination(
        pages,
        default=filters.page,
        key=f"browse:page:{filter_key}",
        on_change=lambda: state.put(
            "page", _page_param(st.session_state[f"browse:page:{filter_key}"])
        ),
    )
    export.table_downloads(config, filters.to_query(), page.total)
    _selection_links(config)


render()
