"""Possible-d-separating (PDS) trees and the conditioning sets they allow.

A node ``v`` is in PDS(root) when a path root ... v exists on which every
inner triple ``<a, b, c>`` either forms a triangle or has ``b`` as a definite
collider (Spirtes et al.). ICD limits conditioning sets to PDS nodes within a
search radius, and requires every member to be reachable from the root via
such a path lying inside the set itself; the same tree, rooted at an
explained token, is CLEANN's explanation search space.

The tree is grown the way causality-lab grows it (``create_pds_tree``), so that
conditioning sets and explanations agree with the reference: breadth first,
nodes in ascending order, and each *undirected* edge is walked at most once
(in whichever direction the search reaches it first). The tree is therefore
not every PDS path, and a node may still appear in it more than once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations, product

import numpy as np

from methods.cleann.graph import ARROW, NONE


@dataclass
class PDSTree:
    """Breadth-first PDS tree: each node's minimal distance and the tree's edges.

    ``edges`` holds ``(parent, child, depth)`` in the order they were grown; a
    node may appear under several parents. ``ancestry[v]`` lists, for every
    place ``v`` appears in the tree, the bitmask of the nodes on its tree path
    from the root (root and ``v`` excluded).
    """

    root: int
    depth: dict[int, int] = field(default_factory=dict)
    edges: list[tuple[int, int, int]] = field(default_factory=list)
    ancestry: dict[int, list[int]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # nodes in the order sets list them

    def by_radius(self) -> dict[int, list[int]]:
        """Nodes grouped by minimal distance from the root."""
        out: dict[int, list[int]] = {}
        for node, d in self.depth.items():
            out.setdefault(d, []).append(node)
        return {d: sorted(v) for d, v in sorted(out.items())}

    def is_legal(self, members: int) -> bool:
        """ICD-Sep condition: every member (bitmask) sits in the tree below members only."""
        rest = members
        while rest:
            low = rest & -rest
            v = low.bit_length() - 1
            if not any(path & ~members == 0 for path in self.ancestry.get(v, ())):
                return False
            rest ^= low
        return True


class ConditioningSets:
    """Legal conditioning sets of one size from a PDS tree, in the reference's order.

    causality-lab lists every combination of the tree's nodes (in the order its set of
    them iterates, :attr:`PDSTree.order`) that is legal and stable-sorts by the sum of
    the members' minimal distances: the order ``(distance sum, members by rank)``. Sets
    made only of the root's neighbours come first (their sum is the smallest) and are all
    legal, so they are streamed straight from ``itertools.combinations``; the rest, which
    need a deeper node
    and its tree path, are built only if the caller gets that far.
    """

    def __init__(self, tree: PDSTree, size: int) -> None:
        self.size = size
        self.depth = tree.depth
        self.paths = {v: _minimal_masks(m) for v, m in tree.ancestry.items()}
        self.rank = {v: i for i, v in enumerate(tree.order)}
        self.near = [v for v in tree.order if tree.depth[v] == 1]
        self.deeper = [v for v in tree.order if tree.depth[v] > 1]

    def within(self, pool: int) -> Iterator[tuple[int, ...]]:
        """Legal sets whose members all lie in ``pool`` (a bitmask), in reference order."""
        near = [v for v in self.near if pool >> v & 1]
        yield from combinations(near, self.size)
        deep = [v for v in self.deeper if pool >> v & 1]
        if deep:
            rank = self.rank
            rest = [
                tuple(sorted(_members(m), key=rank.__getitem__))
                for m in self._with_deeper(near, deep)
            ]
            rest.sort(key=lambda s: (sum(self.depth[v] for v in s), [rank[v] for v in s]))
            yield from rest

    def _with_deeper(self, near: list[int], deep: list[int]) -> set[int]:
        """Masks of legal sets with at least one deeper node: pick the deeper members,
        one tree path for each (its other deeper nodes must be picked too), then fill
        up with the root's neighbours."""
        near_mask = _mask(near)
        out: set[int] = set()
        for k in range(1, min(self.size, len(deep)) + 1):
            for chosen in combinations(deep, k):
                inner = _mask(chosen)
                options = [
                    [p & near_mask for p in self.paths[v] if p & ~(inner | near_mask) == 0]
                    for v in chosen
                ]
                for paths in product(*options):
                    needed = 0
                    for p in paths:
                        needed |= p
                    fill = self.size - k - needed.bit_count()
                    if fill < 0:
                        continue
                    free = [v for v in near if not needed >> v & 1]
                    for extra in combinations(free, fill):
                        out.add(inner | needed | _mask(extra))
        return out


