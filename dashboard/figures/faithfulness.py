"""Figures of stored method results, as the Faithfulness page draws them: the deletion and
insertion curves of one answer token, and a stored per-token map (occlusion, CLEANN, the
consolidated evidence map) on the image.

They read what ``lvlm-interpret analyse`` stored (``store.list_results``) and raise
:class:`ValueError` with one line when the trace holds no such result or it is not in the
form stored by the methods (:class:`dashboard.components.results.Unreadable` is one).
"""

from __future__ import annotations

import numpy as np

from dashboard.components import results
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.figures.common import (
    answer_labels,
    check_tokens,
    figure_name,
    map_figure,
    source_line,
)
from dashboard.figures.layout import Figure, chart_figure
from store import StoredTrace, TraceStore


def _one_token(trace: StoredTrace, token: int) -> int:
    return check_tokens(trace, [token])[0]


def curves_figure(trace: StoredTrace, store: TraceStore, token: int = 0) -> Figure:
    """Deletion and insertion curves of answer token ``token``, one line per map."""
    k = _one_token(trace, token)
    stored = results.latest(store.list_results(trace.trace_id, results.FAITHFULNESS))
    found = [
        c
        for mode in (results.DELETION, results.INSERTION)
        if mode in stored
        for c in results.curves(stored[mode], k)
    ]
    if not found:
        raise ValueError("no deletion or insertion result is stored for this trace")
    label = answer_labels(trace)[k]
    return chart_figure(
        results.curves_chart(found, label),
        figure_name(trace, "curves", k),
        f"Deletion and insertion curves of answer token {k}: {label}",
        "The token's probability (teacher-forced on the recorded answer) as patches are "
        "removed in the order of each map (deletion: painted with the image's mean colour; "
        "lower area is more faithful) or restored onto a blurred image (insertion; higher "
        "area is more faithful). " + source_line(trace),
    )


def scale_for(values: np.ndarray, title: str) -> Scale:
    """Symmetric around 0 for maps that go negative (occlusion: hiding a patch may help the
    token), otherwise from 0."""
    negative = bool((np.asarray(values) < 0).any())
    return Scale.of(values, title, symmetric=negative, zero=not negative)


def token_map_figure(
    trace: StoredTrace,
    values: np.ndarray,
    token: int,
    name: str,
    title: str,
    caption: str,
    style: OverlayStyle | None = None,
) -> Figure:
    """Row ``token`` of an ``[N, G]`` stored map on the image, with its colour bar."""
    k = _one_token(trace, token)
    row = np.asarray(values, np.float64)[k]
    return map_figure(
        trace,
        row,
        name=figure_name(trace, name, k),
        title=f"{title}, answer token {k}: {answer_labels(trace)[k]}",
        caption=caption,
        style=style,
        scale=scale_for(row, f"{name} (score)"),
        scale_title=f"{name} (score)",
    )


def stored_map_figure(
    trace: StoredTrace,
    store: TraceStore,
    method: str,
    token: int = 0,
    style: OverlayStyle | None = None,
) -> Figure:
    """The map ``method`` stored for the trace (kind ``maps``: occlusion, CLEANN)."""
    stored = results.latest(store.list_results(trace.trace_id, results.MAPS))
    if method not in stored:
        raise ValueError(f"no {method} map is stored for this trace")
    values = results.map_array(stored[method], trace.answer_length, trace.image.num_patches)
    return token_map_figure(
        trace,
        values,
        token,
        method,
        f"Stored map: {method}",
        f"The per-patch map the {method} method stored for the token.",
        style,
    )


def evidence_figure(
    trace: StoredTrace, store: TraceStore, token: int = 0, style: OverlayStyle | None = None
) -> Figure:
    """The consolidated evidence map of answer token ``token`` (the evidence method's)."""
    stored = results.latest(store.list_results(trace.trace_id, results.EVIDENCE))
    if not stored:
        raise ValueError("no evidence result is stored for this trace")
    found = results.evidence(
        next(reversed(stored.values())), trace.answer_length, trace.image.num_patches
    )
    k = _one_token(trace, token)
    agreement = found.agreement[k]
    said = f"{agreement:.2f}" if np.isfinite(agreement) else "not defined (one map)"
    return token_map_figure(
        trace,
        found.map,
        k,
        "evidence",
        "Evidence map",
        "The maps combined by their measured faithfulness (weighted mean of each map's "
        f"patch ranks, 0-1); {found.weighting}; agreement between the maps (mean Spearman) "
        f"{said}.",
        style,
    )
