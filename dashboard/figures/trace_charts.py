"""Charts of a trace, as the Generation, Relevancy and Raw attention pages draw them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dashboard.components import analysis, charts, needs, text
from dashboard.figures.common import (
    WEIGHT,
    answer_labels,
    answer_rows,
    best_layer,
    check_index,
    check_tokens,
    figure_name,
    require_image_tokens,
    source_line,
    tokens_text,
)
from dashboard.figures.layout import Figure, chart_figure
from store import StoredTrace, TokenRole


def probability_chart(trace: StoredTrace, tokens: Sequence[int] = ()) -> Figure:
    """The Generation page's chart: probability of each generated token (``tokens`` red)."""
    chart = charts.token_probabilities(
        answer_labels(trace), np.asarray(trace.top_k.chosen_prob, np.float64), list(tokens)
    )
    return chart_figure(
        chart,
        figure_name(trace, "probabilities"),
        "Probability of each generated token",
        "The probability the model gave each token it generated (answer index: text). "
        + source_line(trace),
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
        figure_name(trace, "text-relevancy", *chosen),
        f"Relevancy of the prompt's words and the image for answer token "
        f"{tokens_text(trace, chosen)}",
        "Share of the positive LLM relevancy on each prompt word and on the image as a whole"
        + (", chat-template tokens left out. " if hide_template else ". ")
        + source_line(trace),
    )


def head_share_chart(
    trace: StoredTrace, layer: int | None = None, tokens: Sequence[int] | None = None
) -> Figure:
    """Per-head attention on image tokens at one layer (the ranking behind the head maps)."""
    require_image_tokens(trace)
    layer = best_layer(trace) if layer is None else check_index(layer, trace.num_layers, "layer")
    chosen = check_tokens(trace, tokens)
    shares = analysis.image_share(answer_rows(trace, layer, chosen), trace.tokens.image_positions)
    return chart_figure(
        charts.head_image_bars(shares, layer),
        figure_name(trace, "head-shares", f"L{layer}", *chosen),
        f"Layer {layer}: attention on image tokens per head",
        f"Answer token {tokens_text(trace, chosen)}. " + source_line(trace),
    )


def share_matrix_figure(trace: StoredTrace, tokens: Sequence[int] | None = None) -> Figure:
    """Layer x head matrices of where attention goes: image, question, earlier answer."""
    chosen = check_tokens(trace, tokens)
    shares = analysis.token_shares(trace.summaries.attention_shares, chosen)
    return chart_figure(
        charts.share_matrix(shares),
        figure_name(trace, "shares", *chosen),
        "Where attention goes, per layer and head",
        f"Share of each head's attention on the image, the question and earlier answer tokens, "
        f"for answer token {tokens_text(trace, chosen)}. " + source_line(trace),
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
    require_image_tokens(trace)
    geometry, tokens = trace.image, trace.tokens
    chosen = sorted({check_index(p, geometry.num_patches, "patch") for p in patches})
    if not chosen:
        raise ValueError("choose at least one image patch")
    layer = trace.num_layers - 1 if layer is None else check_index(layer, trace.num_layers, "layer")
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
        values = to_patches[layer, check_index(head, trace.num_heads, "head")]
    labels = [text.token_label(tokens.text[q]) for q in queries]
    where = ", ".join(str(p) for p in chosen[:8]) + (" ..." if len(chosen) > 8 else "")
    note = f"Patches {where}. " + source_line(trace)
    which = "mean of heads" if head is None else f"head {head}"
    return [
        chart_figure(
            charts.token_bars(labels, values, "", WEIGHT, ids=queries.tolist()),
            figure_name(trace, "text-to-image", f"L{layer}"),
            f"Tokens attending to the chosen patches (layer {layer}, {which})",
            note,
        ),
        chart_figure(
            charts.layer_token_heatmap(to_patches.mean(axis=1), labels, WEIGHT, queries.tolist()),
            figure_name(trace, "text-to-image-layers"),
            "Attention to the chosen patches, by layer (mean over heads)",
            note,
        ),
    ]
