"""Generation: the image, the prompt, and the answer token by token with its probabilities.

Clicking a bar adds that token to the selection (or removes it), like the token pills;
the selection holds for every other view.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import context, data, export, figures, notes, render, result_views, state
from dashboard.components import charts, groundtruth, results, stitch, text
from store import StoredTrace


def _pick_from_chart(key: str) -> None:
    """A click toggles the clicked token in the shared selection; it never replaces it."""
    points = st.session_state[key].selection.get("token", [])
    clicked = {int(p["k"]) for p in points if "k" in p}
    state.put_ints(state.TOKENS, set(state.ints(state.TOKENS)) ^ clicked)


def _image(trace: StoredTrace, where: st.delta_generator.DeltaGenerator) -> None:
    """The image(s) of the prompt, with the ground-truth boxes when the trace carries them
    (given in the first image's pixels)."""
    geometry = trace.image
    truths = groundtruth.objects(trace.info.extra)
    legacy = stitch.is_legacy(geometry)
    for view in stitch.stitched_views(geometry):
        base = render.frame(trace.trace_id, view, geometry)
        caption = (
            "Processed image (as the vision tower saw it)"
            if legacy
            else stitch.view_label(geometry, view)
        )
        if truths and view.image == 0:
            picture = groundtruth.draw(base.pixels, truths, np.array([base.box]))
            where.image(picture, caption=text.markdown_literal(caption + ", ground-truth boxes"))
        else:
            where.image(base.pixels, caption=text.markdown_literal(caption))
    if truths:
        where.text("Ground truth: " + "; ".join(t.label for t in truths))


def render_page() -> None:
    config, trace = context.trace_page("Generation")
    image_col, answer_col = st.columns([1, 2])
    _image(trace, image_col)
    with answer_col:
        selected = context.answer_selection(trace)
        top_k = trace.top_k
        labels = [text.token_label(t) for t in trace.tokens.text[trace.tokens.prompt_length :]]
        key = f"gen:chart:{trace.trace_id}"
        st.altair_chart(
            charts.token_probabilities(labels, top_k.chosen_prob, selected),
            key=key,
            on_select=lambda: _pick_from_chart(key),
            selection_mode="token",
            width="stretch",
        )
        st.caption("Click a bar to add its token to the selection (click again to remove it).")
        stored = data.store(config).list_results(trace.trace_id, results.GROUNDING)
        if (flagged := results.flagged_tokens(stored, labels)) is not None:
            result_views.flagged_answer(trace, flagged)
    st.subheader("Top-k alternatives")
    rows = [
        {
            "answer token": f"{k}: {labels[k]}",
            "rank": rank + 1,
            "candidate": text.token_label(top_k.text[k][rank]),
            "probability": float(top_k.probs[k][rank]),
            "chosen": int(top_k.ids[k][rank])
            == int(trace.tokens.ids[trace.tokens.prompt_length + k]),
        }
        for k in selected
        for rank in range(len(top_k.text[k]))
    ]
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={
            "probability": st.column_config.ProgressColumn(
                "probability", format="percent", min_value=0.0, max_value=1.0
            )
        },
    )
    export.token_downloads(config, trace.trace_id)
    export.figure_gallery(
        trace.trace_id,
        [
            export.Offer("The image(s)", "image", lambda: figures.image_figure(trace)),
            export.Offer(
                "Answer token probabilities",
                "probabilities",
                lambda: figures.probability_chart(trace, selected),
            ),
        ],
    )
    notes.panel(config, trace)


render_page()
