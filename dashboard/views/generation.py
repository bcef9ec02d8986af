"""Generation: the image, the prompt, and the answer token by token with its probabilities.

Clicking a bar adds that token to the selection (or removes it), like the token pills;
the selection holds for every other view.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import context, state
from dashboard.components import charts, groundtruth, text
from store import StoredTrace


def _pick_from_chart(key: str) -> None:
    """A click toggles the clicked token in the shared selection; it never replaces it."""
    points = st.session_state[key].selection.get("token", [])
    clicked = {int(p["k"]) for p in points if "k" in p}
    state.put_ints(state.TOKENS, set(state.ints(state.TOKENS)) ^ clicked)


def _image(trace: StoredTrace, where: st.delta_generator.DeltaGenerator) -> None:
    """The processed image, with the ground-truth boxes when the trace carries them."""
    truths = groundtruth.objects(trace.info.extra)
    if not truths:
        where.image(trace.image.processed, caption="Processed image (as the vision tower saw it)")
        return
    where.image(
        groundtruth.draw(trace.image.processed, truths, trace.image.patch_boxes),
        caption="Processed image with the scene's ground-truth boxes",
    )
    where.text("Ground truth: " + "; ".join(t.label for t in truths))


def render() -> None:
    _, trace = context.trace_page("Generation")
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


render()
