"""Dataset: a filtered set of traces as a whole, across checkpoints.

Accuracy per checkpoint and per question kind (tag), the questions (same image, same prompt)
two checkpoints answered, those answered differently first, each one click away from
Compare, and aggregates: mean image attention per layer and head, how far two checkpoints'
heads differ on the same questions, and the mean relevancy map per question kind. Counts
and pairs come from SQL over the whole set; aggregates read a fixed sample of per-trace
summaries (see :mod:`dashboard.components.dataset`).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import context, data, state
from dashboard.components import dataset as summaries
from dashboard.components.filters import PARAMS, BrowseFilters
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.components.text import markdown_literal, short_id
from dashboard.config import StoreConfig
from dashboard.filter_form import filter_form
from store import CorruptTrace, StoreError, TraceQuery, TraceStore
from store import dataset as queries
from store.dataset import SUMMARY_KEY, SUMMARY_KIND, Checkpoint

SAMPLE = 200  # traces (or pairs) per aggregate: the first by trace id
PAIRS_PAGE = 10
LEFT, RIGHT, KIND, PAIRS = "left", "right", "kind", "pairs"  # this page's URL parameters
COMPARE_PAGE = "views/compare.py"
VERDICT = {True: "✓", False: "✗", None: "–"}
ROW = [3.6, 3, 3, 1.4]  # a pair's columns: question, left answer, right answer, button


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _accuracy(rows: list[queries.AccuracyRow], by_tag: list[queries.AccuracyRow]) -> None:
    st.subheader("Accuracy")
    st.caption("Judged: traces with a reference answer; accuracy = correct / judged.")
    percent = st.column_config.NumberColumn("accuracy", format="%.1f %%")
    st.dataframe(
        pd.DataFrame(
            {
                "checkpoint": [r.checkpoint.label for r in rows],
                "traces": [r.traces for r in rows],
                "judged": [r.judged for r in rows],
                "correct": [r.correct for r in rows],
                "accuracy": [_percent(r.accuracy) for r in rows],
            }
        ),
        hide_index=True,
        column_config={"accuracy": percent},
        key="dataset:accuracy",
    )
    if not by_tag:
        st.caption("No trace of this set has a tag: record with --tag (or a manifest's tags).")
        return
    frame = pd.DataFrame(
        {
            "tag": [r.tag for r in by_tag],
            "checkpoint": [r.checkpoint.label for r in by_tag],
            "traces": [r.traces for r in by_tag],
            "judged": [r.judged for r in by_tag],
            "correct": [r.correct for r in by_tag],
            "accuracy": [r.accuracy for r in by_tag],
        }
    )
    shown = frame.assign(accuracy=frame["accuracy"].map(_percent))
    st.dataframe(shown, hide_index=True, column_config={"accuracy": percent}, key="dataset:by-tag")
    st.altair_chart(summaries.accuracy_chart(frame.dropna(subset=["accuracy"])), width="stretch")


def _checkpoint_param(param: str, options: list[Checkpoint], default: Checkpoint) -> Checkpoint:
    labels = {c.label: c for c in options}
    return labels.get(state.get(param) or "", default)


def _choose_checkpoints(options: list[Checkpoint]) -> tuple[Checkpoint, Checkpoint] | None:
    """The two checkpoints compared (URL ``left``/``right``), or None with one checkpoint."""
    if len(options) < 2:
        return None
    left = _checkpoint_param(LEFT, options, options[0])
    right = _checkpoint_param(RIGHT, options, next(c for c in options if c != left))
    columns = st.columns(2)
    picked = []
    for column, param, seed, name in zip(
        columns, (LEFT, RIGHT), (left, right), ("Left checkpoint", "Right checkpoint"), strict=True
    ):
        picked.append(
            column.selectbox(
                name,
                options,
                format_func=lambda c: c.label,
                **state.widget(
                    f"dataset:{param}",
                    seed,
                    lambda v, p=param: state.update({p: v.label, PAIRS: None}),
                ),
            )
        )
    return picked[0], picked[1]


def _open_pair(left_id: str, right_id: str) -> None:
    state.select_trace(left_id, right_id)
    st.switch_page(COMPARE_PAGE)


def _pair_row(pair: queries.Pair) -> None:
    cells = st.columns(ROW)
    cells[0].text(f"{pair.prompt}\n{pair.image_name}")
    for cell, side in zip(cells[1:3], (pair.left, pair.right), strict=True):
        cell.text(f"{VERDICT[side.correct]} {side.answer}\nid {short_id(side.trace_id)}")
    if cells[3].button(
        "Compare",
        key=f"dataset:pair:{pair.left.trace_id}:{pair.right.trace_id}",
        type="primary" if pair.differs else "secondary",
    ):
        _open_pair(pair.left.trace_id, pair.right.trace_id)


MAX_PAGE = 10**9  # a larger page number is clipped here first: SQL offsets are 64-bit


def _page_number() -> int:
    """The URL's page; a number past the last page is clipped to it (by the caller), like
    every other number in the URL, however many digits it has."""
    raw = (state.get(PAIRS) or "").strip()
    if not (raw.isascii() and raw.isdecimal()) or int(raw) == 0:
        return 1
    return MAX_PAGE if len(raw) > 10 else min(int(raw), MAX_PAGE)


def _pairs(store: TraceStore, query: TraceQuery, chosen: tuple[Checkpoint, Checkpoint]) -> None:
    left, right = chosen
    st.subheader("Same question, two checkpoints")
    page_number = _page_number()
    page = queries.pairs_page(
        store,
        query,
        limit=PAIRS_PAGE,
        offset=(page_number - 1) * PAIRS_PAGE,
        left=left,
        right=right,
    )
    if page.total == 0:
        st.info(
            "No question (same image, same prompt) of this set was answered by both checkpoints."
        )
        return
    pages = max(1, math.ceil(page.total / PAIRS_PAGE))
    if page_number > pages:
        page_number = pages
        page = queries.pairs_page(
            store, query, limit=PAIRS_PAGE, offset=(pages - 1) * PAIRS_PAGE, left=left, right=right
        )
    st.caption(
        f"{page.total} questions answered by both, {page.differing} of them differently "
        "(case and surrounding spaces ignored); those come first. ✓ correct, ✗ wrong, "
        "– no reference. Compare opens the two traces side by side."
    )
    head = st.columns(ROW)
    head[0].markdown("**question** (prompt, image)")
    head[1].text(f"left: {left.label}")
    head[2].text(f"right: {right.label}")
    for pair in page.items:
        _pair_row(pair)
    key = f"dataset:pairs:{hash((repr(query), left, right))}"
    st.pagination(
        pages,
        default=page_number,
        key=key,
        on_change=lambda: state.put(
            PAIRS, None if st.session_state[key] == 1 else str(st.session_state[key])
        ),
    )


@st.cache_data(show_spinner=False, max_entries=20_000)
def _summary_from_file(config: StoreConfig, trace_id: str) -> dict | None:
    """A trace's summary read from its file and kept in the index when the store is
    writable; None when the file cannot be read (the aggregate leaves it out)."""
    try:
        with data.store(config).open(trace_id) as trace:
            summary = summaries.summarise(trace)
    except (CorruptTrace, StoreError, OSError, KeyError, ValueError):
        return None
    # read-only here: the summary lives in this process's cache only
    with contextlib.suppress(StoreError):
        data.results_store(config).put_result(trace_id, SUMMARY_KIND, SUMMARY_KEY, summary)
    return summary


def _complete(config: StoreConfig, rows: list[queries.SampleRow]) -> list[dict | None]:
    """The rows' summaries, computing the missing ones (with a progress bar)."""
    missing = [r for r in rows if r.summary is None]
    bar = st.progress(0.0, text=f"Summarising {len(missing)} traces…") if missing else None
    found = {}
    for done, row in enumerate(missing, start=1):
        found[row.trace_id] = _summary_from_file(config, row.trace_id)
        if bar is not None:
            bar.progress(done / len(missing), text=f"Summarising traces: {done}/{len(missing)}")
    if bar is not None:
        bar.empty()
    return [r.summary if r.summary is not None else found[r.trace_id] for r in rows]


