"""Raw attention: the seed tool's attention views, all drawn from stored tensors.

* image -> answer: per-head maps for the selected answer tokens at one layer, heads ranked
  by how much they look at the image;
* analysis: where attention goes (image / question / earlier answer), layer x head;
* text -> image: which prompt and answer tokens attend to chosen image patches;
* vision tower: one token's attention inside the vision encoder, and its rollout, per
  vision sequence (a tile, or a whole image);
* cross-attention: where the answer looks in the image when the image is read through
  cross-attention instead of tokens (Mllama).

Maps are drawn on the original image(s), tiles stitched back or one tile at a time.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import context, data, export, figures, notes, picker, render, state
from dashboard.components import analysis, charts, needs, stitch, text
from dashboard.components.overlay import Scale
from dashboard.config import StoreConfig
from store import ImageGeometry, StoredTrace, TokenRole

VIEWS = ("image → answer", "analysis", "text → image", "vision tower", "cross-attention")
WEIGHT = "attention weight (share of row)"


def image_to_answer(
    config: StoreConfig, trace: StoredTrace, selected: list[int]
) -> list[export.Offer]:
    if not _lm_reads_image(trace):
        return []
    style = context.overlay_style()
    views = render.choose_views(trace)
    default_layer = int(np.argmax(trace.summaries.head_image_attention.mean(axis=1)))
    layer = context.layer_slider("Layer", "layer", trace.num_layers, default_layer)
    rows = data.layer_rows(config, trace.trace_id, layer, tuple(selected))
    shares = analysis.image_share(rows, trace.tokens.image_positions)
    order = analysis.rank_heads(shares)
    shown = st.number_input(
        "Heads shown (ranked by attention on the image)",
        1,
        len(order),
        **state.widget(
            "attn:heads",
            max(1, context.int_param("heads", min(8, len(order)), len(order))),
            lambda v: state.put("heads", str(int(v))),
        ),
    )
    heads = order[: int(shown)]
    maps = [render.token_values(trace, rows[h]) for h in heads]
    answer = trace.tokens.text[trace.tokens.prompt_length :]
    st.text(
        f"Layer {layer}, attention of answer token(s) "
        + ", ".join(f"{k}: {text.token_label(answer[k])}" for k in selected)
        + " to the image, one map per head"
    )
    render.gallery(
        trace,
        maps,
        [f"head {h} · {shares[h]:.1%} on image" for h in heads],
        style,
        Scale.of(np.stack(maps), WEIGHT, zero=True),
        views,
    )
    st.altair_chart(charts.head_image_bars(shares, layer), width="stretch")
    shown_heads = [int(h) for h in heads]
    return [
        export.Offer(
            f"Layer {layer}: image → answer attention, {len(shown_heads)} heads",
            f"attention-L{layer}",
            lambda: figures.attention_figure(trace, layer, shown_heads, selected, style, views),
        ),
        export.Offer(
            f"Layer {layer}: each head's attention on the image",
            f"head-shares-L{layer}",
            lambda: figures.head_share_chart(trace, layer, selected),
        ),
    ]


def _lm_reads_image(trace: StoredTrace) -> bool:
    """Whether the image is in the LM's own sequence; says where to look when it is not."""
    if trace.image.token_patches.rows.size:
        return True
    st.info(
        "This model's image never enters the language model's sequence (it reads the image "
        "through cross-attention): see the cross-attention view."
    )
    return False


def attention_analysis(trace: StoredTrace, selected: list[int]) -> list[export.Offer]:
    st.caption(
        "Share of each head's attention on the image, the question and earlier answer tokens."
    )
    shares = analysis.token_shares(trace.summaries.attention_shares, selected)
    st.altair_chart(charts.share_matrix(shares))
    return [
        export.Offer(
            "Where each head's attention goes (layer × head)",
            "attention-shares",
            lambda: figures.share_matrix_figure(trace, selected),
        )
    ]


