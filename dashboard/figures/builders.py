"""Figures of a stored trace: every map and chart the dashboard pages draw, without Streamlit.

Each builder reads what it needs from a :class:`store.StoredTrace` and returns a
:class:`~dashboard.figures.layout.Figure`; the drawing itself is the dashboard's own
(:mod:`dashboard.components`), so a figure matches the page. Arguments mirror the pages'
controls: answer tokens ``tokens`` are answer indices k (0 = first generated token), layers
and heads are indices, ``style`` is the sidebar's :class:`OverlayStyle`, ``views`` the
pictures a map is drawn on (default: every image, tiles stitched back). A request the trace
cannot answer (no relevancy recorded, a layer out of range) raises :class:`ValueError` with
one line saying why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from dashboard.components import (
    analysis,
    causal_graph,
    charts,
    explanation,
    maps,
    needs,
    stitch,
    text,
)
from dashboard.components.colormap import DIVERGING
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.figures.layout import Figure, Panel, chart_figure, picture_figure
from engine.causal import CausalExplanation
from engine.causal.trace import head_ranking
from store import RelevancyMode, StoredTrace, TokenRole

SCORE = "relevancy (normalised score)"
WEIGHT = "attention weight (share of row)"
MAP_SIDE = 336  # CSS px: the longer side of one map (the dashboard's overlay size)
GALLERY_SIDE = 224  # CSS px: a map in a gallery of heads or tokens
CROP_PX = 40  # CSS px: an image patch's crop in a causal graph node (the Causal page's)
COMPARE_SOURCES = ("attention", "relevancy")


def answer_labels(trace: StoredTrace) -> list[str]:
    """The answer's tokens as visible labels (index k -> label)."""
    return [text.token_label(t) for t in trace.tokens.text[trace.tokens.prompt_length :]]


def check_tokens(trace: StoredTrace, tokens: Sequence[int] | None) -> list[int]:
    """Answer token indices, checked; the first token when none is given."""
    count = trace.tokens.answer_length
    if count == 0:
        raise ValueError("this trace has no answer tokens")
    chosen = sorted({int(k) for k in tokens}) if tokens else [0]
    bad = [k for k in chosen if not 0 <= k < count]
    if bad:
        raise ValueError(f"answer token {bad[0]} out of range 0-{count - 1}")
    return chosen


def _index(value: int, size: int, what: str) -> int:
    if not 0 <= int(value) < size:
        raise ValueError(f"{what} {value} out of range 0-{size - 1}")
    return int(value)


def _tokens_text(trace: StoredTrace, tokens: Sequence[int]) -> str:
    labels = answer_labels(trace)
    return ", ".join(f"{k}: {labels[k]}" for k in tokens)


def _source(trace: StoredTrace) -> str:
    info = trace.info
    return f"Trace {text.short_id(info.trace_id)}, {info.model_id} @ {info.model_revision}."


def _name(trace: StoredTrace, *parts: object) -> str:
    return "-".join([text.short_id(trace.trace_id), *(str(p) for p in parts)])


def _views(trace: StoredTrace, views: Sequence[stitch.View] | None) -> tuple[stitch.View, ...]:
    return tuple(views) if views else tuple(stitch.stitched_views(trace.image))


def _fit(picture: Image.Image, side: int) -> Image.Image:
    """``picture`` with its longer side exactly ``side`` pixels."""
    factor = side / max(picture.size)
    if abs(factor - 1) < 1e-9:
        return picture
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    return picture.resize(size, Image.Resampling.LANCZOS)


