"""Raw attention: the seed tool's attention views, all drawn from stored tensors.

* image -> answer: per-head maps for the selected answer tokens at one layer, heads ranked
  by how much they look at the image;
* analysis: where attention goes (image / question / earlier answer), layer x head;
* text -> image: which prompt and answer tokens attend to chosen image patches;
* vision tower: one patch's attention inside the vision encoder, and its rollout.
"""

from __future__ import annotations

import math

import numpy as np
import streamlit as st

from dashboard import context, data, render, state
from dashboard.components import analysis, charts, text
from dashboard.components.overlay import Scale
from dashboard.components.patches import original_label
from dashboard.config import StoreConfig
from store import StoredTrace, TokenRole

VIEWS = ("image → answer", "analysis", "text → image", "vision tower")
WEIGHT = "attention weight (share of row)"


def image_to_answer(config: StoreConfig, trace: StoredTrace, selected: list[int]) -> None:
    style = context.overlay_style()
    default_layer = int(np.argmax(trace.summaries.head_image_attention.mean(axis=1)))
    layer = context.layer_slider("Layer", "layer", trace.num_layers, default_layer)
    rows = data.layer_rows(config, trace.trace_id, layer, tuple(selected))
    shares = analysis.image_share(rows, trace.tokens.image_positions)
    order = analysis.rank_heads(shares)
    shown = st.number_input(
        "Heads shown (ranked by attention on the image)", 1, len(order), min(8, len(order))
    )
    heads = order[: int(shown)]
    grids = [render.image_grid(trace, rows[h]) for h in heads]
    answer = trace.tokens.text[trace.tokens.prompt_length :]
    st.text(
        f"Layer {layer}, attention of answer token(s) "
        + ", ".join(f"{k}: {text.token_label(answer[k])}" for k in selected)
        + " to the image, one map per head"
    )
    render.gallery(
        trace,
        grids,
        [f"head {h} · {shares[h]:.1%} on image" for h in heads],
        style,
        Scale.of(np.stack(grids), WEIGHT, zero=True),
    )
    st.altair_chart(charts.head_image_bars(shares, layer), width="stretch")


def attention_analysis(trace: StoredTrace, selected: list[int]) -> None:
    st.caption(
        "Share of each head's attention on the image, the question and earlier answer tokens."
    )
    shares = analysis.token_shares(trace.summaries.attention_shares, selected)
    st.altair_chart(charts.share_matrix(shares))


def _patch_labels(trace: StoredTrace) -> list[str]:
    """Grid cell and the patch's box in the user's original image (from ``patch_boxes``)."""
    geometry = trace.image
    count = geometry.grid_rows * geometry.grid_cols
    return [original_label(geometry.patch_boxes, p, geometry.grid_cols) for p in range(count)]


def _patches_from_chart(key: str) -> None:
    """A click toggles the clicked patch in the selection (like the token bars)."""
    points = st.session_state[key].selection.get("patch", [])
    clicked = {int(p["patch"]) for p in points if "patch" in p}
    state.put_ints(state.PATCHES, set(state.ints(state.PATCHES)) ^ clicked)


def _patch_picker(trace: StoredTrace) -> list[int]:
    """Patches picked on the photo (click) or from the list; both write the same state."""
    geometry = trace.image
    labels = _patch_labels(trace)
    chosen = [p for p in state.ints(state.PATCHES) if 0 <= p < len(labels)]
    key = f"attn:grid:{trace.trace_id}"
    height, width = geometry.processed.shape[:2]
    scale = 280 / max(width, height)
    st.altair_chart(
        charts.patch_grid(
            render.photo_url(trace.trace_id, geometry.processed),
            round(width * scale),
            round(height * scale),
            geometry.grid_rows,
            geometry.grid_cols,
            chosen,
        ),
        key=key,
        on_select=lambda: _patches_from_chart(key),
        selection_mode="patch",
        width="content",  # the photo has a fixed size in pixels: the grid must keep it too
    )
    st.multiselect(
        "Image patches",
        list(range(len(labels))),
        format_func=labels.__getitem__,
        **state.widget(
            f"attn:patches:{trace.trace_id}", chosen, lambda v: state.put_ints(state.PATCHES, v)
        ),
    )
    return [p for p in state.ints(state.PATCHES) if 0 <= p < len(labels)]


