"""One view per stored result kind, in a small registry the Faithfulness page walks.

A method stores its output under a result kind (:mod:`methods.base`); a kind's view is
registered here beside the others with :func:`register`, so showing a new kind is one
function, and the page says for a kind nothing is stored for the command that computes it.
A payload is data read back from the index: one not in the form its view reads shows one
line (:class:`dashboard.components.results.Unreadable`), never a traceback. Text from
results (map names, tokens) reaches the page as plain text, tables and chart data only.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import streamlit as st

from dashboard import export, figures, render
from dashboard.components import html, results, text
from dashboard.components.overlay import OverlayStyle
from dashboard.components.stitch import View
from dashboard.figures import faithfulness as faith_figures
from store import StoredTrace, TraceStore


@dataclass(frozen=True)
class Shown:
    """What every view draws for: the trace, the selected answer token, the page's style."""

    trace: StoredTrace
    token: int
    style: OverlayStyle
    views: tuple[View, ...]
    store: TraceStore

    @property
    def label(self) -> str:
        return f"answer token {self.token}: {figures.answer_labels(self.trace)[self.token]}"


Renderer = Callable[[Shown, dict[str, dict]], list[export.Offer]]


@dataclass(frozen=True)
class ResultView:
    kind: str
    title: str
    metrics: str  # what ``analyse --metrics`` computes this kind with
    model: bool  # whether those methods re-run the model (``--model`` needed)
    render: Renderer


VIEWS: dict[str, ResultView] = {}


def register(kind: str, title: str, metrics: str, model: bool) -> Callable[[Renderer], Renderer]:
    """Register the view of result kind ``kind`` (the page shows kinds in this order)."""

    def add(renderer: Renderer) -> Renderer:
        VIEWS[kind] = ResultView(kind, title, metrics, model, renderer)
        return renderer

    return add


def command(view: ResultView, trace_id: str, store_dir: str) -> str:
    """The command that computes ``view``'s kind for one trace."""
    line = f"lvlm-interpret analyse {trace_id} --store {shlex.quote(store_dir)}"
    line += f" --metrics {view.metrics}"
    return line + (" --model CHECKPOINT" if view.model else "")


def show(view: ResultView, shown: Shown, store_dir: str) -> list[export.Offer]:
    """One kind's section: its view of the stored results, or how to compute them."""
    st.subheader(view.title)
    stored = shown.store.list_results(shown.trace.trace_id, view.kind)
    if not stored:
        st.info(f"No {view.kind} results are stored for this trace. Compute them with:")
        st.code(command(view, shown.trace.trace_id, store_dir), language="bash")
        if view.model:
            st.caption(
                text.markdown_literal(
                    "CHECKPOINT: the model that recorded the trace "
                    f"({shown.trace.info.model_id}), as a folder or hub id."
                )
            )
        return []
    try:
        return view.render(shown, results.latest(stored))
    except results.Unreadable as error:
        st.warning(f"The stored {view.kind} results are not in a form this page reads.")
        st.text(str(error).splitlines()[0] if str(error) else "unknown shape")
        return []


def unreadable(what: str, error: results.Unreadable) -> None:
    """One result among several that cannot be shown: one line, the others still shown."""
    st.text(f"{what}: not shown ({str(error).splitlines()[0] if str(error) else 'unknown'})")


@register(
    results.FAITHFULNESS,
    "Deletion and insertion curves",
    "localisation,deletion,insertion",
    model=True,
)
def faithfulness_view(shown: Shown, stored: dict[str, dict]) -> list[export.Offer]:
    """The selected token's curves per map, and its scores per map (with the answer's)."""
    found = []
    for mode in (results.DELETION, results.INSERTION):
        if mode in stored:
            try:
                found += results.curves(stored[mode], shown.token)
            except results.Unreadable as error:
                unreadable(f"{mode} result", error)
    offers = []
    if found:
        st.text(f"Curves of {shown.label}")
        st.altair_chart(results.curves_chart(found, shown.label), width="content")
        st.caption(
            "Probability of the token as patches are removed in the map's order (deletion: "
            "a faithful map drops it fast, low AUC) or restored onto a blurred image "
            "(insertion: a faithful map restores it fast, high AUC)."
        )
        trace, store, token = shown.trace, shown.store, shown.token
        offers.append(
            export.Offer(
                f"Deletion and insertion curves, answer token {token}",
                f"curves-{token}",
                lambda: faith_figures.curves_figure(trace, store, token),
            )
        )
    else:
        st.text("No deletion or insertion curves stored (localisation only).")
    table = results.method_table(stored, shown.token)
    if len(table):
        st.text(f"Scores of {shown.label}")
        st.dataframe(table, hide_index=True, key="faith:token-table")
    return offers