def map_panel(
    trace: StoredTrace,
    values: np.ndarray,
    style: OverlayStyle,
    scale: Scale,
    views: Sequence[stitch.View] | None = None,
    marked: Sequence[int] = (),
    label: str = "",
    side: int = MAP_SIDE,
) -> Panel:
    """One [G] map over the trace's views, each ``side`` CSS px on its longer side."""
    geometry, shown = trace.image, _views(trace, views)
    values = np.asarray(values, np.float64)

    def draw(s: float) -> Image.Image:
        target = max(1, round(side * s))
        pictures = [
            _fit(maps.draw(geometry, values, v, style, scale, marked, min_side=target), target)
            for v in shown
        ]
        return maps.side_by_side(pictures, gap=max(1, round(maps.GAP_PX * s)))

    return Panel(draw, label)


def views_caption(trace: StoredTrace, views: Sequence[stitch.View] | None) -> str:
    """What the pictures show, when that is not simply the one image."""
    geometry, shown = trace.image, _views(trace, views)
    if len(geometry.images) == 1 and shown[0].tile is None:
        return ""
    note = (
        f" {stitch.COMBINE_NOTE}" if shown[0].tile is None and stitch.has_overlaps(geometry) else ""
    )
    return "Pictures: " + "; ".join(stitch.view_label(geometry, v) for v in shown) + "." + note


def map_figure(
    trace: StoredTrace,
    values: np.ndarray,
    *,
    name: str,
    title: str,
    caption: str = "",
    scale: Scale | None = None,
    style: OverlayStyle | None = None,
    views: Sequence[stitch.View] | None = None,
    marked: Sequence[int] = (),
    scale_title: str = WEIGHT,
) -> Figure:
    """Any per-patch map ([G] values) as a figure with its colour bar (scale from the values,
    starting at 0, unless given)."""
    style = style or OverlayStyle()
    scale = scale or Scale.of(values, scale_title, zero=True)
    panel = map_panel(trace, values, style, scale, views, marked)
    full = " ".join(p for p in (caption, views_caption(trace, views), _source(trace)) if p)
    return picture_figure(name, title, full, [panel], (style, scale), columns=1)


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
        name=_name(trace, "relevancy", mode.value, *chosen),
        title=f"Relevancy ({mode.label}) of answer token {_tokens_text(trace, chosen)}",
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
        _name(trace, "relevancy-gallery", mode.value),
        f"Relevancy ({mode.label}) of every answer token",
        "One map per answer token, captioned with its token, on one colour scale. "
        + " ".join(p for p in (views_caption(trace, views), _source(trace)) if p),
        panels,
        (style, scale),
        columns=columns,
    )


def best_layer(trace: StoredTrace) -> int:
    """The layer whose heads look at the image most (the Raw attention page's default)."""
    return int(np.argmax(trace.summaries.head_image_attention.mean(axis=1)))


def _answer_rows(trace: StoredTrace, layer: int, tokens: list[int]) -> np.ndarray:
    """[H, T] attention of the answer tokens at one layer, averaged over the tokens."""
    rows = [trace.tokens.answer_row(k) for k in tokens]
    return trace.attention_rows(rows, layers=[layer])[0].mean(axis=1)