def text_to_image(config: StoreConfig, trace: StoredTrace) -> None:
    left, right = st.columns([1, 2])
    with left:
        patches = _patch_picker(trace)
        hide_template = context.hide_template_toggle()
    tokens = trace.tokens
    columns = np.flatnonzero(
        np.isin(tokens.image_patch, patches) & (tokens.roles == TokenRole.IMAGE)
    )
    with right:
        if len(columns) == 0:
            st.info(
                "Click image patches (or pick them in the list) to see which tokens attend to them."
            )
            return
        queries = np.flatnonzero(tokens.roles != TokenRole.IMAGE)
        queries = queries[queries > columns.min()]  # causal: earlier rows cannot see the patches
        if hide_template:
            queries = np.setdiff1d(queries, sorted(context.template_positions(trace)))
        if len(queries) == 0:
            st.info("No text token comes after these patches, so none can attend to them.")
            return
        to_patches = data.patch_attention(config, trace.trace_id, tuple(queries), tuple(columns))
        labels = [text.token_label(tokens.text[q]) for q in queries]
        layer = context.layer_slider("Layer", "layer", trace.num_layers, trace.num_layers - 1)
        head = st.selectbox("Head", ["mean of heads", *range(trace.num_heads)], key="attn:t2i:head")
        values = (
            to_patches[layer].mean(axis=0)
            if head == "mean of heads"
            else to_patches[layer, int(head)]
        )
        st.altair_chart(
            charts.token_bars(
                labels,
                values,
                f"Tokens attending to the selected patches (layer {layer})",
                WEIGHT,
                ids=queries.tolist(),
            ),
            width="stretch",
        )
    st.altair_chart(
        charts.layer_token_heatmap(to_patches.mean(axis=1), labels, WEIGHT, queries.tolist()),
        width="stretch",
    )


def _vision_grid(trace: StoredTrace, patches: int) -> tuple[int, int] | None:
    """How the tower's patches tile the image: the LM grid when counts agree, else a square."""
    geometry = trace.image
    if patches == geometry.grid_rows * geometry.grid_cols:
        return geometry.grid_rows, geometry.grid_cols
    side = math.isqrt(patches)
    return (side, side) if side * side == patches else None


def vision_tower(config: StoreConfig, trace: StoredTrace) -> None:
    if not trace.has_vision_attention:
        st.info("Vision-tower attention was not recorded for this trace.")
        return
    layers, heads, length, _ = trace.vision_shape
    offset = 1 if trace.image.vision_has_cls else 0
    grid = _vision_grid(trace, length - offset)
    if grid is None:
        st.info(f"The vision tower's {length - offset} patches don't form a known grid.")
        return
    style = context.overlay_style()
    rows, cols = grid
    options = (["CLS"] if offset else []) + [
        f"row {p // cols}, col {p % cols}" for p in range(rows * cols)
    ]
    picked = [p for p in state.ints(state.PATCHES) if 0 <= p < rows * cols]
    query = st.selectbox(
        "Query patch",
        range(len(options)),
        index=offset + picked[0] if picked else 0,
        format_func=options.__getitem__,
        key=f"attn:vq:{trace.trace_id}",
    )
    marked = query - offset if query >= offset else None  # the CLS token has no patch
    left, right = st.columns(2)
    with left:
        layer = context.layer_slider("Vision layer", "vlayer", layers, layers - 1)
        head = st.selectbox("Vision head", ["mean of heads", *range(heads)], key="attn:vhead")
        attention = data.vision_layer(config, trace.trace_id, layer)
        matrix = attention.mean(axis=0) if head == "mean of heads" else attention[int(head)]
        values = matrix[query, offset:].reshape(rows, cols)
        st.caption(f"Attention of {options[query]} at vision layer {layer} (query outlined)")
        render.heatmap(
            trace,
            values,
            style,
            Scale.of(values, WEIGHT, zero=True),
            key="vision-heatmap",
            marked=marked,
        )
    with right:
        flow = data.vision_rollout(config, trace.trace_id)
        values = flow[query, offset:].reshape(rows, cols)
        st.caption(
            f"Attention rollout (Abnar & Zuidema) of {options[query]} through all {layers} layers"
        )
        render.heatmap(
            trace,
            values,
            style,
            Scale.of(values, "rollout weight (share of flow)", zero=True),
            key="rollout-heatmap",
            marked=marked,
        )


def render_page() -> None:
    config, trace = context.trace_page("Raw attention")
    current = state.get("view")
    view = (
        st.segmented_control(
            "View",
            list(VIEWS),
            **state.widget(
                "attn:view",
                current if current in VIEWS else VIEWS[0],
                lambda v: state.put("view", v),
            ),
        )
        or VIEWS[0]
    )
    if view in VIEWS[:2]:
        selected = context.answer_selection(trace)
    if view == VIEWS[0]:
        image_to_answer(config, trace, selected)
    elif view == VIEWS[1]:
        attention_analysis(trace, selected)
    elif view == VIEWS[2]:
        text_to_image(config, trace)
    else:
        vision_tower(config, trace)


render_page()
