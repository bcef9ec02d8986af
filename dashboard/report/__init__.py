"""Self-contained HTML reports of stored traces, without Streamlit.

``build_report(store, trace_ids)`` returns ONE HTML document: every image and chart is
embedded (``data:`` URLs; charts as SVG), there is no script, no external stylesheet, font
or request, and a Content-Security-Policy forbids any (see :mod:`dashboard.report.page`),
so the file opens offline in any browser and prints to PDF. Three kinds:

* one or more traces: ``build_report(store, [trace_id])`` — per trace: prompt, answer,
  image, the chosen maps with their colour bars (relevancy in every recorded mode side by
  side: the method comparison), charts, metrics and stored results, flagged tokens, the
  stored causal explanation, the analysts' notes, and provenance (model id and revision,
  generation settings, recording and loading options, versions);
* two traces compared: ``build_report(store, [a], compare=b)`` — both side by side, the
  answer diff, maps on one scale, their difference and the per-layer divergence, then each
  trace's own sections;
* a filtered set: ``build_report(store, query=TraceQuery(...))`` — accuracy per model and
  revision and per tag over every match, then the list of traces (at most
  ``options.limit``, said so when more match), one thumbnail each.

Unusable requests (an unknown trace id, both ``compare`` and ``query``) raise
:class:`ReportError` with one line, before anything is drawn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata

from dashboard import figures
from dashboard.components import html as fragments
from dashboard.components import images, stitch, text
from dashboard.report import page
from dashboard.report.sections import ReportOptions, anchor, embed, overview, trace_sections
from store import StoreError, TraceInfo, TraceNotFound, TraceQuery, TraceStore, dataset
from store.dataset import AccuracyRow

MAX_LIMIT = 1_000  # most traces a set report lists with thumbnails

__all__ = ["MAX_LIMIT", "ReportError", "ReportOptions", "build_report"]


class ReportError(ValueError):
    """A report that cannot be made as asked (unknown trace, contradictory request)."""


def tool_version() -> str:
    try:
        return metadata.version("lvlm-interpret")
    except metadata.PackageNotFoundError:
        return "unknown"


def _infos(store: TraceStore, trace_ids: Sequence[str]) -> list[TraceInfo]:
    infos = []
    for trace_id in trace_ids:
        try:
            infos.append(store.get(trace_id))
        except TraceNotFound:
            raise ReportError(f"no trace {trace_id!r} in store {store.root}") from None
        except StoreError as error:
            raise ReportError(f"trace {trace_id!r}: {error}") from None
    return infos


def build_report(
    store: TraceStore,
    trace_ids: Sequence[str] = (),
    *,
    compare: str | None = None,
    query: TraceQuery | None = None,
    options: ReportOptions | None = None,
) -> str:
    """The report as one HTML string (see the module doc for the three kinds).

    ``trace_ids``: traces to report on; with ``compare`` (a second trace id) exactly one.
    ``query``: report on the traces it matches instead (``trace_ids`` must then be empty).
    """
    options = options or ReportOptions()
    if not 1 <= options.limit <= MAX_LIMIT:
        raise ReportError(f"limit must be 1-{MAX_LIMIT}, got {options.limit}")
    figures.check_scale(options.scale)
    if options.photo_format not in ("jpeg", "png"):
        raise ReportError(f"photo_format is 'jpeg' or 'png', not {options.photo_format!r}")
    if query is not None:
        if trace_ids or compare:
            raise ReportError("a set report takes a query, not trace ids or compare")
        return _set_report(store, query, options)
    if compare is not None and len(trace_ids) != 1:
        raise ReportError("compare takes exactly one trace id besides the compared one")
    if not trace_ids:
        raise ReportError("name at least one trace, or give a query")
    infos = _infos(store, [*trace_ids, *([compare] if compare else [])])
    ids = list(dict.fromkeys(i.trace_id for i in infos))
    body, toc = [], []
    try:
        opened = [store.open(i) for i in ids]
    except StoreError as error:
        raise ReportError(str(error)) from None
    try:
        for trace in opened:
            _check_options(trace, options)
        if compare is not None:
            html, entries = _comparison(opened[0], opened[-1], options)
            body.append(html)
            toc += entries
        for trace in opened:
            html, entries = trace_sections(trace, store, options)
            body.append(html)
            toc += entries
    finally:
        for trace in opened:
            trace.close()
    kind = "Comparison" if compare else ("Trace" if len(ids) == 1 else f"{len(ids)} traces")
    title = options.title or (
        f"{kind}: {text.short_id(ids[0])}"
        + (f" vs {text.short_id(ids[-1])}" if compare else "")
        + f" · {infos[0].model_id}"
    )
    return page.page(title, _subtitle(), toc, "\n".join(body))


def _check_options(trace, options: ReportOptions) -> None:
    """Answer tokens and the layer asked for must exist in every trace reported on."""
    count = trace.tokens.answer_length
    bad = [k for k in options.tokens if not 0 <= k < count]
    if bad:
        raise ReportError(
            f"answer token {bad[0]} is not in trace {trace.trace_id} "
            f"({count} answer tokens: 0-{count - 1})"
        )
    if options.layer is not None and not 0 <= options.layer < trace.num_layers:
        raise ReportError(
            f"layer {options.layer} is not in trace {trace.trace_id} "
            f"({trace.num_layers} layers: 0-{trace.num_layers - 1})"
        )


def _subtitle() -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"Report made by lvlm-interpret {tool_version()} on {now}. Self-contained: opens offline."
    )


def _comparison(first, second, options: ReportOptions) -> tuple[str, list[tuple[str, str]]]:
    """Both traces side by side, the answer diff, maps on one scale, difference, divergence."""
    tokens = options.tokens
    pair = f'<div class="pair"><div>{overview(first)}</div><div>{overview(second)}</div></div>'
    diff = fragments.diff(text.answer_diff(first.info.answer, second.info.answer), False)
    parts = [
        pair,
        "<h3>Answer diff</h3>",
        diff,
        page.empty("Struck through: only in the left answer. Underlined: only in the right one."),
    ]
    if first.info.image_sha256 != second.info.image_sha256:
        parts.append(page.empty("These traces are of two different images."))
    sources = ["attention"] + (["relevancy"] if first.relevancy and second.relevancy else [])
    for source in sources:
        try:
            drawn = figures.compare_figures(
                first, second, tokens, source, options.layer, options.style
            )
        except ValueError as error:
            parts.append(page.empty(f"Not drawn: {error}."))
            continue
        parts += [embed(f, options) for f in drawn]
    if not stitch.same_layout(first.image, second.image):
        parts.append(page.empty("The two traces' patches do not line up: no difference map."))
    where = anchor(first.trace_id, "compare")
    title = f"Comparison: {text.short_id(first.trace_id)} vs {text.short_id(second.trace_id)}"
    return page.section(where, title, "".join(parts)), [(where, title)]


def _accuracy_rows(rows: list[AccuracyRow], with_tag: bool) -> list[list[object]]:
    """Table rows of the store's accuracy counts (``store.dataset``)."""
    out = []
    for row in rows:
        accuracy = "–" if row.accuracy is None else f"{row.accuracy:.1%}"
        head = [row.tag] if with_tag else []
        out.append([*head, row.checkpoint.label, row.traces, row.judged, row.correct, accuracy])
    return out


