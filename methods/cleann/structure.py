"""Iterative causal discovery (ICD) with a known causal order.

Nodes are indexed in causal order (for tokens: their position), so node ``b``
can never be an ancestor of an earlier node ``a``. ICD (Rohekar et al., 2021)
grows the conditioning-set size ``r``; the graph after step ``r`` is a valid
(r-representing) PAG.

The search is the one of causality-lab's ``LearnStructOrderedICD``
(``learn_structure_global``), which the CLEANN reference and the seed tool
use, so that both learn the same PAG from the same test results:

* ``r = 0``: every pair, unconditionally.
* ``r = 1``: edge ``a - b`` (``a < b``) is tested given each *current* earlier
  neighbour of ``b``; no possible-ancestor condition at this step.
* ``r >= 2``: sets of ``r`` nodes from the PDS tree of ``b`` (radius ``r``,
  nodes up to ``b``), legal and nearest first (:class:`ConditioningSets`),
  whose members are all possible ancestors of ``a`` or ``b`` in the current
  graph. An edge for which no legal set exists at some ``r`` is final: it is
  not tested at larger ``r``.
* The graph is re-oriented after each ``r`` (rules R0-R4), and once at the end
  with R0-R4 and then the tail rules R8-R10.

Where causality-lab iterates Python sets of token positions, the order of the
visits decides which of several separating sets removes an edge first, and which
neighbour grows a PDS tree first. When the nodes' ``labels`` are given, those
orders are rebuilt (here: which pair and which conditioning node come first at
``r = 1``; :func:`build_pds_tree` for the trees and their sets): CPython
iterates a set of integers in an order fixed by their values and the set's
history (not by the hash seed), so building the same sets gives the same order.
Without labels every visit is in ascending order and the result does not depend
on where the tokens sit; causality-lab made to iterate in ascending order gives
exactly that result.

The CI test is any ``(i, j, cond) -> p`` callable, so exact d-separation can
be injected to verify the learner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from methods.cleann.ci_test import CITest
from methods.cleann.graph import ARROW, NONE, TAIL, complete_ordered_pag, delete_edge
from methods.cleann.orient import orient
from methods.cleann.pds import ConditioningSets, build_pds_tree


@dataclass
class LearnedPAG:
    """Result of structure learning.

    ``max_p[(i, j)]`` (``i < j``) is the largest p-value seen for the pair over
    all tested conditioning sets: above ``alpha`` means it was separated.
    """

    marks: np.ndarray
    sepsets: dict[tuple[int, int], frozenset[int]] = field(default_factory=dict)
    max_p: dict[tuple[int, int], float] = field(default_factory=dict)


def learn_ordered_pag(
    n: int,
    ci_test: CITest,
    alpha: float,
    max_cond_size: int | None = None,
    ancestor_pruning: bool = True,
    labels: Sequence[int] | None = None,
) -> LearnedPAG:
    """Learn a PAG over nodes ``0..n-1`` (index = causal order).

    ``alpha``: a pair is independent when the test's p-value exceeds it.
    ``max_cond_size``: optional cap on ``r`` that bounds run time on dense graphs
    (the result is then an r-representing PAG rather than the complete one).
    ``ancestor_pruning``: ICD's condition (for ``r >= 2``) that every conditioning
    node be a possible ancestor of the pair *in the current PAG*; with False the
    known order alone decides who may be an ancestor (earlier nodes).
    ``labels``: the nodes' token positions (ascending); when given, the ``r = 1``
    step visits pairs and conditioning nodes in causality-lab's set order.
    """
    return _OrderedICD(n, ci_test, alpha, ancestor_pruning, labels).run(max_cond_size)


class _OrderedICD:
    """State of one run: the graph, separating sets and which edges are final."""

    def __init__(
        self,
        n: int,
        ci_test: CITest,
        alpha: float,
        ancestor_pruning: bool,
        labels: Sequence[int] | None,
    ) -> None:
        self.n = n
        self.labels = None if labels is None else [int(v) for v in labels]
        self.test = ci_test
        self.alpha = alpha
        self.pruning = ancestor_pruning
        self.result = LearnedPAG(marks=complete_ordered_pag(n))
        self.marks = self.result.marks
        self.done = np.zeros((n, n), dtype=bool)  # done[a, b], a < b: edge needs no more tests
        self._ancestors: list[int] | None = None  # bitmask of possible ancestors per node
        self._skeleton_changed = True  # orientation is a function of skeleton and sepsets

    def run(self, max_cond_size: int | None) -> LearnedPAG:
        n = self.n
        for b in range(1, n):
            for a in range(b):
                self._try(a, b, ())
        self._orient(final=False)
        limit = n - 2 if max_cond_size is None else min(max_cond_size, n - 2)
        if limit >= 1:
            for b in range(2, n):
                self._level_one(b)
            self._orient(final=False)
        finished = True
        for r in range(2, limit + 1):
            for b in range(r + 1, n):
                finished = self._level(b, r) and finished
            if finished:
                break
            self._orient(final=False)
        self._orient(final=True)
        return self.result

    def _try(self, a: int, b: int, cond: tuple[int, ...]) -> bool:
        """Test ``a ⊥ b | cond``; on independence remove the edge and keep ``cond``."""
        p = float(self.test(a, b, cond))
        key = (a, b)
        if p > self.result.max_p.get(key, -1.0):
            self.result.max_p[key] = p
        if not p > self.alpha:
            return False
        delete_edge(self.marks, a, b)
        self.result.sepsets[key] = frozenset(cond)
        self.done[a, b] = True
        self._ancestors = None
        self._skeleton_changed = True
        return True

    def _level_one(self, b: int) -> None:
        """``r = 1``: each earlier neighbour of ``b`` (other than ``a``) as the set."""
        for a in self._earlier(b):
            if self.done[a, b] or self.marks[a, b] == NONE:
                continue
            for z in self._conditioning_neighbours(a, b):
                if self._try(a, b, (z,)):
                    break

    def _earlier(self, b: int) -> list[int]:
        """Nodes before ``b`` in visiting order (causality-lab: ``set(order[:b])``)."""
        if self.labels is None:
            return list(range(b))
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[label] for label in set(self.labels[:b])]

    def _conditioning_neighbours(self, a: int, b: int) -> list[int]:
        """Current neighbours of ``b`` before it, except ``a``, in visiting order
        (causality-lab: ``neighbours(b) & (set(order[:b]) - {a})``)."""
        adjacent = np.flatnonzero(self.marks[:, b] != NONE)
        if self.labels is None:
            return [int(z) for z in adjacent if z < b and z != a]
        labels = self.labels
        index = {labels[int(z)]: int(z) for z in adjacent}
        pool = set(labels[:b]) - {labels[a]}
        return [index[label] for label in set(index) & pool]

    def _level(self, b: int, r: int) -> bool:
        """Edges into ``b`` with size-``r`` sets; True when none of them was left open."""
        pending = np.flatnonzero(~self.done[:b, b])
        if pending.size == 0:
            return True
        allowed = np.zeros(self.n, dtype=bool)
        allowed[: b + 1] = True
        tree = build_pds_tree(self.marks, b, max_depth=r, allowed=allowed, labels=self.labels)
        sets = ConditioningSets(tree, r)
        in_tree = sum(1 << v for v in tree.depth)
        finished = True
        for a in pending.tolist():
            self.done[a, b] = True  # stays so when no legal set exists at this r
            for members in sets.within(in_tree & ~(1 << a) & self._ancestor_pool(a, b)):
                if self._try(a, b, members):
                    break
                self.done[a, b] = False
                finished = False
        return finished

    def _ancestor_pool(self, a: int, b: int) -> int:
        """Bitmask of the nodes allowed to condition ``a - b``: possible ancestors of
        ``a`` or of ``b`` in the current graph (every node without pruning)."""
        if not self.pruning:
            return -1
        if self._ancestors is None:
            self._ancestors = _possible_ancestor_masks(self.marks)
        return self._ancestors[a] | self._ancestors[b]

    def _orient(self, final: bool) -> None:
        if not (final or self._skeleton_changed):
            return  # re-orienting an unchanged skeleton would give the same marks
        orient(self.marks, self.result.sepsets, final)
        self._ancestors = None
        self._skeleton_changed = False


def _possible_ancestor_masks(marks: np.ndarray) -> list[int]:
    """Per node, the bitmask of nodes with a possibly directed path into it.

    A step ``u -> v`` is possible when the edge has no arrowhead at ``u`` and no
    tail at ``v`` (Zhang 2008). Under the order every such step goes forward
    (later ends always carry an arrowhead), so one pass in order suffices.
    """
    step = (marks != NONE) & (marks.T != ARROW) & (marks != TAIL)  # step[u, v]
    anc: list[int] = []
    for v in range(len(marks)):
        mask = 0
        for u in np.flatnonzero(step[:v, v]):
            mask |= anc[u] | (1 << int(u))
        anc.append(mask)
    return anc
