"""Relevancy (Chefer et al.): what each answer token relied on, in the three modes.

For the selected tokens: the image map in the chosen mode and the text relevancy of the
prompt's words against the image's share. Across the answer: a gallery of maps and the
answer shaded by how much each token relied on the image.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import context, render, state
from dashboard.components import analysis, charts, html, text
from dashboard.components.overlay import Scale
from store import RelevancyMode, StoredTrace, TokenRole

SCORE = "relevancy (normalised score)"


def mode_maps(trace: StoredTrace, mode: RelevancyMode) -> np.ndarray:
    """[N, rows, cols] relevancy maps of every answer token in ``mode``."""
    relevancy = trace.relevancy
    if mode is RelevancyMode.LLM:
        return np.stack([render.image_grid(trace, row) for row in relevancy.llm])
    per_patch = relevancy.vision if mode is RelevancyMode.VISION else relevancy.all
    return np.stack([render.patch_grid(trace, row) for row in per_patch])


def text_relevancy(trace: StoredTrace, selected: list[int]) -> None:
    """Top prompt words by relevancy, next to the share the image got as a whole."""
    tokens = trace.tokens
    row = trace.relevancy.llm[selected].mean(axis=0)
    prompt_words = [
        w
        for w in text.words(tokens.text, tokens.roles, tokens.word_ids, TokenRole.TEXT)
        if w.positions[0] < tokens.prompt_length
    ]
    values = analysis.grouped_sum(np.clip(row, 0, None), [w.positions for w in prompt_words])
    image_total = float(np.clip(row[tokens.image_positions], 0, None).sum())
    total = values.sum() + image_total
    labels = ["⟨image⟩", *(w.text for w in prompt_words)]
    shares = np.concatenate([[image_total], values]) / (total if total > 0 else 1.0)
    st.altair_chart(
        charts.token_bars(
            labels,
            shares,
            "Relevancy of the prompt's words and the image",
            "share of relevancy (%)",
            top=15,
            percent=True,
        ),
        width="stretch",
    )


def render_page() -> None:
    _, trace = context.trace_page("Relevancy")
    if trace.relevancy is None:
        st.info(
            "Relevancy was not recorded for this trace (record with relevancy enabled to see it)."
        )
        return
    style = context.overlay_style()
    selected = context.answer_selection(trace)
    modes = [m.value for m in RelevancyMode]
    current = state.get("mode")
    mode = RelevancyMode(
        st.segmented_control(
            "Mode",
            modes,
            **state.widget(
                "rel:mode",
                current if current in modes else modes[0],
                lambda v: state.put("mode", v),
            ),
        )
        or modes[0]
    )
    maps = mode_maps(trace, mode)
    scale = Scale.of(maps, SCORE)
    answer = [text.token_label(t) for t in trace.tokens.text[trace.tokens.prompt_length :]]
    left, right = st.columns(2)
    with left:
        st.caption(f"Mode {mode.value}: " + ", ".join(f"{k}: {answer[k]}" for k in selected))
        render.heatmap(trace, maps[selected].mean(axis=0), style, scale)
    with right:
        text_relevancy(trace, selected)
    st.subheader("How much each answer token relied on the image")
    reliance = analysis.relevancy_image_share(trace.relevancy.llm, trace.tokens.image_positions)
    st.html(
        html.shaded_tokens(
            trace.tokens.text[trace.tokens.prompt_length :], reliance, style.colormap
        )
    )
    st.caption("Background: share of each token's relevancy on image tokens (0 = text, 1 = image).")
    st.subheader("Across the answer")
    render.gallery(
        trace,
        list(maps),
        [f"{k}: {t}" for k, t in enumerate(answer)],
        style,
        scale,
        columns=6,
        key="gallery",
    )


render_page()
