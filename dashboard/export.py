"""Downloads: the Browse set as CSV or Parquet, a report of what is on screen, and each
figure of a trace page as PNG or SVG.

Every file is made only when its button is clicked (Streamlit's deferred download: the
button holds a function, not the bytes), so offering them costs a page nothing; what a
file shows is fixed when the page is drawn (the filters, trace, tokens, layer and style of
that run). The builders are Streamlit-free and shared with the notebook and the
``report`` command: ``store.frames`` for tables, ``dashboard.report`` for reports,
``dashboard.figures`` for figures.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import pandas as pd
import streamlit as st

from dashboard import context, data, state
from dashboard.components.filters import PARAMS, BrowseFilters
from dashboard.components.text import short_id
from dashboard.config import StoreConfig
from dashboard.figures import Figure
from dashboard.report import ReportError, ReportOptions, build_report
from store import StoreError, TraceQuery
from store.frames import csv_bytes, parquet_bytes, query_frame, token_frame

TRACE_PAGES = ("generation", "attention", "relevancy", "causal", "faithfulness")
SET_PAGES = ("", "dataset")  # Browse (the default page) and Dataset: the filtered set


def _failed(what: str, error: Exception) -> str:
    """A report that could not be made is still a file: one escaped line saying why."""
    line = html.escape(str(error).splitlines()[0] if str(error) else type(error).__name__)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(what)} failed</title></head>"
        f"<body><p>The {html.escape(what)} could not be made: {line}</p></body></html>"
    )


def _report(make: Callable[[], str]) -> Callable[[], str]:
    def run() -> str:
        try:
            return make()
        except (ReportError, StoreError, ValueError, OSError) as error:
            return _failed("report", error)

    return run


def _trace_options(config: StoreConfig, trace_id: str) -> ReportOptions:
    """The page's answer tokens, layer and heatmap style, where this trace has them."""
    trace = data.trace(config, trace_id)
    count, layers = trace.tokens.answer_length, trace.num_layers
    tokens = tuple(k for k in state.ints(state.TOKENS) if 0 <= k < count)
    raw = state.get("layer")
    layer = context.int_param("layer", 0, layers - 1) if raw and layers else None
    return ReportOptions(tokens=tokens, layer=layer, style=context.url_style())


def _trace_ids() -> tuple[str | None, str | None]:
    ids = [(state.get(p) or "").strip().lower() for p in (state.TRACE, state.COMPARE)]
    valid = [i if context.TRACE_ID.fullmatch(i) else None for i in ids]
    return valid[0], valid[1]


def filtered_query() -> TraceQuery:
    """Every trace Browse's filters (in the URL) match, in its order."""
    return BrowseFilters.from_params(state.snapshot(PARAMS)).with_page(1).to_query()


def report_button(config: StoreConfig, page_path: str) -> None:
    """'Export report' for the page on screen: one trace on a trace page (its tokens, layer
    and style), the two traces on Compare, the filtered set on Browse and Dataset."""
    store = data.store(config)
    trace_id, compare_id = _trace_ids()
    if page_path in SET_PAGES:
        query = filtered_query()
        name = f"report-set-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.html"
        make = _report(lambda: build_report(store, query=query))
        label = "Export report (filtered set)"
    elif page_path == "compare" and trace_id and compare_id:
        options = ReportOptions(style=context.url_style())
        name = f"comparison-{short_id(trace_id)}-{short_id(compare_id)}.html"
        make = _report(lambda: build_report(store, [trace_id], compare=compare_id, options=options))
        label = "Export report (comparison)"
    elif page_path in TRACE_PAGES and trace_id and trace_id in store:
        try:
            options = _trace_options(config, trace_id)
        except (StoreError, OSError):
            return  # the page says what is wrong with this trace
        name = f"report-{short_id(trace_id)}.html"
        make = _report(lambda: build_report(store, [trace_id], options=options))
        label = "Export report (this trace)"
    else:
        return
    st.download_button(
        label,
        data=make,
        file_name=name,
        mime="text/html",
        key="export:report",
        on_click="ignore",
        icon=":material/description:",
        help="One self-contained HTML file (no script, no outside requests); prints to PDF.",
    )


