"""Compare: two traces side by side (one input on two checkpoints, or two prompts on one image).

Maps of the same answer tokens on a shared scale, their difference, how far the two traces'
image attention diverges layer by layer (Jensen-Shannon), and a word diff of the answers.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import context, data, render, state
from dashboard.components import analysis, charts, html, stitch, text
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


def render_page() -> None:
    config = context.config_or_stop()
    first = context.trace_or_stop(config)
    st.title("Compare")
    if not state.get(state.COMPARE):
        _pick_second(config, first.trace_id)
    second = context.trace_or_stop(config, state.COMPARE)
    left, right = st.columns(2)
    _side(first, left)
    _side(second, right)
    st.subheader("Answer diff")
    st.html(html.diff(text.answer_diff(first.info.answer, second.info.answer)))
    st.caption("Struck through: only in the left answer. Underlined: only in the right answer.")

    common = min(first.tokens.answer_length, second.tokens.answer_length)
    selected = tuple(k for k in context.answer_selection(first) if k < common) or (0,)
    same_grid = same_layout(first.image, second.image)
    same_image = first.info.image_sha256 == second.info.image_sha256
    if not same_image:
        st.warning(
            "These traces are of two different images: the maps are side by side, but their "
            "difference compares different pictures patch by patch and says little."
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
    maps = [_maps(config, t, source, selected, layer) for t in (first, second)]
    scale = Scale.of(
        np.stack(maps) if same_grid else maps[0],
        "attention weight (share of row)" if source == SOURCES[0] else "relevancy (score)",
        zero=True,
    )
    columns = st.columns(3)
    for column, trace, grid, name in zip(
        columns, (first, second), maps, ("left", "right"), strict=False
    ):
        with column:
            st.caption(f"{name}: answer tokens {', '.join(map(str, selected))}")
            shown = views or tuple(stitch.stitched_views(trace.image))
            render.heatmap(trace, grid, style, scale, shown, key=f"cmp-{name}")
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
            st.info(
                "The two traces' patches do not line up (other image sizes or tiles), "
                "so there is no difference map."
            )
    if same_grid:
        distributions = [
            _image_distribution(t, data.answer_rows(config, t.trace_id, selected))
            for t in (first, second)
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