def _reads_image(trace: StoredTrace) -> None:
    if not trace.image.token_patches.rows.size:
        raise ValueError(
            "this model reads the image through cross-attention: use cross_attention_figure"
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
    _reads_image(trace)
    layer = best_layer(trace) if layer is None else _index(layer, trace.num_layers, "layer")
    chosen = check_tokens(trace, tokens)
    rows = _answer_rows(trace, layer, chosen)
    shares = analysis.image_share(rows, trace.tokens.image_positions)
    if heads is None or isinstance(heads, int):
        picked = analysis.rank_heads(shares)[: 4 if heads is None else max(1, heads)].tolist()
    else:
        picked = [_index(h, trace.num_heads, "head") for h in heads]
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
        + " ".join(p for p in (views_caption(trace, views), _source(trace)) if p)
    )
    return picture_figure(
        _name(trace, "attention", f"L{layer}", *chosen),
        f"Layer {layer}: attention of answer token {_tokens_text(trace, chosen)} to the image",
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
    sequence = _index(sequence, len(geometry.vision_sequences), "vision sequence")
    tokens = np.asarray(geometry.vision_sequences[sequence])
    query = _index(query, len(tokens), "query token")
    layers, heads = trace.vision_shape[:2]
    view = stitch.sequence_view(geometry, sequence)
    if rollout:
        flow = analysis.rollout(
            trace.vision_attention_layer(i, sequence=sequence) for i in range(layers)
        )
        row, what = flow[query], f"Attention rollout through all {layers} vision layers"
        quantity, name = "rollout weight (share of flow)", _name(trace, "rollout", sequence, query)
    else:
        layer = layers - 1 if layer is None else _index(layer, layers, "vision layer")
        attention = trace.vision_attention_layer(layer, sequence=sequence)
        matrix = attention.mean(axis=0) if head is None else attention[_index(head, heads, "head")]
        row = matrix[query]
        which = "mean of heads" if head is None else f"head {head}"
        what, quantity = f"Vision layer {layer} ({which}) attention", WEIGHT
        name = _name(trace, "vision", f"L{layer}", sequence, query)
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
    index = _index(index, len(layers), "cross-attention layer")
    chosen = check_tokens(trace, tokens)
    keys = trace.cross_attention_rows(index, [trace.tokens.answer_row(k) for k in chosen])
    keys = keys.mean(axis=1)
    row = keys.mean(axis=0) if head is None else keys[_index(head, len(keys), "head")]
    values = analysis.spread(row, geometry.key_patches, geometry.num_patches)
    return map_figure(
        trace,
        values,
        name=_name(trace, "cross", f"L{layers[index]}", *chosen),
        title=f"LM layer {layers[index]}: cross-attention of answer token "
        f"{_tokens_text(trace, chosen)}",
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
            return _fit(
                Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB"), round(side * s)
            )

        panels.append(Panel(draw, stitch.image_label(geometry, view.image)))
    return picture_figure(
        _name(trace, "image"), "Image", _source(trace), panels, None, columns=2, kind="picture"
    )


# -- charts -----------------------------------------------------------------------------------


def probability_chart(trace: StoredTrace, tokens: Sequence[int] = ()) -> Figure:
    """The Generation page's chart: probability of each generated token (``tokens`` red)."""
    chart = charts.token_probabilities(
        answer_labels(trace), np.asarray(trace.top_k.chosen_prob, np.float64), list(tokens)
    )
    return chart_figure(
        chart,
        _name(trace, "probabilities"),
        "Probability of each generated token",
        "The probability the model gave each token it generated (answer index: text). "
        + _source(trace),
    )


def text_relevancy_chart(
    trace: StoredTrace,
    tokens: Sequence[int] | None = None,
    hide_template: bool = True,
    top: int = 15,
) -> Figure:
    """The Relevancy page's chart: the prompt's words by their share of the answer tokens'
    LLM relevancy, beside the image's share as a whole."""
    if trace.relevancy is None:
        raise ValueError("relevancy was not recorded for this trace")
    chosen = check_tokens(trace, tokens)
    table = trace.tokens
    row = np.asarray(trace.relevancy.llm, np.float64)[chosen].mean(axis=0)
    template = (
        text.template_positions(table.text, table.roles, table.prompt_length, trace.info.prompt)
        if hide_template
        else set()
    )
    words = [
        w
        for w in text.words(table.text, table.roles, table.word_ids, TokenRole.TEXT)
        if w.positions[0] < table.prompt_length and not template.issuperset(w.positions)
    ]
    values = analysis.grouped_sum(np.clip(row, 0, None), [w.positions for w in words])
    image_total = float(np.clip(row[table.image_positions], 0, None).sum())
    total = values.sum() + image_total
    shares = np.concatenate([[image_total], values]) / (total if total > 0 else 1.0)
    chart = charts.token_bars(
        ["⟨image⟩", *(w.text for w in words)],
        shares,
        "Relevancy of the prompt's words and the image",
        "share of relevancy (%)",
        top=top,
        percent=True,
    )
    return chart_figure(
        chart,
        _name(trace, "text-relevancy", *chosen),
        f"Relevancy of the prompt's words and the image for answer token "
        f"{_tokens_text(trace, chosen)}",
        "Share of the positive LLM relevancy on each prompt word and on the image as a whole"
        + (", chat-template tokens left out. " if hide_template else ". ")
        + _source(trace),
    )


def head_share_chart(
    trace: StoredTrace, layer: int | None = None, tokens: Sequence[int] | None = None
) -> Figure:
    """Per-head attention on image tokens at one layer (the ranking behind the head maps)."""
    _reads_image(trace)
    layer = best_layer(trace) if layer is None else _index(layer, trace.num_layers, "layer")
    chosen = check_tokens(trace, tokens)
    shares = analysis.image_share(_answer_rows(trace, layer, chosen), trace.tokens.image_positions)
    return chart_figure(
        charts.head_image_bars(shares, layer),
        _name(trace, "head-shares", f"L{layer}", *chosen),
        f"Layer {layer}: attention on image tokens per head",
        f"Answer token {_tokens_text(trace, chosen)}. " + _source(trace),
    )


def share_matrix_figure(trace: StoredTrace, tokens: Sequence[int] | None = None) -> Figure:
    """Layer x head matrices of where attention goes: image, question, earlier answer."""
    chosen = check_tokens(trace, tokens)
    shares = analysis.token_shares(trace.summaries.attention_shares, chosen)
    return chart_figure(
        charts.share_matrix(shares),
        _name(trace, "shares", *chosen),
        "Where attention goes, per layer and head",
        f"Share of each head's attention on the image, the question and earlier answer tokens, "
        f"for answer token {_tokens_text(trace, chosen)}. " + _source(trace),
    )


def text_to_image_figures(
    trace: StoredTrace,
    patches: Sequence[int],
    layer: int | None = None,
    head: int | None = None,
    hide_template: bool = True,
) -> list[Figure]:
    """The Raw attention page's text -> image view: which prompt and answer tokens attend to
    the chosen image ``patches`` at ``layer`` (default the last; ``head`` None = mean of
    heads), weighted by how much each image token reads them, and the same by layer."""
    _reads_image(trace)
    geometry, tokens = trace.image, trace.tokens
    chosen = sorted({_index(p, geometry.num_patches, "patch") for p in patches})
    if not chosen:
        raise ValueError("choose at least one image patch")
    layer = trace.num_layers - 1 if layer is None else _index(layer, trace.num_layers, "layer")
    weights = analysis.patch_weights(geometry.token_patches, chosen, len(tokens.text))
    columns = np.flatnonzero(weights > 0)
    queries = np.flatnonzero(tokens.roles != TokenRole.IMAGE)
    if hide_template:
        template = text.template_positions(
            tokens.text, tokens.roles, tokens.prompt_length, trace.info.prompt
        )
        queries = np.setdiff1d(queries, sorted(template))
    queries = np.setdiff1d(queries, needs.missing(trace.lm_rows, queries))
    if len(queries) == 0:
        raise ValueError("no text token's attention row is kept in this trace")
    block = trace.attention_block(queries.tolist(), columns.tolist())
    to_patches = analysis.attention_to_patches(block, weights[columns])  # [L, H, Q]
    if head is None:
        values = to_patches[layer].mean(axis=0)
    else:
        values = to_patches[layer, _index(head, trace.num_heads, "head")]
    labels = [text.token_label(tokens.text[q]) for q in queries]
    where = ", ".join(str(p) for p in chosen[:8]) + (" ..." if len(chosen) > 8 else "")
    note = f"Patches {where}. " + _source(trace)
    which = "mean of heads" if head is None else f"head {head}"
    return [
        chart_figure(
            charts.token_bars(labels, values, "", WEIGHT, ids=queries.tolist()),
            _name(trace, "text-to-image", f"L{layer}"),
            f"Tokens attending to the chosen patches (layer {layer}, {which})",
            note,
        ),
        chart_figure(
            charts.layer_token_heatmap(to_patches.mean(axis=1), labels, WEIGHT, queries.tolist()),
            _name(trace, "text-to-image-layers"),
            "Attention to the chosen patches, by layer (mean over heads)",
            note,
        ),
    ]


# -- causal explanations ----------------------------------------------------------------------


def causal_figures(
    trace: StoredTrace, results: Sequence[CausalExplanation], whole: bool = False
) -> list[Figure]:
    """A CLEANN explanation of one (layer, token) as on the Causal page: the most important
    head's explanation patches per radius, its causal graph, and (several heads) the heads
    ranked by importance. ``results``: one explanation per head, as stored."""
    if not results:
        raise ValueError("no causal explanation given")
    ranking = head_ranking(results)
    shown = next((r for r in results if ranking and r.head == ranking[0][0]), results[0])
    view = explanation.TraceView(trace.tokens, trace.image)
    target = trace.tokens.prompt_length
    token = shown.target - target + 1
    label = view.node_label(shown.target, shown.target)
    where = f"answer token {token}: {label}, head {shown.head}"
    figures = []
    if any(view.patches(p) for p in shown.explanation):
        geometry = trace.image
        radius = shown.params.max_radius
        sets = [
            (explanation.patch_colours(view, shown, r), f"radius ≤ {r}")
            for r in range(1, radius + 1)
        ]
        minimal = "minimal (separating)" if shown.minimal_is_separating else "minimal (not proven)"
        sets.append((explanation.minimal_colours(view, shown), minimal))
        panels = []
        for colours, name in sets:

            def draw(s: float, colours: dict = colours) -> Image.Image:
                side = round(GALLERY_SIDE * s)
                pictures = [
                    _fit(maps.highlight(geometry, v, colours, min_side=side), side)
                    for v in stitch.stitched_views(geometry)
                ]
                return maps.side_by_side(pictures, gap=max(1, round(maps.GAP_PX * s)))

            panels.append(Panel(draw, f"{name}: {len(colours)} patches"))
        figures.append(
            picture_figure(
                _name(trace, "causal-patches", token, shown.head),
                f"CLEANN explanation of {where}",
                "Image patches in the explanation within each search radius (coloured by the "
                "radius they joined at), then the minimal explanation; the rest is dimmed. "
                + _source(trace),
                panels,
                None,
                columns=len(panels),
                kind="picture",
            )
        )
    nodes, edges = explanation.graph(view, shown, whole=whole)

    def graph(s: float) -> Image.Image:
        crops = explanation.graph(view, shown, whole=whole, crop_size=round(CROP_PX * s))[0]
        return causal_graph.draw_graph(crops, edges, shown.params.max_radius, unit=s)

    figures.append(
        picture_figure(
            _name(trace, "causal-graph", token, shown.head),
            f"Causal graph of {where}",
            f"{len(nodes)} nodes, {len(edges)} edges; numbers are token positions. "
            + _source(trace),
            [Panel(graph)],
            None,
            columns=1,
            kind="graph",
        )
    )
    if len(results) > 1:
        figures.append(
            chart_figure(
                charts.head_importance_bars(ranking, shown.head),
                _name(trace, "causal-heads", token),
                f"Heads ranked by causal importance for answer token {token}: {label}",
                "Importance: sum of −log10 p over the image tokens in each head's explanation; "
                "the head drawn above is red. " + _source(trace),
            )
        )
    return figures


# -- two traces -------------------------------------------------------------------------------


def _compare_map(trace: StoredTrace, source: str, tokens: list[int], layer: int) -> np.ndarray:
    if source == "relevancy":
        row = np.asarray(trace.relevancy.llm, np.float64)[tokens].mean(axis=0)
    else:
        row = _answer_rows(trace, layer, tokens).mean(axis=0)
    geometry = trace.image
    return analysis.spread(row, geometry.token_patches, geometry.num_patches)


def compare_figures(
    first: StoredTrace,
    second: StoredTrace,
    tokens: Sequence[int] | None = None,
    source: str = "attention",
    layer: int | None = None,
    style: OverlayStyle | None = None,
) -> list[Figure]:
    """The Compare page: both traces' maps of the same answer tokens on one scale, their
    difference and the per-layer Jensen-Shannon divergence (when the patches line up).
    ``source``: ``"attention"`` (mean of heads at ``layer``, default the last common one)
    or ``"relevancy"`` (LLM relevancy)."""
    if source not in COMPARE_SOURCES:
        raise ValueError(f"source is one of {COMPARE_SOURCES}, not {source!r}")
    if source == "relevancy" and (first.relevancy is None or second.relevancy is None):
        raise ValueError("relevancy was not recorded for both traces")
    for trace in (first, second):
        _reads_image(trace)
    common = min(first.tokens.answer_length, second.tokens.answer_length)
    chosen = [k for k in check_tokens(first, tokens) if k < common] or [0]
    layers = min(first.num_layers, second.num_layers)
    layer = layers - 1 if layer is None else _index(layer, layers, "layer")
    style = style or OverlayStyle()
    same = stitch.same_layout(first.image, second.image)
    values = [_compare_map(t, source, chosen, layer) for t in (first, second)]
    quantity = WEIGHT if source == "attention" else "relevancy (score)"
    scale = Scale.of(np.stack(values) if same else values[0], quantity, zero=True)
    what = f"mean of heads at layer {layer}" if source == "attention" else "LLM relevancy"
    tokens_note = ", ".join(map(str, chosen))
    panels = [
        map_panel(
            t,
            v,
            style,
            scale,
            label=f"{side}: {text.short_id(t.trace_id)} · "
            f"{t.info.model_id} @ {t.info.model_revision}",
        )
        for side, t, v in zip(("left", "right"), (first, second), values, strict=True)
    ]
    same_image = first.info.image_sha256 == second.info.image_sha256
    warning = "" if same_image else " The two traces show different images."
    figures = [
        picture_figure(
            f"compare-{text.short_id(first.trace_id)}-{text.short_id(second.trace_id)}-{source}",
            f"Two traces, answer tokens {tokens_note}: {source} ({what})",
            f"Both maps on one colour scale.{warning}",
            panels,
            (style, scale),
            columns=2,
        )
    ]
    if not same:
        return figures
    difference = values[1] - values[0]
    diverging = OverlayStyle(colormap=DIVERGING, opacity=style.opacity, smooth=style.smooth)
    figures.append(
        map_figure(
            first,
            difference,
            name=f"compare-{text.short_id(first.trace_id)}-{text.short_id(second.trace_id)}-diff",
            title=f"Difference right − left, answer tokens {tokens_note}: {source}",
            caption="Red: more on the right trace, blue: more on the left." + warning,
            scale=Scale.of(difference, "difference (right − left)", symmetric=True),
            style=diverging,
        )
    )
    distributions = []
    for trace in (first, second):
        rows = [trace.tokens.answer_row(k) for k in chosen]
        attention = trace.attention_rows(rows).mean(axis=2)  # [L, H, T]
        geometry = trace.image
        distributions.append(
            np.stack(
                [
                    np.nan_to_num(
                        analysis.spread(
                            layer_rows.mean(axis=0), geometry.token_patches, geometry.num_patches
                        )
                    )
                    for layer_rows in attention
                ]
            )
        )
    figures.append(
        chart_figure(
            charts.layer_divergence(analysis.layer_divergence(*distributions)),
            f"compare-{text.short_id(first.trace_id)}-{text.short_id(second.trace_id)}-js",
            "Divergence of image attention per layer",
            f"Jensen-Shannon divergence (bits) between the two traces' head-averaged attention "
            f"on the image patches, answer tokens {tokens_note}.",
        )
    )
    return figures