def text_to_image(config: StoreConfig, trace: StoredTrace) -> list[export.Offer]:
    if not _lm_reads_image(trace):
        return []
    geometry = trace.image
    tokens = trace.tokens
    left, right = st.columns([1, 2])
    with left:
        views = render.choose_views(trace, key="t2i:tiles")
        patches = picker.pick(trace, views, key="t2i")
        hide_template = context.hide_template_toggle()
    weights = analysis.patch_weights(geometry.token_patches, patches, len(tokens.text))
    columns = np.flatnonzero(weights > 0)
    with right:
        if len(columns) == 0:
            st.info(
                "Click image patches (or pick them in the list) to see which tokens attend to them."
            )
            return []
        # every text and answer row: a prompt may attend both ways (Gemma 3, PaliGemma)
        queries = np.flatnonzero(tokens.roles != TokenRole.IMAGE)
        if hide_template:
            queries = np.setdiff1d(queries, sorted(context.template_positions(trace)))
        absent = needs.missing(trace.lm_rows, queries)
        if absent:
            st.caption(
                needs.rows_note(
                    tokens, trace.lm_rows, "text → image attention of the prompt", "its rows"
                )
            )
            queries = np.setdiff1d(queries, absent)
        if len(queries) == 0:
            st.info("No text token's attention is kept in this trace.")
            return []
        to_patches = data.patch_attention(
            config, trace.trace_id, tuple(queries), tuple(columns), tuple(weights[columns])
        )
        labels = [text.token_label(tokens.text[q]) for q in queries]
        layer = context.layer_slider("Layer", "layer", trace.num_layers, trace.num_layers - 1)
        head = context.head_select("Head", "head", trace.num_heads, "attn:t2i:head")
        values = to_patches[layer].mean(axis=0) if head is None else to_patches[layer, head]
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

    def build(index: int) -> figures.Figure:
        return figures.text_to_image_figures(trace, patches, layer, head, hide_template)[index]

    return [
        export.Offer(
            f"Tokens attending to the selected patches (layer {layer})",
            f"text-to-image-L{layer}",
            lambda: build(0),
        ),
        export.Offer(
            "Tokens attending to the selected patches, by layer",
            "text-to-image-layers",
            lambda: build(1),
        ),
    ]


def _token_label(geometry: ImageGeometry, patch: int, position: int) -> str:
    if patch < 0:
        return f"token {position} (reads no patch: CLS, register or padding)"
    return stitch.patch_label(geometry, patch)


