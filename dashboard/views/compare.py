"""Compare: two traces side by side (one input on two checkpoints, or two prompts on one image).

The answers are aligned by word, not by position (:mod:`dashboard.components.align`): a
word diff, each aligned word's probability in both traces, and for the words selected in the
left answer, the maps of their aligned words in the right answer on a shared scale, their
difference (patch by patch when the two traces' images have the same size and tiles, e.g.
an edited image; on a normalised grid otherwise) and how far the two traces' image attention
diverges layer by layer (Jensen-Shannon).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import context, data, render, state
from dashboard.components import align, analysis, charts, html, stitch, text
from dashboard.components import dataset as grids
from dashboard.components.colormap import DIVERGING
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.config import StoreConfig
from store import ImageGeometry, StoredTrace, TraceQuery

SOURCES = ("attention (mean of heads)", "relevancy (llm)")


def _pick_second(config: StoreConfig, first: str) -> None:
    """No second trace in the URL: offer the most recent ones."""
    recent = [i for i in data.query(config, TraceQuery(limit=50)).items if i.trace_id != first]
    if not recent:
        st.info("Only one trace in the store: record another to compare.")
        st.stop()
    labels = {
        i.trace_id: f"{i.prompt} · {i.model_id} @ {i.model_revision} · {text.short_id(i.trace_id)}"
        for i in recent
    }
    choice = st.selectbox(
        "Compare with",
        [None, *labels],
        format_func=lambda t: "choose a trace" if t is None else labels[t],
    )
    if choice is None:
        st.info("Pick a second trace here, or select two rows on the Browse page.")
        st.stop()
    state.put(state.COMPARE, choice)
    st.rerun()


def _side(trace: StoredTrace, where: st.delta_generator.DeltaGenerator) -> None:
    info = trace.info
    for view in stitch.stitched_views(trace.image):
        where.image(render.frame(trace.trace_id, view, trace.image).pixels, width=240)
    where.text(
        f"{info.model_id} @ {info.model_revision}\n{text.short_time(info.created_at)}"
        f" · id {text.short_id(info.trace_id)}"
    )
    where.text(f"Prompt: {info.prompt}")
    where.text(f"Answer: {info.answer}")


def _image_distribution(trace: StoredTrace, rows: np.ndarray) -> np.ndarray:
    """[L, G] head-averaged attention over the image patches, per layer."""
    return np.stack(
        [np.nan_to_num(render.token_values(trace, layer.mean(axis=0))) for layer in rows]
    )


def _maps(
    config: StoreConfig, trace: StoredTrace, source: str, tokens: tuple[int, ...], layer: int
) -> np.ndarray:
    if source == SOURCES[1]:
        return render.token_values(trace, trace.relevancy.llm[list(tokens)].mean(axis=0))
    return render.token_values(
        trace, data.layer_rows(config, trace.trace_id, layer, tokens).mean(axis=0)
    )


def same_layout(first: ImageGeometry, second: ImageGeometry) -> bool:
    """Whether two traces' patches line up one to one: same images' sizes, same tiles."""
    return [i.size for i in first.images] == [i.size for i in second.images] and [
        (t.image, tuple(t.box), t.rows, t.cols) for t in first.tiles
    ] == [(t.image, tuple(t.box), t.rows, t.cols) for t in second.tiles]


def _top_k_of(trace: StoredTrace, k: int, token: str) -> float | None:
    top = trace.top_k
    return align.top_k_probability(top.text, top.probs, k, token)


def _first_token(trace: StoredTrace, word: text.Word) -> str:
    return trace.tokens.text[trace.tokens.prompt_length + word.positions[0]]


def _word_table(
    first: StoredTrace, second: StoredTrace, alignment: list[align.Aligned]
) -> pd.DataFrame:
    """One row per alignment step: the words, each one's probability in its own trace, the
    change, and what each model gave the other's word at that step (when in its top-k)."""
    rows = []
    for step in alignment:
        p_left = p_right = across_left = across_right = None
        if step.left is not None:
            p_left = align.word_probability(step.left, first.top_k.chosen_prob)
        if step.right is not None:
            p_right = align.word_probability(step.right, second.top_k.chosen_prob)
        if step.op == align.CHANGED:
            across_left = _top_k_of(first, step.left.positions[0], _first_token(second, step.right))
            across_right = _top_k_of(
                second, step.right.positions[0], _first_token(first, step.left)
            )
        rows.append(
            {
                "change": step.op,
                "left word": step.left.text if step.left else "",
                "right word": step.right.text if step.right else "",
                "p left": p_left,
                "p right": p_right,
                "Δp (right − left)": None if None in (p_left, p_right) else p_right - p_left,
                "left's p of the right word": across_left,
                "right's p of the left word": across_right,
            }
        )
    return pd.DataFrame(rows)


