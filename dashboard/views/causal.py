"""Causal explanations, read from ``store.get_result(trace_id, "causal", key)``.

The causal work fills these results in later; until then a trace shows a clear "not recorded"
state. Payloads are drawn by shape, so new result kinds show without changes here: a value
per image patch becomes a map, a value per answer token a bar chart, numbers become metrics,
anything else is shown as JSON.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import context, data, render
from dashboard.components import charts, text
from dashboard.components.overlay import Scale
from store import StoredTrace


def show_payload(trace: StoredTrace, payload: dict) -> None:
    """Draw each field of a causal result by what it looks like."""
    geometry = trace.image
    patches = geometry.grid_rows * geometry.grid_cols
    answer = [text.token_label(t) for t in trace.tokens.text[trace.tokens.prompt_length :]]
    rest: dict = {}
    for name, value in payload.items():
        array = np.asarray(value) if isinstance(value, list) else None
        numeric = array is not None and array.dtype.kind in "fiu"
        if isinstance(value, int | float) and not isinstance(value, bool):
            st.metric(text.markdown_literal(name), f"{value:.4g}")
        elif numeric and array.size == patches:
            st.caption(f"{name} (per image patch)")
            grid = render.patch_grid(trace, array.ravel())
            render.heatmap(
                trace,
                grid,
                context.overlay_style(),
                Scale.of(grid, f"{name} (score)"),
                key=f"causal-{name}",
            )
        elif numeric and array.ndim == 1 and array.size == len(answer):
            st.altair_chart(
                charts.token_bars(answer, array, name, f"{name} (score)"), width="stretch"
            )
        else:
            rest[name] = value
    if rest:
        st.json(rest, expanded=False)


def render_page() -> None:
    config = context.config_or_stop()
    trace = context.trace_or_stop(config)
    st.title("Causal explanations")
    context.trace_header(trace)
    results = data.store(config).list_results(trace.trace_id, "causal")
    if not results:
        st.info("Causal explanations were not recorded for this trace.")
        return
    keys = sorted(results)
    key = st.selectbox("Result", keys, key=f"causal:key:{trace.trace_id}")
    show_payload(trace, results[key])


render_page()
