"""Possible-d-separating (PDS) trees and the conditioning sets they allow.

A node ``v`` is in PDS(root) when a path root ... v exists on which every
inner triple ``<a, b, c>`` either forms a triangle or has ``b`` as a definite
collider (Spirtes et al.). ICD limits conditioning sets to PDS nodes within a
search radius, and requires every member to be reachable from the root via
such a path lying inside the set itself; the same tree, rooted at an
explained token, is CLEANN's explanation search space.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from engine.causal.graph import ARROW, NONE


@dataclass
class PDSTree:
    """Breadth-first PDS tree: each node's minimal distance and the tree's edges.

    ``edges`` holds ``(parent, child, depth)``; a node may appear under several
    parents because the PDS condition depends on the path taken to reach it.
    """

    root: int
    depth: dict[int, int] = field(default_factory=dict)
    edges: list[tuple[int, int, int]] = field(default_factory=list)

    def by_radius(self) -> dict[int, list[int]]:
        """Nodes grouped by minimal distance from the root."""
        out: dict[int, list[int]] = {}
        for node, d in self.depth.items():
            out.setdefault(d, []).append(node)
        return {d: sorted(v) for d, v in sorted(out.items())}


def _continues(marks: np.ndarray, prev: int, cur: int, nxt: int) -> bool:
    """``<prev, cur, nxt>`` may lie on a PDS path: a triangle or a definite collider."""
    return bool(
        marks[prev, nxt] != NONE or (marks[prev, cur] == ARROW and marks[nxt, cur] == ARROW)
    )


def build_pds_tree(
    marks: np.ndarray, root: int, max_depth: int, allowed: np.ndarray | None = None
) -> PDSTree:
    """PDS tree rooted at ``root`` up to ``max_depth`` edges, over ``allowed`` nodes.

    Search states are directed edges ``(prev, cur)``, each expanded once, so
    the cost is linear in the number of edges.
    """
    n = marks.shape[0]
    ok = np.ones(n, dtype=bool) if allowed is None else allowed.copy()
    ok[root] = False
    adj = (marks != NONE) & ok[None, :]
    tree = PDSTree(root)
    if max_depth < 1:
        return tree
    queue: deque[tuple[int, int, int]] = deque()
    seen: set[tuple[int, int]] = set()
    for v in np.flatnonzero(adj[root]):
        v = int(v)
        seen.add((root, v))
        tree.depth[v] = 1
        tree.edges.append((root, v, 1))
        queue.append((root, v, 1))
    while queue:
        prev, cur, d = queue.popleft()
        if d >= max_depth:
            continue
        for nxt in np.flatnonzero(adj[cur]):
            nxt = int(nxt)
            if nxt == prev or (cur, nxt) in seen or not _continues(marks, prev, cur, nxt):
                continue
            seen.add((cur, nxt))
            tree.depth.setdefault(nxt, d + 1)
            tree.edges.append((cur, nxt, d + 1))
            queue.append((cur, nxt, d + 1))
    return tree


def reachable_within(marks: np.ndarray, root: int, subset: Iterable[int]) -> bool:
    """ICD-Sep condition: every member reachable from ``root`` by a PDS path inside the set."""
    members = list(subset)
    queue = deque((root, v) for v in members if marks[root, v] != NONE)
    seen = set(queue)
    reached = {v for _, v in queue}
    while queue and len(reached) < len(members):
        prev, cur = queue.popleft()
        for nxt in members:
            if nxt in (prev, cur) or marks[cur, nxt] == NONE or (cur, nxt) in seen:
                continue
            if _continues(marks, prev, cur, nxt):
                seen.add((cur, nxt))
                reached.add(nxt)
                queue.append((cur, nxt))
    return len(reached) == len(members)


class LegalSets:
    """Size-``size`` conditioning sets from ``tree``, nearest first, generated lazily.

    Sets are combinations of the tree's nodes ordered by PDS distance, so the
    nearest candidates come first. Generation is lazy and memoised because most
    tested edges stop at an early set: enumerating every combination up front
    dominated run time on dense graphs.
    """

    def __init__(
        self, marks: np.ndarray, tree: PDSTree, size: int, candidates: np.ndarray | None = None
    ) -> None:
        nodes = sorted(
            (v for v in tree.depth if candidates is None or candidates[v]),
            key=lambda v: (tree.depth[v], v),
        )
        self._source = (
            combo
            for combo in combinations(nodes, size)
            if all(tree.depth[v] == 1 for v in combo) or reachable_within(marks, tree.root, combo)
        )
        self._seen: list[tuple[int, ...]] = []

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        i = 0
        while True:
            if i == len(self._seen):
                nxt = next(self._source, None)
                if nxt is None:
                    return
                self._seen.append(nxt)
            yield self._seen[i]
            i += 1
