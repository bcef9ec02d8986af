"""Maps on the trace's images, as the Relevancy and Raw attention pages draw them: relevancy
in each mode and its gallery, image -> answer attention per head, the vision tower and its
rollout, cross-attention, and the image itself."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from dashboard.components import analysis, stitch
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.figures.common import (
    GALLERY_SIDE,
    MAP_SIDE,
    SCORE,
    WEIGHT,
    answer_labels,
    answer_rows,
    best_layer,
    check_index,
    check_tokens,
    figure_name,
    fit,
    map_figure,
    map_panel,
    require_image_tokens,
    source_line,
    tokens_text,
    views_caption,
)
from dashboard.figures.layout import Figure, Panel, picture_figure
from store import RelevancyMode, StoredTrace


def relevancy_maps(
    trace: StoredTrace, mode: RelevancyMode | str | None = None
) -> tuple[RelevancyMode, np.ndarray]:
    """The mode (default: the first the trace holds) and its [N, G] maps, one per answer
    token, per patch (as ``store relevancy`` prints them)."""
    relevancy = trace.relevancy
    if relevancy is None:
        raise ValueError("relevancy was not recorded for this trace")
    mode = RelevancyMode(mode) if mode is not None else relevancy.modes[0]
    if mode not in relevancy.modes:
        raise ValueError(f"this trace holds no {mode.value!r} relevancy map")
    return mode, np.asarray(relevancy.on_patches(mode, trace.image), np.float64)


def relevancy_figure(
    trace: StoredTrace,
    tokens: Sequence[int] | None = None,
    mode: RelevancyMode | str | None = None,
    style: OverlayStyle | None = None,
    views: Sequence[stitch.View] | None = None,
) -> Figure:
    """The Relevancy page's map: ``mode`` (default the first held) averaged over ``tokens``,
    on the scale of every answer token's map in that mode (as the page's gallery)."""
    mode, every = relevancy_maps(trace, mode)
    chosen = check_tokens(trace, tokens)
    return map_figure(
        trace,
        every[chosen].mean(axis=0),
        name=figure_name(trace, "relevancy", mode.value, *chosen),
        title=f"Relevancy ({mode.label}) of answer token {tokens_text(trace, chosen)}",
        caption=f"Mode {mode.label}: {mode.definition}",
        scale=Scale.of(every, SCORE, zero=True),
        style=style,
        views=views,
    )


def relevancy_gallery(
    trace: StoredTrace,
    mode: RelevancyMode | str | None = None,
    style: OverlayStyle | None = None,
    views: Sequence[stitch.View] | None = None,
    columns: int = 6,
) -> Figure:
    """The Relevancy page's gallery: one map per answer token in ``mode``, one scale."""
    mode, every = relevancy_maps(trace, mode)
    style = style or OverlayStyle()
    scale = Scale.of(every, SCORE, zero=True)
    panels = [
        map_panel(trace, values, style, scale, views, label=f"token {k}: {label}", side=160)
        for k, (values, label) in enumerate(zip(every, answer_labels(trace), strict=True))
    ]
    return picture_figure(
        figure_name(trace, "relevancy-gallery", mode.value),
        f"Relevancy ({mode.label}) of every answer token",
        "One map per answer token, captioned with its token, on one colour scale. "
        + " ".join(p for p in (views_caption(trace, views), source_line(trace)) if p),
        panels,
        (style, scale),
        columns=columns,
    )


def attention_figure(
    trace: StoredTrace,
    layer: int | None = None,
    heads: Sequence[int] | int | None = None,
    tokens: Sequence[int] | None = None,
    style: OverlayStyle | None = None,
    views: Sequence[stitch.View] | None = None,
    columns: int = 4,
) -> Figure:
    """Image -> answer attention of ``tokens`` at ``layer`` (default: the most image-attending
    layer), one map per head on one scale. ``heads``: indices, or a count of the heads most
    attending to the image (default 4, ranked as on the page)."""
    require_image_tokens(trace)
    layer = best_layer(trace) if layer is None else check_index(layer, trace.num_layers, "layer")
    chosen = check_tokens(trace, tokens)
    rows = answer_rows(trace, layer, chosen)
    shares = analysis.image_share(rows, trace.tokens.image_positions)
    if heads is None or isinstance(heads, int):
        picked = analysis.rank_heads(shares)[: 4 if heads is None else max(1, heads)].tolist()
    else:
        picked = [check_index(h, trace.num_heads, "head") for h in heads]
    geometry = trace.image
    values = [
        analysis.spread(rows[h], geometry.token_patches, geometry.num_patches) for h in picked
    ]
    style = style or OverlayStyle()
    scale = Scale.of(np.stack(values), WEIGHT, zero=True)
    panels = [
        map_panel(
            trace,
            v,
            style,
            scale,
            views,
            label=f"head {h} · {shares[h]:.1%} on image",
            side=GALLERY_SIDE if len(picked) > 1 else MAP_SIDE,
        )
        for h, v in zip(picked, values, strict=True)
    ]
    caption = (
        f"Attention of the answer token(s) to the image at layer {layer}, one map per head, "
        "heads ranked by their attention on image tokens; one colour scale for all. "
        + " ".join(p for p in (views_caption(trace, views), source_line(trace)) if p)
    )
    return picture_figure(
        figure_name(trace, "attention", f"L{layer}", *chosen),
        f"Layer {layer}: attention of answer token {tokens_text(trace, chosen)} to the image",
        caption,
        panels,
        (style, scale),
        columns=columns,
    )