def _head_shares(
    config: StoreConfig, store: TraceStore, query: TraceQuery, shown: list[Checkpoint]
) -> None:
    st.markdown("**Mean image attention per layer and head**")
    columns = st.columns(len(shown))
    for column, checkpoint in zip(columns, shown, strict=True):
        rows = queries.summary_sample(store, query, SAMPLE, checkpoint=checkpoint)
        mean, count = summaries.mean_of(_complete(config, rows), summaries.SHARE)
        with column:
            if mean is None:
                st.info("No readable trace of this checkpoint in the sample.")
                continue
            st.altair_chart(
                summaries.layer_head_chart(
                    mean, checkpoint.label, "image share of attention (mean)"
                )
            )
            st.caption(f"Mean over {count} traces: answer tokens' attention on image tokens.")


def _divergence(
    config: StoreConfig, store: TraceStore, query: TraceQuery, left: Checkpoint, right: Checkpoint
) -> None:
    st.markdown("**How far the two checkpoints' heads differ on the same questions**")
    paired = queries.paired_sample(store, query, left, right, SAMPLE)
    lefts = _complete(config, [p.left for p in paired])
    rights = _complete(config, [p.right for p in paired])
    delta, count = summaries.head_divergence(zip(lefts, rights, strict=True))
    if delta is None:
        st.info("No paired question with two readable traces of the same shape.")
        return
    st.altair_chart(
        summaries.layer_head_chart(delta, "mean |right − left| image share", "|Δ image share|")
    )
    st.caption(
        f"Per layer and head: the mean absolute difference of the image share of attention "
        f"between the two checkpoints' traces of one question, over {count} paired questions."
    )