def _normalised_difference(
    first: StoredTrace, second: StoredTrace, maps: list[np.ndarray], style: OverlayStyle
) -> None:
    """Maps of differently laid-out images compared on the normalised grid."""
    st.caption(
        "The two traces' patches do not line up (other image sizes or tiles): right − left "
        f"on a normalised {grids.GRID}×{grids.GRID} grid of each trace's first image "
        "(positions as fractions of its width and height, each map scaled to sum to 1)."
    )
    shared = [grids.normalised_grid(t.image, m) for t, m in zip((first, second), maps, strict=True)]
    if any(g is None for g in shared):
        st.info("One of the maps is empty on the image: there is no difference to draw.")
        return
    difference = shared[1] - shared[0]
    diverging = OverlayStyle(colormap=DIVERGING, opacity=1.0, fade=False, smooth=style.smooth)
    scale = Scale.of(difference, "difference of shares (right − left)", symmetric=True)
    with st.container(key="cmp-diff"):
        st.image(grids.grid_picture(difference, diverging, scale))


def render_page() -> None:
    st.session_state.pop("ask:open-compare", None)  # Ask's switch to this page has arrived
    config = context.config_or_stop()
    first = context.trace_or_stop(config)
    st.title("Compare")
    wanted = (state.get(state.COMPARE) or "").lower()
    if wanted == first.trace_id:  # a trace against itself: every difference would be zero
        st.info("This link compares the trace with itself: pick another trace to compare.")
    if not wanted or wanted == first.trace_id:
        _pick_second(config, first.trace_id)
    second = context.trace_or_stop(config, state.COMPARE)
    left, right = st.columns(2)
    _side(first, left)
    _side(second, right)
    alignment = align.align(context.answer_words(first), context.answer_words(second))
    st.subheader("Answer diff")
    st.html(html.diff(align.diff_pieces(alignment)))
    st.caption(
        "Aligned by word (case, sub-word pieces and surrounding punctuation ignored). Struck "
        "through: only in the left answer. Underlined: only in the right answer. A changed "
        "word is both."
    )
    st.dataframe(
        _word_table(first, second, alignment),
        hide_index=True,
        key="cmp-words",
        column_config={
            c: st.column_config.NumberColumn(c, format="%.3f")
            for c in (
                "p left",
                "p right",
                "Δp (right − left)",
                "left's p of the right word",
                "right's p of the left word",
            )
        },
    )
    st.caption(
        "p: the probability the model gave the word (the product over its tokens). The last "
        "two columns: the probability each model gave the other's word at that step, when its "
        "first token was among the logged top-k (empty otherwise)."
    )

    selected = tuple(context.answer_selection(first))
    partner = align.partners(alignment, selected)
    same_grid = same_layout(first.image, second.image)
    same_image = first.info.image_sha256 == second.info.image_sha256
    if not same_image:
        st.warning(
            "These traces are of two different images: "
            + (
                "of the same size and tiles (an edited image?), so the difference compares "
                "them patch by patch, position for position."
                if same_grid
                else "the maps are side by side and compared on a normalised grid."
            )
        )
    sources = [s for s in SOURCES if s == SOURCES[0] or (first.relevancy and second.relevancy)]
    source = (
        st.segmented_control(
            "Map",
            sources,
            **state.widget(
                "cmp:source",
                context.choice_param("map", sources, sources[0]),
                lambda v: state.put("map", None if v in (None, sources[0]) else v),
            ),
        )
        or sources[0]
    )
    layers = min(first.num_layers, second.num_layers)
    layer = (
        context.layer_slider("Layer", "layer", layers, layers - 1) if source == SOURCES[0] else 0
    )
    style = context.overlay_style()
    views = render.choose_views(first) if same_grid else ()
    pairs = [(first, selected, "left")] + ([(second, partner, "right")] if partner else [])
    maps = [_maps(config, t, source, tokens, layer) for t, tokens, _ in pairs]
    scale = Scale.of(
        np.concatenate([m.ravel() for m in maps]),
        "attention weight (share of row)" if source == SOURCES[0] else "relevancy (score)",
        zero=True,
    )
    columns = st.columns(3)
    for column, (trace, tokens, name) in zip(columns, pairs, strict=False):
        with column:
            words = [w.text for w in context.answer_words(trace) if set(w.positions) & set(tokens)]
            st.caption(
                text.markdown_literal(
                    f"{name}: {' '.join(words)} (answer tokens {', '.join(map(str, tokens))})"
                )
            )
            shown = views or tuple(stitch.stitched_views(trace.image))
            render.heatmap(
                trace, maps[0 if name == "left" else 1], style, scale, shown, key=f"cmp-{name}"
            )
    if not partner:
        columns[1].info(
            "The selected words have no counterpart in the right answer (only in the left)."
        )
        return
    with columns[2]:
        if same_grid:
            difference = maps[1] - maps[0]
            st.caption("right − left" + ("" if same_image else " (different images)"))
            diverging = OverlayStyle(colormap=DIVERGING, opacity=style.opacity, smooth=style.smooth)
            render.heatmap(
                first,
                difference,
                diverging,
                Scale.of(difference, "difference (right − left)", symmetric=True),
                views,
                key="cmp-diff",
            )
        else:
            _normalised_difference(first, second, maps, style)
    if same_grid:
        distributions = [
            _image_distribution(t, data.answer_rows(config, t.trace_id, tokens))
            for t, tokens, _ in pairs
        ]
        st.altair_chart(
            charts.layer_divergence(analysis.layer_divergence(*distributions)), width="stretch"
        )
        if first.num_layers != second.num_layers:
            st.caption(
                f"Layer counts differ ({first.num_layers} vs {second.num_layers}): "
                f"compared over the first {layers}."
            )


render_page()