def _set_report(store: TraceStore, query: TraceQuery, options: ReportOptions) -> str:
    """Accuracy over the whole filtered set (SQL counts), then its first traces listed."""
    found = store.query(dataclasses.replace(query, limit=options.limit, offset=0))
    total, shown = found.total, found.items
    headers = ["traces", "judged", "correct", "accuracy"]
    summary = (
        page.empty(
            f"{total:,} trace(s) match. Judged: traces with a reference answer; "
            "accuracy = correct / judged."
        )
        + "<h3>By model and revision</h3>"
        + page.table(
            ["model @ revision", *headers],
            _accuracy_rows(dataset.accuracy_by_checkpoint(store, query), False),
        )
        + "<h3>By tag</h3>"
        + page.table(
            ["tag", "model @ revision", *headers],
            _accuracy_rows(dataset.accuracy_by_tag(store, query), True),
        )
    )
    rows = []
    for info in shown:
        rows.append(
            [
                _thumbnail(store, info.trace_id),
                info.trace_id,
                text.short_time(info.created_at),
                f"{info.model_id} @ {info.model_revision}",
                info.prompt,
                info.answer,
                {True: "yes", False: "no", None: "–"}[info.correct],
                ", ".join(info.tags),
            ]
        )
    listed = page.empty(
        f"Showing {len(shown):,} of {total:,} (the report lists at most {options.limit:,}, "
        "newest first unless the query orders otherwise)."
    ) + page.table(
        ["image", "trace id", "recorded", "model", "prompt", "answer", "correct", "tags"],
        rows,
        raw=0,
    )
    filters = {
        f.name: getattr(query, f.name)
        for f in dataclasses.fields(query)
        if f.name not in ("limit", "offset") and getattr(query, f.name) not in (None, {}, "")
    }
    body = (
        page.section("set-query", "Filters", page.json_text(filters))
        + page.section("set-summary", "Accuracy", summary)
        + page.section("set-traces", "Traces", listed)
    )
    toc = [("set-query", "Filters"), ("set-summary", "Accuracy"), ("set-traces", "Traces")]
    title = options.title or f"{total:,} traces"
    return page.page(title, _subtitle(), toc, body)


def _thumbnail(store: TraceStore, trace_id: str) -> str:
    """An inline thumbnail ``<img>``; a short note when the trace's file cannot be read."""
    try:
        with store.open(trace_id) as trace:
            picture = images.thumbnail(trace.image.images[0].pixels, size=72)
    except (StoreError, OSError, IndexError, KeyError):
        return page.esc("unreadable")
    return f'<img class="thumb" src="{images.data_url(picture, "JPEG")}" alt="">'