def vision_figure(
    trace: StoredTrace,
    layer: int | None = None,
    head: int | None = None,
    sequence: int = 0,
    query: int = 0,
    rollout: bool = False,
    style: OverlayStyle | None = None,
) -> Figure:
    """Vision-tower attention of token ``query`` of one vision sequence at ``layer`` (default
    the last; ``head`` None = mean of heads), or its attention rollout through every layer."""
    if not trace.has_vision_attention:
        raise ValueError("vision-tower attention was not recorded for this trace")
    geometry = trace.image
    sequence = check_index(sequence, len(geometry.vision_sequences), "vision sequence")
    tokens = np.asarray(geometry.vision_sequences[sequence])
    query = check_index(query, len(tokens), "query token")
    layers, heads = trace.vision_shape[:2]
    view = stitch.sequence_view(geometry, sequence)
    if rollout:
        flow = analysis.rollout(
            trace.vision_attention_layer(i, sequence=sequence) for i in range(layers)
        )
        row, what = flow[query], f"Attention rollout through all {layers} vision layers"
        quantity, name = (
            "rollout weight (share of flow)",
            figure_name(trace, "rollout", sequence, query),
        )
    else:
        layer = layers - 1 if layer is None else check_index(layer, layers, "vision layer")
        attention = trace.vision_attention_layer(layer, sequence=sequence)
        matrix = (
            attention.mean(axis=0) if head is None else attention[check_index(head, heads, "head")]
        )
        row = matrix[query]
        which = "mean of heads" if head is None else f"head {head}"
        what, quantity = f"Vision layer {layer} ({which}) attention", WEIGHT
        name = figure_name(trace, "vision", f"L{layer}", sequence, query)
    values = analysis.vision_values(row, tokens, geometry.num_patches)
    marked = [int(tokens[query])] if tokens[query] >= 0 else []
    return map_figure(
        trace,
        values,
        name=name,
        title=f"{what} of query token {query}",
        caption="The query patch is outlined.",
        style=style,
        views=[view],
        marked=marked,
        scale_title=quantity,
    )


def cross_attention_figure(
    trace: StoredTrace,
    index: int = 0,
    head: int | None = None,
    tokens: Sequence[int] | None = None,
    style: OverlayStyle | None = None,
    views: Sequence[stitch.View] | None = None,
) -> Figure:
    """Cross-attention (Mllama) of the answer tokens to the vision keys at the ``index``-th
    cross-attention layer, carried onto the photo (``head`` None = mean of heads)."""
    layers, geometry = trace.cross_layers, trace.image
    if not layers or geometry.key_patches is None:
        raise ValueError("this trace has no cross-attention")
    index = check_index(index, len(layers), "cross-attention layer")
    chosen = check_tokens(trace, tokens)
    keys = trace.cross_attention_rows(index, [trace.tokens.answer_row(k) for k in chosen])
    keys = keys.mean(axis=1)
    row = keys.mean(axis=0) if head is None else keys[check_index(head, len(keys), "head")]
    values = analysis.spread(row, geometry.key_patches, geometry.num_patches)
    return map_figure(
        trace,
        values,
        name=figure_name(trace, "cross", f"L{layers[index]}", *chosen),
        title=f"LM layer {layers[index]}: cross-attention of answer token "
        f"{tokens_text(trace, chosen)}",
        style=style,
        views=views,
    )


def image_figure(trace: StoredTrace, side: int = MAP_SIDE) -> Figure:
    """The trace's image(s) as the model was asked about them."""
    geometry = trace.image
    panels = []
    for view in stitch.stitched_views(geometry):
        pixels = stitch.frame(geometry, view).pixels

        def draw(s: float, pixels: np.ndarray = pixels) -> Image.Image:
            return fit(
                Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB"), round(side * s)
            )

        panels.append(Panel(draw, stitch.image_label(geometry, view.image)))
    return picture_figure(
        figure_name(trace, "image"),
        "Image",
        source_line(trace),
        panels,
        None,
        columns=2,
        kind="picture",
    )
