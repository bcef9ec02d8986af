"""Faithfulness: how far each map can be trusted, from the results ``lvlm-interpret analyse``
stored for the trace.

A method table first (one row per map: pointing game, box mass, IoU of the top region,
deletion and insertion AUC over the whole answer, beside the random map and the analytic
chance level), then one section per result kind (:mod:`dashboard.result_views`) for the
selected answer token. Nothing is computed here: every number is read from the stored
payloads.
"""

from __future__ import annotations

import streamlit as st

from dashboard import context, data, export, notes, render, result_views
from dashboard.components import results


def render_page() -> None:
    config, trace = context.trace_page("Faithfulness")
    style = context.overlay_style()
    views = render.choose_views(trace)
    selected = context.answer_selection(trace)
    token = selected[0]
    if len(selected) > 1:
        st.caption(
            f"Curves and maps are per token: showing answer token {token}, the first selected."
        )
    store = data.store(config)
    shown = result_views.Shown(trace, token, style, views, store)
    st.subheader("Methods compared over the whole answer")
    faithfulness = results.latest(store.list_results(trace.trace_id, results.FAITHFULNESS))
    table = results.method_table(faithfulness)
    if len(table):
        st.dataframe(table, hide_index=True, key="faith:method-table")
        st.caption(
            "Mean over the answer's tokens. A map is worth reading where it beats the random "
            "map and the chance level (pointing, box mass and IoU: higher is better; deletion "
            "AUC: lower; insertion AUC: higher). None: not computed for that map."
        )
    else:
        st.text("No faithfulness results stored for this trace (see below).")
    offers = []
    for view in result_views.VIEWS.values():
        offers += result_views.show(view, shown, str(config.directory))
    export.figure_gallery(trace.trace_id, offers)
    notes.panel(config, trace)


render_page()
