"""Partial ancestral graph (PAG) representation as an edge-mark matrix.

A PAG over ``n`` nodes is stored as an ``int8`` matrix ``marks`` where
``marks[i, j]`` is the mark *at node j* on the edge between ``i`` and ``j``
(the pcalg convention). ``marks[i, j] == NONE`` iff ``i`` and ``j`` are not
adjacent. So ``i --> j`` is ``marks[i, j] == ARROW, marks[j, i] == TAIL`` and
``i o-> j`` is ``marks[i, j] == ARROW, marks[j, i] == CIRCLE``.

A plain matrix keeps the learner vectorisable and the result trivially
serialisable, which matters because results are stored as JSON.
"""

from __future__ import annotations

import numpy as np

NONE = 0
CIRCLE = 1
ARROW = 2
TAIL = 3

MARK_NAMES: dict[int, str] = {CIRCLE: "circle", ARROW: "arrow", TAIL: "tail"}


def complete_ordered_pag(n: int) -> np.ndarray:
    """Complete graph ``i o-> j`` for every ``i < j``.

    Node index is the causal order, so a later node can never be an ancestor of
    an earlier one: the mark at the later end is an arrowhead from the start.
    """
    marks = np.zeros((n, n), dtype=np.int8)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    marks[upper] = ARROW
    marks[upper.T] = CIRCLE
    return marks


def reset_to_order(marks: np.ndarray) -> None:
    """Forget all orientations except what the causal order alone implies."""
    adj = marks != NONE
    upper = np.triu(adj, k=1)
    marks[upper] = ARROW
    marks[upper.T] = CIRCLE


def delete_edge(marks: np.ndarray, i: int, j: int) -> None:
    marks[i, j] = NONE
    marks[j, i] = NONE


def list_edges(
    marks: np.ndarray, labels: list[int] | None = None
) -> list[tuple[int, int, str, str]]:
    """Edges as ``(i, j, mark_at_i, mark_at_j)`` with ``i < j`` (in label space)."""
    n = marks.shape[0]
    names = labels if labels is not None else list(range(n))
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            if marks[i, j] != NONE:
                out.append(
                    (names[i], names[j], MARK_NAMES[int(marks[j, i])], MARK_NAMES[int(marks[i, j])])
                )
    return out