def _kinds(rows: list[queries.AccuracyRow], by_tag: list[queries.AccuracyRow]) -> list[str]:
    """The set's tags as question kinds: a tag every trace carries (``demo``) says nothing
    about the kind, so it comes last."""
    total = sum(r.traces for r in rows)
    counts: dict[str, int] = {}
    for r in by_tag:
        counts[r.tag] = counts.get(r.tag, 0) + r.traces
    return sorted(counts, key=lambda tag: (counts[tag] == total, tag))


def _kind_maps(
    config: StoreConfig,
    store: TraceStore,
    query: TraceQuery,
    shown: list[Checkpoint],
    rows: list[queries.AccuracyRow],
    by_tag: list[queries.AccuracyRow],
) -> None:
    kinds = _kinds(rows, by_tag)
    if not kinds:
        return
    st.markdown("**Mean relevancy map per question kind**")
    seed = state.get(KIND) if state.get(KIND) in kinds else kinds[0]
    kind = st.selectbox(
        "Question kind (tag)",
        kinds,
        **state.widget("dataset:kind", seed, lambda v: state.put(KIND, v)),
    )
    grids = []
    for checkpoint in shown:
        rows = queries.summary_sample(store, query, SAMPLE, checkpoint=checkpoint, tag=kind)
        grids.append(summaries.mean_of(_complete(config, rows), summaries.RELEVANCY))
    found = [g for g, _ in grids if g is not None]
    if not found:
        st.info("No trace of this kind in the sample has relevancy.")
        return
    style = OverlayStyle(opacity=1.0, fade=False)
    scale = Scale.of(np.stack(found), "share of relevancy per cell (mean)", zero=True)
    columns = st.columns(len(shown))
    for column, checkpoint, (grid, count) in zip(columns, shown, grids, strict=True):
        if grid is None:
            column.info("No trace with relevancy.")
            continue
        column.image(
            summaries.grid_picture(grid, style, scale),
            caption=markdown_literal(f"{checkpoint.label}: {count} traces"),
        )
    st.caption(
        f"Different images on one normalised {summaries.GRID}×{summaries.GRID} grid: each "
        "trace's LM relevancy (mode llm, whole answer, first image) spread over its image's "
        "width and height and scaled to sum to 1, then averaged. Where, not how much; the "
        "images themselves differ, so no photo is drawn underneath."
    )


def _aggregates(
    config: StoreConfig,
    store: TraceStore,
    query: TraceQuery,
    rows: list[queries.AccuracyRow],
    by_tag: list[queries.AccuracyRow],
    chosen: tuple[Checkpoint, Checkpoint] | None,
) -> None:
    st.subheader("Across the set")
    st.caption(
        f"Aggregates read at most {SAMPLE} traces per checkpoint (or pairs): the first by "
        "trace id, which is a hash, so the sample is unbiased and stays the same. A trace's "
        "summary is read from its file once and kept in the index."
    )
    shown = list(chosen) if chosen else [rows[0].checkpoint]
    _head_shares(config, store, query, shown)
    if chosen:
        _divergence(config, store, query, *chosen)
    _kind_maps(config, store, query, shown, rows, by_tag)


def render() -> None:
    config = context.config_or_stop()
    st.title("Dataset")
    store = data.store(config)
    filters = BrowseFilters.from_params(state.snapshot(PARAMS))
    with st.expander("Filters (shared with Browse)", expanded=False):
        filter_form(store, filters, scope="dataset", sorting=False)
    query = filters.to_query()
    try:
        rows = queries.accuracy_by_checkpoint(store, query)
    except (ValueError, StoreError) as error:
        st.warning("These filters can't be applied.")
        st.text(str(error).splitlines()[0] if str(error) else type(error).__name__)
        return
    if not rows:
        st.info(
            "No trace matches these filters."
            if any(filters.to_params().values())
            else "The store is empty. Record traces with `lvlm-interpret record-dataset`."
        )
        return
    by_tag = queries.accuracy_by_tag(store, query)
    _accuracy(rows, by_tag)
    options = [r.checkpoint for r in rows]
    chosen = _choose_checkpoints(options)
    if chosen is None:
        st.info(
            "One checkpoint in this set: record the same questions on another checkpoint "
            "(the same manifest with another --model) to compare them."
        )
    elif chosen[0] == chosen[1]:
        st.info("Pick two different checkpoints to pair their answers.")
        chosen = None
    else:
        _pairs(store, query, chosen)
    _aggregates(config, store, query, rows, by_tag, chosen)


render()