def page_report(page_path: str) -> None:
    """The report button for the page ``page_path`` (the app puts it in the sidebar);
    nothing when the store is not configured or cannot be read (the page says so)."""
    config = context.store_config()
    if config is None:
        return
    try:
        report_button(config, page_path)
    except (StoreError, OSError):
        return


def _frame_buttons(
    make: Callable[[], pd.DataFrame],
    stem: str,
    key: str,
    csv_label: str,
    widths: tuple[float, float],
    csv_help: str | None = None,
    parquet_help: str | None = None,
) -> None:
    """A table as CSV and Parquet download buttons side by side (built only when clicked)."""
    left, right, _ = st.columns([*widths, 5])
    left.download_button(
        csv_label,
        data=lambda: csv_bytes(make()),
        file_name=f"{stem}.csv",
        mime="text/csv",
        key=f"{key}:csv",
        on_click="ignore",
        icon=":material/download:",
        help=csv_help,
    )
    right.download_button(
        "Parquet",
        data=lambda: parquet_bytes(make()),
        file_name=f"{stem}.parquet",
        mime="application/vnd.apache.parquet",
        key=f"{key}:parquet",
        on_click="ignore",
        icon=":material/download:",
        help=parquet_help,
    )


def table_downloads(config: StoreConfig, query: TraceQuery, total: int) -> None:
    """CSV and Parquet of every trace the filters match (not only the page shown)."""
    store = data.store(config)
    query = replace(query, offset=0)
    _frame_buttons(
        lambda: query_frame(store, query),
        f"traces-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}",
        "export",
        f"CSV ({total} traces)",
        (1.2, 1.2),
        csv_help="Every matching trace; tags as JSON lists; a cell starting like a formula "
        "gets a leading ' so spreadsheets show it instead of running it.",
        parquet_help="Every matching trace, values exactly as stored (tags as lists).",
    )


def token_downloads(config: StoreConfig, trace_id: str) -> None:
    """CSV and Parquet of the trace's per-token values (``store.frames.token_frame``)."""
    store = data.store(config)
    _frame_buttons(
        lambda: token_frame(store, [trace_id]),
        f"{short_id(trace_id)}-tokens",
        "export:tokens",
        "Tokens as CSV",
        (1.6, 1.2),
        csv_help="One row per answer token: text, probability, top-k, attention and relevancy "
        "image shares.",
    )


@dataclass(frozen=True)
class Offer:
    """One figure a page offers: a label for the list, a file name, and how to build it
    (called only when a download is asked for)."""

    label: str
    name: str
    build: Callable[[], Figure]


def figure_gallery(trace_id: str, offers: Sequence[Offer]) -> None:
    """The page's figures, each with PNG (print resolution) and SVG downloads. The list is
    drawn only while its expander is open (opening it reruns the page): a closed one costs
    the page's first heatmap nothing."""
    gallery = st.expander(f"Figures ({len(offers)}): PNG and SVG", key="figures", on_change="rerun")
    if not gallery.open:
        return
    with gallery:
        st.caption(
            "As drawn on this page with its current settings; PNG at print resolution, "
            "SVG with vector text and legends."
        )
        for index, offer in enumerate(offers):
            label, png, svg = st.columns([6, 1, 1], vertical_alignment="center")
            label.text(offer.label)
            stem = f"{short_id(trace_id)}-{offer.name}"
            png.download_button(
                "PNG",
                data=lambda b=offer.build: b().png(scale=2),
                file_name=f"{stem}.png",
                mime="image/png",
                key=f"export:fig:{index}:png",
                on_click="ignore",
            )
            svg.download_button(
                "SVG",
                data=lambda b=offer.build: b().svg(),
                file_name=f"{stem}.svg",
                mime="image/svg+xml",
                key=f"export:fig:{index}:svg",
                on_click="ignore",
            )
