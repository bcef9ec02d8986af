"""What a CLEANN explanation means on a trace: patches to highlight, graph nodes, table rows.

A :class:`~methods.cleann.CausalExplanation` speaks in token positions; the views need image
patches (every patch a token reads, through the geometry's token -> patch map), token text
and the PDS distance at which each token joined the explanation. This module does that
translation once, without Streamlit, so it is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from dashboard.components import patches, stitch, text
from dashboard.components.causal_graph import (
    OTHER_COLOUR,
    TARGET_COLOUR,
    Edge,
    GraphNode,
    radius_colour,
)
from methods.cleann import CausalExplanation
from store import ImageGeometry, TokenRole, TokenTable


@dataclass(frozen=True)
class TraceView:
    """The parts of a trace an explanation is read against."""

    tokens: TokenTable
    image: ImageGeometry

    def patches(self, position: int) -> list[int]:
        """The image patches a token reads; none for text (and tokens such as row breaks)."""
        if self.tokens.roles[position] != TokenRole.IMAGE:
            return []
        mapping = self.image.token_patches
        return mapping.patches[mapping.rows == position].tolist()

    def crop(self, position: int, size: int) -> Image.Image | None:
        """What a token reads, cut from its tile: the box around all its patches."""
        read = self.patches(position)
        if not read:
            return None
        tile = int(self.image.patch_tile[read[0]])
        view = stitch.View(self.image.tiles[tile].image, tile)
        boxes = [b for p in read if (b := stitch.patch_fractions(self.image, view, p))]
        union = (
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        )
        return patches.crop(stitch.frame(self.image, view).pixels, union, size)

    def where(self, position: int) -> str:
        """A token as a table names it: its text, or the patch(es) it reads."""
        read = self.patches(position)
        if not read:
            return self.label(position)
        more = f" (+{len(read) - 1} more patches)" if len(read) > 1 else ""
        return stitch.patch_label(self.image, int(self.tokens.image_patch[position])) + more

    def label(self, position: int) -> str:
        return text.token_label(self.tokens.text[position])

    def node_label(self, position: int, target: int) -> str:
        """A graph node's text. The explained node is the query row ``P - 1 + k`` that
        *produced* answer token k, so it is named by that answer token, not by the row's own
        input token (which is the previous token)."""
        return self.label(position + 1 if position == target else position)


def radius_of(explanation: CausalExplanation) -> dict[int, int]:
    """Token position -> the PDS distance at which it entered the explanation."""
    return {
        position: radius
        for radius, members in explanation.explanation_by_radius.items()
        for position in members
    }


def patch_colours(view: TraceView, explanation: CausalExplanation, up_to: int) -> dict[int, str]:
    """Patches in the explanation at search radius ``up_to``, coloured by their distance."""
    return {
        patch: radius_colour(radius)
        for position, radius in radius_of(explanation).items()
        if radius <= up_to
        for patch in view.patches(position)
    }


def minimal_colours(view: TraceView, explanation: CausalExplanation) -> dict[int, str]:
    """Patches of the minimal explanation, coloured like the radius they came from."""
    radii = radius_of(explanation)
    return {
        patch: radius_colour(radii.get(position, 1))
        for position in explanation.minimal_explanation
        for patch in view.patches(position)
    }


def graph(
    view: TraceView, explanation: CausalExplanation, whole: bool = False, crop_size: int = 40
) -> tuple[list[GraphNode], list[Edge]]:
    """Nodes (patch crops or words) and PAG edges; by default only the explained token and
    its explanation, since the whole graph of ~50 nodes is unreadable as one picture."""
    radii = radius_of(explanation)
    keep = set(explanation.nodes) if whole else {explanation.target, *radii}
    nodes = []
    for position in sorted(keep):
        picture = view.crop(position, crop_size)
        colour = (
            TARGET_COLOUR
            if position == explanation.target
            else radius_colour(radii[position])
            if position in radii
            else OTHER_COLOUR
        )
        nodes.append(
            GraphNode(position, view.node_label(position, explanation.target), colour, picture)
        )
    edges = [
        Edge(a, b, mark_a, mark_b)
        for a, b, mark_a, mark_b in explanation.edges()
        if a in keep and b in keep
    ]
    return nodes, edges


def p_value_text(value: float | None) -> str:
    """A p-value in scientific notation: 2.8e-106 and 5e-05 stay short and distinct."""
    return "–" if value is None or not np.isfinite(value) else f"{float(value):.2e}"


def rows(view: TraceView, explanation: CausalExplanation) -> list[dict[str, object]]:
    """One table row per explanation token: where it is, its distance and its p-value."""
    minimal = set(explanation.minimal_explanation)
    out: list[dict[str, object]] = []
    for position, radius in sorted(radius_of(explanation).items(), key=lambda p: (p[1], p[0])):
        out.append(
            {
                "position": position,
                "kind": "image patch" if view.patches(position) else "text",
                "token or patch": view.where(position),
                "radius": radius,
                "minimal": position in minimal,
                "p-value": p_value_text(explanation.p_values.get(position)),
            }
        )
    return out
