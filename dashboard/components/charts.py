"""Altair chart builders. Every chart names its axes and their units.

Token text only ever reaches the browser as Vega data (drawn as SVG/canvas text, tooltips
escaped by vega-tooltip), never as HTML.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from dashboard.components.analysis import SHARE_CATEGORIES

PERCENT = alt.Axis(format="%")
LABEL_LIMIT = 400  # pixels of an axis label before Vega cuts it (its default, 180, cut words)
LEGEND = alt.Legend(labelFontSize=13, titleFontSize=13, titleLimit=400)


def head_image_bars(shares: np.ndarray, layer: int) -> alt.Chart:
    """Per-head attention on image tokens at one layer, the ranking behind the head gallery."""
    frame = pd.DataFrame({"head": np.arange(len(shares)), "share": np.asarray(shares, float)})
    return (
        alt.Chart(frame, title=f"Layer {layer}: attention on image tokens per head")
        .mark_bar()
        .encode(
            x=alt.X("head:O", title="head (index)"),
            y=alt.Y("share:Q", title="attention on image tokens (% of row)", axis=PERCENT),
            tooltip=[alt.Tooltip("head:O"), alt.Tooltip("share:Q", format=".1%")],
        )
    )


def share_matrix(shares: np.ndarray) -> alt.FacetChart:
    """Layer x head matrices of where attention goes (image / question / earlier answer)."""
    layers, heads, _ = shares.shape
    layer_idx, head_idx, cat_idx = np.meshgrid(
        np.arange(layers), np.arange(heads), np.arange(len(SHARE_CATEGORIES)), indexing="ij"
    )
    frame = pd.DataFrame(
        {
            "layer": layer_idx.ravel(),
            "head": head_idx.ravel(),
            "target": np.array(SHARE_CATEGORIES)[cat_idx.ravel()],
            "share": np.asarray(shares, float).ravel(),
        }
    )
    return (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X("head:O", title="head (index)"),
            y=alt.Y("layer:O", title="layer (index)", sort="descending"),
            color=alt.Color(
                "share:Q",
                title="share of attention (%)",
                scale=alt.Scale(domain=[0, 1], scheme="inferno"),
                legend=alt.Legend(format="%", labelFontSize=13, titleFontSize=13),
            ),
            tooltip=["layer:O", "head:O", "target:N", alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(width=220, height=220)
        .facet(column=alt.Column("target:N", title="attention on", sort=list(SHARE_CATEGORIES)))
    )


def _ranked_frame(
    labels: Sequence[str], values: np.ndarray, ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """Unique labels (prefixed by index or position) so equal texts don't merge into one bar."""
    prefixes = range(len(labels)) if ids is None else ids
    return pd.DataFrame(
        {
            "label": [f"{i}: {t}" for i, t in zip(prefixes, labels, strict=True)],
            "value": np.asarray(values, float),
        }
    )


def token_bars(
    labels: Sequence[str],
    values: np.ndarray,
    title: str,
    value_title: str,
    top: int = 25,
    ids: Sequence[int] | None = None,
    percent: bool = False,
) -> alt.Chart:
    """Horizontal bars of the ``top`` highest values, largest first, labelled by token or word.

    ``ids`` (sequence positions) prefix the labels; without them labels count from 0.
    """
    frame = _ranked_frame(labels, values, ids).nlargest(top, "value")
    label_title = "token (position: text)" if ids is not None else "item (index: text)"
    return (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            y=alt.Y(
                "label:N",
                title=label_title,
                sort="-x",
                axis=alt.Axis(labelOverlap=False, labelLimit=LABEL_LIMIT),
            ),
            x=alt.X("value:Q", title=value_title, axis=PERCENT if percent else alt.Axis()),
            tooltip=["label:N", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(height=alt.Step(18))
    )


def layer_token_heatmap(
    values: np.ndarray, labels: Sequence[str], value_title: str, ids: Sequence[int]
) -> alt.Chart:
    """[L, n] values as a layer x token heatmap, tokens in sequence order and named by their
    sequence position (``ids``), like the bar chart beside it."""
    layers, count = values.shape
    tokens = [f"{i}: {t}" for i, t in zip(ids, labels, strict=True)]
    frame = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(layers), count),
            "token": np.tile(tokens, layers),
            "value": np.asarray(values, float).ravel(),
        }
    )
    return (
        alt.Chart(frame, title="Attention to the selected patches, by layer (mean over heads)")
        .mark_rect()
        .encode(
            x=alt.X(
                "token:N",
                title="token (position: text)",
                sort=tokens,
                axis=alt.Axis(labelLimit=LABEL_LIMIT),
            ),
            y=alt.Y("layer:O", title="layer (index)", sort="descending"),
            color=alt.Color(
                "value:Q",
                title=value_title,
                scale=alt.Scale(scheme="inferno", domainMin=0),
                legend=LEGEND,
            ),
            tooltip=["layer:O", "token:N", alt.Tooltip("value:Q", format=".4f")],
        )
    )


def token_probabilities(
    labels: Sequence[str], probs: np.ndarray, selected: Sequence[int]
) -> alt.Chart:
    """Probability of each generated token; clicking bars selects answer tokens."""
    frame = _ranked_frame(labels, probs)
    frame["k"] = np.arange(len(frame))
    frame["selected"] = frame["k"].isin(list(selected))
    pick = alt.selection_point(name="token", fields=["k"], toggle=False)  # the page toggles
    return (
        alt.Chart(frame, title="Probability of each generated token")
        .mark_bar()
        .encode(
            x=alt.X("label:N", title="answer token (index: text)", sort=None),
            y=alt.Y(
                "value:Q", title="probability (%)", axis=PERCENT, scale=alt.Scale(domain=[0, 1])
            ),
            color=alt.condition(alt.datum.selected, alt.value("#d62728"), alt.value("#4c78a8")),
            tooltip=["label:N", alt.Tooltip("value:Q", title="probability", format=".1%")],
        )
        .add_params(pick)
    )


def layer_divergence(divergence: np.ndarray) -> alt.Chart:
    """Jensen-Shannon divergence between two traces' attention maps, layer by layer."""
    frame = pd.DataFrame({"layer": np.arange(len(divergence)), "js": np.asarray(divergence, float)})
    return (
        alt.Chart(frame, title="Divergence of image attention per layer")
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="layer (index)", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y(
                "js:Q", title="Jensen-Shannon divergence (bits)", scale=alt.Scale(domain=[0, 1])
            ),
            tooltip=["layer:Q", alt.Tooltip("js:Q", format=".3f")],
        )
    )


def head_importance_bars(
    ranking: Sequence[tuple[int, float]], chosen: int | None = None
) -> alt.Chart:
    """CLEANN head importance (sum of -log10 p over image tokens in the explanation),
    most important first; the head drawn above is highlighted. Untitled: the page heads it."""
    frame = pd.DataFrame(
        {
            "head": [int(h) for h, _ in ranking],
            "importance": [float(v) for _, v in ranking],
        }
    )
    frame["shown"] = frame["head"] == chosen
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("head:O", title="head (index, most important first)", sort="-y"),
            y=alt.Y("importance:Q", title="importance (sum of −log10 p over image tokens)"),
            color=alt.condition(alt.datum.shown, alt.value("#d62728"), alt.value("#4c78a8")),
            tooltip=["head:O", alt.Tooltip("importance:Q", format=".2f")],
        )
    )
