"""Iterative causal discovery (ICD) with a known causal order.

Nodes are indexed in causal order (for tokens: their position), so node ``b``
can never be an ancestor of an earlier node ``a``. ICD (Rohekar et al., 2021)
grows the conditioning-set size ``r`` and, at each ``r``, only tries sets
drawn from the PDS tree of the later node within radius ``r`` whose members
are possible ancestors of the tested pair. Rooting the search at the later
node is enough: by the ordered local Markov property of ancestral graphs, a
non-adjacent pair is separated by the later node's collider-connected
ancestors. The graph after step ``r`` is a valid (r-representing) PAG, and
the loop stops when no edge has a legal set of the next size.

The CI test is any ``(i, j, cond) -> p`` callable, so exact d-separation can
be injected to verify the learner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.causal.ci_test import CITest
from engine.causal.graph import NONE, complete_ordered_pag, delete_edge, possible_ancestors
from engine.causal.orient import orient
from engine.causal.pds import LegalSets, build_pds_tree


@dataclass
class LearnedPAG:
    """Result of structure learning.

    ``max_p[(i, j)]`` (``i < j``) is the largest p-value seen for the pair over
    all tested conditioning sets: above ``alpha`` means it was separated.
    """

    marks: np.ndarray
    sepsets: dict[tuple[int, int], frozenset[int]] = field(default_factory=dict)
    max_p: dict[tuple[int, int], float] = field(default_factory=dict)


class _Recorder:
    """Wraps a CI test to keep the largest p-value per pair."""

    def __init__(self, test: CITest, out: dict[tuple[int, int], float]) -> None:
        self.test = test
        self.out = out

    def __call__(self, i: int, j: int, cond: tuple[int, ...]) -> float:
        p = float(self.test(i, j, cond))
        key = (i, j) if i < j else (j, i)
        if p > self.out.get(key, -1.0):
            self.out[key] = p
        return p


def learn_ordered_pag(
    n: int,
    ci_test: CITest,
    alpha: float,
    max_cond_size: int | None = None,
    ancestor_pruning: bool = True,
) -> LearnedPAG:
    """Learn a PAG over nodes ``0..n-1`` (index = causal order).

    ``alpha``: a pair is independent when the test's p-value exceeds it.
    ``max_cond_size``: optional cap on ``r`` that bounds run time on dense graphs
    (the result is then an r-representing PAG rather than the complete one).
    ``ancestor_pruning``: ICD's condition that every conditioning node be a
    possible ancestor of the pair *in the current PAG*. It saves tests and is
    exact with a perfect oracle, but with noisy tests a spurious arrowhead can
    hide a true separating set (extra edges). With False, the known order
    alone decides who may be an ancestor (earlier nodes), which is sound too.
    """
    result = LearnedPAG(marks=complete_ordered_pag(n))
    test = _Recorder(ci_test, result.max_p)
    marks = result.marks

    for b in range(1, n):
        for a in range(b):
            if test(a, b, ()) > alpha:
                delete_edge(marks, a, b)
                result.sepsets[(a, b)] = frozenset()
    orient(marks, result.sepsets, final=False)

    limit = n - 2 if max_cond_size is None else min(max_cond_size, n - 2)
    for r in range(1, limit + 1):
        anc = possible_ancestors(marks) if ancestor_pruning else np.ones((n, n), dtype=bool)
        found_legal_set = False
        for b in range(r + 1, n):
            found_legal_set |= _prune_into(marks, result, test, anc, b, r, alpha)
        if not found_legal_set:
            break
        orient(marks, result.sepsets, final=False)

    orient(marks, result.sepsets, final=True)
    return result


def _prune_into(
    marks: np.ndarray,
    result: LearnedPAG,
    test: _Recorder,
    anc: np.ndarray,
    b: int,
    r: int,
    alpha: float,
) -> bool:
    """Test edges a-b (a < b) with size-``r`` sets from b's PDS tree; True if any set was legal."""
    earlier = np.flatnonzero(marks[:b, b] != NONE)
    if len(earlier) == 0:
        return False
    allowed = np.zeros(marks.shape[0], dtype=bool)
    allowed[: b + 1] = True
    tree = build_pds_tree(marks, b, max_depth=r, allowed=allowed)
    if len(tree.depth) < r + 1:  # need r conditioning nodes besides the tested one
        return False
    # only nodes that are possible ancestors of b or of some tested a can condition
    useful = anc[:, b] | anc[:, earlier].any(axis=1)
    subsets = LegalSets(marks, tree, r, candidates=useful)
    any_legal = False
    for a in earlier:
        a = int(a)
        ok = anc[:, a] | anc[:, b]
        for cond in subsets:
            if a in cond or not all(ok[z] for z in cond):
                continue
            any_legal = True
            if test(a, b, cond) > alpha:
                delete_edge(marks, a, b)
                result.sepsets[(a, b)] = frozenset(cond)
                break
    return any_legal
