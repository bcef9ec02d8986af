"""A CLEANN explanation as the Causal page draws it: patches per radius, the causal graph
(drawn at the figure's resolution) and the heads ranked by importance."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from dashboard.components import causal_graph, charts, explanation, maps, stitch
from dashboard.figures.common import CROP_PX, GALLERY_SIDE, figure_name, fit, source_line
from dashboard.figures.layout import Figure, Panel, chart_figure, picture_figure
from methods.cleann import CausalExplanation
from methods.cleann.trace import head_ranking
from store import StoredTrace


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
                    fit(maps.highlight(geometry, v, colours, min_side=side), side)
                    for v in stitch.stitched_views(geometry)
                ]
                return maps.side_by_side(pictures, gap=max(1, round(maps.GAP_PX * s)))

            panels.append(Panel(draw, f"{name}: {len(colours)} patches"))
        figures.append(
            picture_figure(
                figure_name(trace, "causal-patches", token, shown.head),
                f"CLEANN explanation of {where}",
                "Image patches in the explanation within each search radius (coloured by the "
                "radius they joined at), then the minimal explanation; the rest is dimmed. "
                + source_line(trace),
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
            figure_name(trace, "causal-graph", token, shown.head),
            f"Causal graph of {where}",
            f"{len(nodes)} nodes, {len(edges)} edges; numbers are token positions. "
            + source_line(trace),
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
                figure_name(trace, "causal-heads", token),
                f"Heads ranked by causal importance for answer token {token}: {label}",
                "Importance: sum of −log10 p over the image tokens in each head's explanation; "
                "the head drawn above is red. " + source_line(trace),
            )
        )
    return figures