def _mask(nodes: Iterable[int]) -> int:
    out = 0
    for v in nodes:
        out |= 1 << v
    return out


def _minimal_masks(masks: list[int]) -> list[int]:
    """Drop paths that contain another path of the same node (they never decide legality)."""
    uniq = sorted(set(masks), key=int.bit_count)
    kept: list[int] = []
    for m in uniq:
        if not any(k & ~m == 0 for k in kept):
            kept.append(m)
    return kept


def _members(mask: int) -> tuple[int, ...]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return tuple(out)


def build_pds_tree(
    marks: np.ndarray,
    root: int,
    max_depth: int,
    allowed: np.ndarray | None = None,
    labels: Sequence[int] | None = None,
) -> PDSTree:
    """PDS tree rooted at ``root`` up to ``max_depth`` edges, over ``allowed`` nodes.

    A triple ``<prev, cur, nxt>`` may continue a path when ``prev`` and ``nxt``
    are adjacent or ``cur`` is a definite collider on it. Each undirected edge
    of the skeleton (restricted to ``allowed``) is used once; the root's edges
    only to leave it. Neighbours are visited in ascending order, or, given the
    nodes' ``labels``, in the order causality-lab's sets of those labels iterate.
    """
    adjacent = marks != NONE
    free = adjacent.copy()
    if allowed is not None:
        free &= allowed[:, None] & allowed[None, :]
    visit = _set_order(labels, allowed, len(marks))
    tree = PDSTree(root)
    first = visit(root, free[root])
    free[root, :] = False
    free[:, root] = False
    found = list(first)
    queue: deque[tuple[int, int, int, int]] = deque()  # (prev, cur, depth, path mask of cur)
    for v in first:
        _add(tree, root, v, 1, 0)
        queue.append((root, v, 1, 0))
    while queue:
        prev, cur, d, path = queue.popleft()
        if d >= max_depth:
            continue
        collider_in = marks[prev, cur] == ARROW
        below = path | (1 << cur)
        for nxt in visit(cur, free[cur]):
            if nxt == prev:
                continue
            if not (adjacent[prev, nxt] or (collider_in and marks[nxt, cur] == ARROW)):
                continue
            free[cur, nxt] = free[nxt, cur] = False
            _add(tree, cur, nxt, d + 1, below)
            queue.append((cur, nxt, d + 1, below))
            found.append(nxt)
    tree.order = _listed(found, labels)
    return tree


def _set_order(
    labels: Sequence[int] | None, allowed: np.ndarray | None, n: int
) -> Callable[[int, np.ndarray], list[int]]:
    """``visit(node, mask)``: the nodes of ``mask`` in neighbour order (see build_pds_tree).

    causality-lab walks ``set(nodes) - {node}``; CPython iterates a set of integers in an
    order fixed by their values and the set's history, so building the same set gives it.
    """
    if labels is None:
        return lambda node, mask: [int(v) for v in np.flatnonzero(mask)]
    ok = range(n) if allowed is None else np.flatnonzero(allowed).tolist()
    everyone = {int(labels[v]) for v in ok}
    index = {int(label): i for i, label in enumerate(labels)}
    return lambda node, mask: [
        index[x] for x in everyone.copy() - {int(labels[node])} if mask[index[x]]
    ]


def _listed(found: list[int], labels: Sequence[int] | None) -> list[int]:
    """Distinct tree nodes in the order ``set(found)`` iterates (ascending without labels)."""
    if labels is None:
        return sorted(set(found))
    index = {int(labels[v]): v for v in found}
    return [index[x] for x in {int(labels[v]) for v in found}]


def _add(tree: PDSTree, parent: int, child: int, depth: int, path: int) -> None:
    tree.depth.setdefault(child, depth)
    tree.edges.append((parent, child, depth))
    tree.ancestry.setdefault(child, []).append(path)