def vision_tower(config: StoreConfig, trace: StoredTrace) -> list[export.Offer]:
    if not trace.has_vision_attention:
        st.info("Vision-tower attention was not recorded for this trace.")
        return []
    geometry = trace.image
    sequences = geometry.vision_sequences
    style = context.overlay_style()
    sequence = 0
    if len(sequences) > 1:
        sequence = context.index_select(
            "Vision sequence (what the tower attended over at once)",
            "vseq",
            len(sequences),
            f"attn:vseq:{trace.trace_id}",
            lambda s: stitch.view_label(geometry, stitch.sequence_view(geometry, s)),
        )
    tokens = np.asarray(sequences[sequence])
    view = stitch.sequence_view(geometry, sequence)
    held = set(tokens.tolist())
    picked = [p for p in picker.selected(geometry) if p in held]
    if state.get("vquery") is None and picked:  # seeded by the shared patch selection
        state.put("vquery", str(int(np.flatnonzero(tokens == picked[0])[0])))
    query = context.index_select(
        "Query token",
        "vquery",
        len(tokens),
        f"attn:vq:{trace.trace_id}:{sequence}",
        lambda i: _token_label(geometry, int(tokens[i]), i),
    )
    marked = [int(tokens[query])] if tokens[query] >= 0 else []
    layers, heads = trace.vision_shape[:2]
    left, right = st.columns(2)
    with left:
        layer = context.layer_slider("Vision layer", "vlayer", layers, layers - 1)
        head = context.head_select("Vision head", "vhead", heads, "attn:vhead")
        attention = data.vision_layer(config, trace.trace_id, layer, sequence)
        matrix = attention.mean(axis=0) if head is None else attention[head]
        values = analysis.vision_values(matrix[query], tokens, geometry.num_patches)
        st.caption(f"Attention of query token {query} at vision layer {layer} (query outlined)")
        render.heatmap(
            trace,
            values,
            style,
            Scale.of(values, WEIGHT, zero=True),
            [view],
            key="vision-heatmap",
            marked=marked,
        )
    with right:
        flow = data.vision_rollout(config, trace.trace_id, sequence)
        values = analysis.vision_values(flow[query], tokens, geometry.num_patches)
        st.caption(
            f"Attention rollout (Abnar & Zuidema) of query token {query} through all "
            f"{layers} layers"
        )
        render.heatmap(
            trace,
            values,
            style,
            Scale.of(values, "rollout weight (share of flow)", zero=True),
            [view],
            key="rollout-heatmap",
            marked=marked,
        )
    return [
        export.Offer(
            f"Vision layer {layer}: attention of query token {query}",
            f"vision-L{layer}-q{query}",
            lambda: figures.vision_figure(trace, layer, head, sequence, query, style=style),
        ),
        export.Offer(
            f"Attention rollout of query token {query}",
            f"rollout-q{query}",
            lambda: figures.vision_figure(trace, None, None, sequence, query, True, style),
        ),
    ]


def cross_attention(
    config: StoreConfig, trace: StoredTrace, selected: list[int]
) -> list[export.Offer]:
    """Mllama: the answer tokens' cross-attention to the vision keys, carried onto the photo
    through ``key_patches`` (keys that read no patch, such as a tile's CLS, drop out)."""
    geometry = trace.image
    layers = trace.cross_layers
    if not layers or geometry.key_patches is None:
        st.info(
            "This trace has no cross-attention: its model reads the image as tokens in its "
            "sequence (see image → answer)."
        )
        return []
    style = context.overlay_style()
    views = render.choose_views(trace, key="cross:tiles")
    index = context.index_select(
        "Cross-attention layer",
        "xlayer",
        len(layers),
        f"attn:xlayer:{trace.trace_id}",
        lambda i: f"LM layer {layers[i]}",
    )
    keys = data.cross_rows(config, trace.trace_id, index, tuple(selected))  # [H, K]
    head = context.head_select("Head", "head", len(keys), "attn:xhead")
    row = keys.mean(axis=0) if head is None else keys[head]
    values = analysis.spread(row, geometry.key_patches, geometry.num_patches)
    answer = trace.tokens.text[trace.tokens.prompt_length :]
    st.text(
        f"LM layer {layers[index]}, cross-attention of answer token(s) "
        + ", ".join(f"{k}: {text.token_label(answer[k])}" for k in selected)
    )
    render.heatmap(
        trace, values, style, Scale.of(values, WEIGHT, zero=True), views, key="cross-heatmap"
    )
    return [
        export.Offer(
            f"LM layer {layers[index]}: cross-attention of the selected tokens",
            f"cross-L{layers[index]}",
            lambda: figures.cross_attention_figure(trace, index, head, selected, style, views),
        )
    ]


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
    if view in (VIEWS[0], VIEWS[1], VIEWS[4]):
        selected = context.answer_selection(trace)
    if view == VIEWS[0]:
        offers = image_to_answer(config, trace, selected)
    elif view == VIEWS[1]:
        offers = attention_analysis(trace, selected)
    elif view == VIEWS[2]:
        offers = text_to_image(config, trace)
    elif view == VIEWS[3]:
        offers = vision_tower(config, trace)
    else:
        offers = cross_attention(config, trace, selected)
    if offers:
        export.figure_gallery(trace.trace_id, offers)
    notes.panel(config, trace)


render_page()
