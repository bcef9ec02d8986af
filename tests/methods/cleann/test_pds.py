"""PDS trees and their conditioning sets against a brute-force listing.

The reference lists every combination of the tree's nodes (ascending), keeps the legal
ones (each member reachable from the root through tree nodes inside the set) and
stable-sorts them by the sum of minimal depths; ConditioningSets must give exactly that
list, also when restricted to a pool of allowed nodes.
"""

from itertools import combinations

import numpy as np

from methods.cleann.graph import ARROW, CIRCLE, NONE
from methods.cleann.pds import ConditioningSets, build_pds_tree


def _random_pag(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    marks = np.zeros((n, n), dtype=np.int8)
    for i, j in combinations(range(n), 2):
        if rng.random() < p:
            marks[i, j] = ARROW
            marks[j, i] = ARROW if rng.random() < 0.4 else CIRCLE
    return marks


def _brute_force(tree, size: int, pool: set[int]) -> list[tuple[int, ...]]:
    nodes = sorted(v for v in tree.depth if v in pool)
    legal = [
        combo for combo in combinations(nodes, size) if tree.is_legal(sum(1 << v for v in combo))
    ]
    return sorted(legal, key=lambda s: sum(tree.depth[v] for v in s))  # stable


def test_conditioning_sets_match_the_reference_listing():
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(100):
        n = int(rng.integers(6, 13))
        marks = _random_pag(rng, n, float(rng.uniform(0.2, 0.6)))
        root = n - 1
        for size in (2, 3):
            tree = build_pds_tree(marks, root, max_depth=size)
            pool = {v for v in range(n) if rng.random() < 0.8}
            mask = sum(1 << v for v in pool)
            got = list(ConditioningSets(tree, size).within(mask))
            assert got == _brute_force(tree, size, pool)
            checked += len(got)
    assert checked > 600


def test_tree_uses_each_undirected_edge_once():
    # 0 - 1 - 2 triangle with the root 3 adjacent to 1 and 2: from 1 the search reaches 2
    # (triangle 3, 1, 2), so 2 cannot come back to 1 later, and 0 hangs under 1 only if
    # <3, 1, 0> is a triangle or a collider; here 1 is a collider (3 *-> 1 <-* 0).
    marks = np.full((4, 4), NONE, dtype=np.int8)
    for i, j in [(0, 1), (1, 2), (1, 3), (2, 3)]:
        marks[i, j] = ARROW
        marks[j, i] = CIRCLE
    marks[3, 1] = ARROW  # 3 *-> 1 <-* 0
    tree = build_pds_tree(marks, 3, max_depth=3)
    assert tree.edges == [(3, 1, 1), (3, 2, 1), (1, 0, 2), (1, 2, 2)]
    assert tree.depth == {1: 1, 2: 1, 0: 2}