@register(results.MAPS, "Stored maps", "occlusion,cleann", model=True)
def maps_view(shown: Shown, stored: dict[str, dict]) -> list[export.Offer]:
    """Each stored map (occlusion, CLEANN) of the selected token on the image."""
    trace = shown.trace
    offers = []
    columns = st.columns(min(len(stored), 3))
    for i, (method, payload) in enumerate(stored.items()):
        with columns[i % len(columns)]:
            try:
                values = results.map_array(payload, trace.answer_length, trace.image.num_patches)
            except results.Unreadable as error:
                unreadable(f"{method} map", error)
                continue
            row = values[shown.token]
            st.text(f"{method} · {shown.label}")
            scale = faith_figures.scale_for(row, f"{method} (score)")
            render.heatmap(trace, row, shown.style, scale, shown.views, key=f"faith-map-{i}")
            offers.append(
                export.Offer(
                    f"Stored map {method}, answer token {shown.token}",
                    f"map-{i}-{shown.token}",
                    lambda m=method, s=shown: faith_figures.stored_map_figure(
                        s.trace, s.store, m, s.token, s.style
                    ),
                )
            )
    return offers


FLAG_NOTE = "flagged: a content word produced with low visual grounding"


def flagged_answer(trace: StoredTrace, flagged: tuple[int, ...]) -> None:
    """The answer as text with its flagged words highlighted (Generation shows it too)."""
    answer = trace.tokens.text[trace.tokens.prompt_length :]
    st.html(html.marked_tokens(answer, flagged, FLAG_NOTE))
    if flagged:
        st.caption(
            f"Highlighted: {len(flagged)} token(s) of content words the grounding method "
            "flagged (low grounding: the answer may not rest on the image there)."
        )
    else:
        st.caption("No word of this answer is flagged by the grounding method.")


@register(results.GROUNDING, "Visual grounding and flags", "grounding", model=True)
def grounding_view(shown: Shown, stored: dict[str, dict]) -> list[export.Offer]:
    """Per token: probability with and without the image, drop, image share, grounding;
    per word: grounding and the flag; the answer with flagged words highlighted."""
    labels = figures.answer_labels(shown.trace)
    for method, payload in stored.items():
        try:
            found = results.grounding(payload, labels)
        except results.Unreadable as error:
            unreadable(f"{method} result", error)
            continue
        flagged_answer(shown.trace, found.flagged)
        st.dataframe(found.tokens, hide_index=True, key=f"faith:grounding:{method}")
        st.dataframe(found.words, hide_index=True, key=f"faith:words:{method}")
        threshold = "" if found.threshold is None else f" below {found.threshold:g}"
        st.caption(
            text.markdown_literal(
                "drop = clip((p - p masked) / p, 0, 1) with the image painted its mean colour; "
                "image share = share of the token's positive LLM relevancy on image tokens; "
                f"a content word is flagged when its grounding (max over its tokens) is{threshold}."
            )
        )
    return []


@register(results.EVIDENCE, "Consolidated evidence", "evidence", model=False)
def evidence_view(shown: Shown, stored: dict[str, dict]) -> list[export.Offer]:
    """The evidence map of the selected token, the maps' agreement and their weights."""
    trace = shown.trace
    found = results.evidence(
        next(reversed(stored.values())), trace.answer_length, trace.image.num_patches
    )
    image, numbers = st.columns([3, 2])
    with image:
        st.text(f"Evidence map · {shown.label}")
        row = found.map[shown.token]
        scale = faith_figures.scale_for(row, "evidence (weighted rank, 0-1)")
        render.heatmap(trace, row, shown.style, scale, shown.views, key="faith-evidence")
    with numbers:
        agreement = found.agreement[shown.token]
        mean = np.nanmean(found.agreement) if np.isfinite(found.agreement).any() else np.nan
        st.text(
            f"Agreement (mean Spearman between weighted maps): {_number(agreement)} for this "
            f"token, {_number(mean)} over the answer"
        )
        st.text(f"Weighting: {found.weighting}")
        st.dataframe(found.weights, hide_index=True, key="faith:weights")
        st.caption(
            "Each map's weight is how far it beat the random map on this trace's deletion and "
            "insertion results (0: not better, or not measured); the evidence map is the "
            "weighted mean of the maps' patch ranks."
        )
    token = shown.token
    return [
        export.Offer(
            f"Evidence map, answer token {token}",
            f"evidence-{token}",
            lambda: faith_figures.evidence_figure(trace, shown.store, token, shown.style),
        )
    ]


def _number(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "not defined (fewer than two maps)"
