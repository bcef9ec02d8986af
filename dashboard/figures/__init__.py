"""Figures of stored traces, exportable as PNG and SVG at print resolution, without Streamlit.

A notebook, the ``lvlm-interpret report`` command and the dashboard's export buttons call
the same builders::

    from store import open_store
    from dashboard import figures

    with open_store("traces") as store, store.open(trace_id) as trace:
        fig = figures.relevancy_figure(trace, tokens=[0], mode="llm")
        fig.save("relevancy.svg")            # vector title, legend and caption
        open("relevancy.png", "wb").write(fig.png(scale=3))  # 288 dpi

Every builder returns a :class:`Figure` (name, title, caption, kind, ``png()``, ``svg()``,
``data_url()``, ``save()``) and raises :class:`ValueError` with one line when the trace
cannot answer the request.
"""

from dashboard.figures.causal import causal_figures
from dashboard.figures.common import (
    COMPARE_SOURCES,
    SCORE,
    WEIGHT,
    answer_labels,
    best_layer,
    check_tokens,
    map_figure,
)
from dashboard.figures.compare import compare_figures
from dashboard.figures.faithfulness import curves_figure, evidence_figure, stored_map_figure
from dashboard.figures.layout import (
    DEFAULT_SCALE,
    Figure,
    Panel,
    chart_figure,
    check_scale,
    picture_figure,
)
from dashboard.figures.trace_charts import (
    head_share_chart,
    probability_chart,
    share_matrix_figure,
    text_relevancy_chart,
    text_to_image_figures,
)
from dashboard.figures.trace_maps import (
    attention_figure,
    cross_attention_figure,
    image_figure,
    relevancy_figure,
    relevancy_gallery,
    relevancy_maps,
    vision_figure,
)

__all__ = [
    "COMPARE_SOURCES",
    "DEFAULT_SCALE",
    "SCORE",
    "WEIGHT",
    "Figure",
    "Panel",
    "answer_labels",
    "attention_figure",
    "best_layer",
    "causal_figures",
    "chart_figure",
    "check_scale",
    "check_tokens",
    "compare_figures",
    "cross_attention_figure",
    "curves_figure",
    "evidence_figure",
    "head_share_chart",
    "image_figure",
    "map_figure",
    "picture_figure",
    "probability_chart",
    "relevancy_figure",
    "relevancy_gallery",
    "relevancy_maps",
    "share_matrix_figure",
    "stored_map_figure",
    "text_relevancy_chart",
    "text_to_image_figures",
    "vision_figure",
]
