"""Two traces, as the Compare page draws them: maps on one scale, their difference and the
per-layer divergence of their image attention."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dashboard.components import analysis, charts, stitch, text
from dashboard.components.colormap import DIVERGING
from dashboard.components.overlay import OverlayStyle, Scale
from dashboard.figures.common import (
    COMPARE_SOURCES,
    WEIGHT,
    answer_rows,
    check_index,
    check_tokens,
    map_figure,
    map_panel,
    require_image_tokens,
)
from dashboard.figures.layout import Figure, chart_figure, picture_figure
from store import StoredTrace


def _compare_map(trace: StoredTrace, source: str, tokens: list[int], layer: int) -> np.ndarray:
    if source == "relevancy":
        row = np.asarray(trace.relevancy.llm, np.float64)[tokens].mean(axis=0)
    else:
        row = answer_rows(trace, layer, tokens).mean(axis=0)
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
        require_image_tokens(trace)
    common = min(first.tokens.answer_length, second.tokens.answer_length)
    chosen = [k for k in check_tokens(first, tokens) if k < common] or [0]
    layers = min(first.num_layers, second.num_layers)
    layer = layers - 1 if layer is None else check_index(layer, layers, "layer")
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
