"""Edge orientation for a PAG with a known causal order and no selection bias.

Start from the skeleton with every later-end mark an arrowhead (the order's
background knowledge), add v-structures (R0), then apply Zhang's (2008) rules
R1-R4 and, once the skeleton is final, the tail rules R8-R10. Rules R5-R7
only concern selection bias and are not used. With tiered background
knowledge these rules are sound and complete (Andrews, Spirtes & Cooper 2020).

Only circle marks are ever changed, so conflicting statistical evidence
cannot flip a mark back and forth: the loop always terminates.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping

import numpy as np

from methods.cleann.graph import ARROW, CIRCLE, NONE, TAIL, reset_to_order

SepSets = Mapping[tuple[int, int], frozenset[int]]


def _key(i: int, j: int) -> tuple[int, int]:
    return (i, j) if i < j else (j, i)


def orient(marks: np.ndarray, sepsets: SepSets, final: bool) -> None:
    """Re-orient ``marks`` in place from its skeleton, sepsets and the order."""
    reset_to_order(marks)
    _orient_v_structures(marks, sepsets)
    _to_fixpoint(marks, sepsets, [_rule1, _rule2, _rule3, _rule4])
    if final:  # as the reference: tails only once the arrowheads are complete
        _to_fixpoint(marks, sepsets, [_rule8, _rule9, _rule10])


def _to_fixpoint(marks: np.ndarray, sepsets: SepSets, rules: list) -> None:
    changed = True
    while changed:
        changed = False
        for rule in rules:
            changed = rule(marks, sepsets) or changed


def _orient_v_structures(marks: np.ndarray, sepsets: SepSets) -> None:
    """R0: a *-* c *-* b with a, b not adjacent and c outside sepset(a, b)  =>  a *-> c <-* b."""
    adj = marks != NONE
    pairs = [(a, b, sep) for (a, b), sep in sepsets.items() if not adj[a, b]]
    if not pairs:
        return
    first = np.array([p[0] for p in pairs])
    second = np.array([p[1] for p in pairs])
    colliders = adj[first] & adj[second]  # [pair, c]: c is a common neighbour
    for k, (_, _, sep) in enumerate(pairs):
        if sep:
            colliders[k, list(sep)] = False
    which, c = np.nonzero(colliders)
    marks[first[which], c] = ARROW
    marks[second[which], c] = ARROW


def _exists(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``out[x, z]``: some ``y`` has ``left[x, y] and right[y, z]`` (boolean matrix product)."""
    return (left.astype(np.float32) @ right.astype(np.float32)) > 0


def _rule1(marks: np.ndarray, _: SepSets) -> bool:
    """a *-> b o-* c, a and c not adjacent  =>  b --> c."""
    n = marks.shape[0]
    nonadj = (marks == NONE) & ~np.eye(n, dtype=bool)  # nonadj[a, c], a != c
    # hit[c, b]: circle at b on c-b, and some a *-> b with a, c not adjacent
    hit = (marks == CIRCLE) & _exists(nonadj.T, marks == ARROW)
    if not hit.any():
        return False
    marks[hit] = TAIL
    marks[hit.T] = ARROW
    return True


def _rule2(marks: np.ndarray, _: SepSets) -> bool:
    """a --> b *-> c or a *-> b --> c, and a *-o c  =>  a *-> c."""
    arrow = marks == ARROW
    directed = arrow & (marks.T == TAIL)  # directed[x, y]: x --> y
    hit = (marks == CIRCLE) & (_exists(directed, arrow) | _exists(arrow, directed))
    if not hit.any():
        return False
    marks[hit] = ARROW
    return True


def _rule3(marks: np.ndarray, _: SepSets) -> bool:
    """a *-> b <-* c, a *-o d o-* c, a, c not adjacent, d *-o b  =>  d *-> b."""
    adj = marks != NONE
    changed = False
    for d, b in zip(*np.nonzero(marks == CIRCLE), strict=True):
        cand = np.flatnonzero((marks[:, b] == ARROW) & (marks[:, d] == CIRCLE))
        cand = cand[(cand != d) & (cand != b)]
        if len(cand) < 2:
            continue
        sub = adj[np.ix_(cand, cand)]
        if np.any(~sub[np.triu_indices(len(cand), k=1)]):
            marks[d, b] = ARROW
            changed = True
    return changed


def _rule4(marks: np.ndarray, sepsets: SepSets) -> bool:
    """Discriminating path <t, ..., a, b, c> for b with b o-* c."""
    adj = marks != NONE
    changed = False
    for c, b in zip(*np.nonzero(marks == CIRCLE), strict=True):
        if marks[c, b] != CIRCLE:
            continue
        parents_c = (marks[:, c] == ARROW) & (marks[c, :] == TAIL)
        for a in np.flatnonzero(parents_c & (marks[b, :] == ARROW) & adj[b]):
            theta = _discriminating_start(marks, adj, parents_c, int(a), int(b), int(c))
            if theta is None:
                continue
            if b in sepsets.get(_key(theta, int(c)), frozenset()):
                marks[c, b] = TAIL
                marks[b, c] = ARROW
            else:
                marks[a, b] = marks[b, a] = ARROW
                marks[b, c] = marks[c, b] = ARROW
            changed = True
            break
    return changed


def _discriminating_start(
    marks: np.ndarray, adj: np.ndarray, parents_c: np.ndarray, a: int, b: int, c: int
) -> int | None:
    """Breadth-first search back from ``a`` along colliders that are parents of ``c``."""
    visited = {a, b, c}
    queue = deque([(a, b)])  # (node, its successor towards b); node is a collider parent of c
    while queue:
        x, succ = queue.popleft()
        if marks[succ, x] != ARROW:
            continue
        for t in np.flatnonzero(marks[:, x] == ARROW):
            t = int(t)
            if t in visited:
                continue
            if not adj[t, c]:
                return t
            if parents_c[t] and marks[x, t] == ARROW:
                visited.add(t)
                queue.append((t, x))
    return None


def _rule8(marks: np.ndarray, _: SepSets) -> bool:
    """a --> b --> c or a -o b --> c, and a o-> c  =>  a --> c."""
    arrow = marks == ARROW
    directed = arrow & (marks.T == TAIL)
    out_of_a = (marks.T == TAIL) & (arrow | (marks == CIRCLE))  # a --> b or a -o b
    # hit[c, a]: circle at a on a o-> c, with a path a -(>|o) b --> c
    hit = (marks == CIRCLE) & arrow.T & _exists(out_of_a, directed).T
    if not hit.any():
        return False
    marks[hit] = TAIL
    return True


def _pd_step(marks: np.ndarray, u: int) -> np.ndarray:
    """Nodes ``v`` such that edge u-v has no arrowhead at ``u`` (possibly directed step)."""
    return np.flatnonzero((marks[u, :] != NONE) & (marks[:, u] != ARROW))


def _uncovered_pd_path_exists(
    marks: np.ndarray, adj: np.ndarray, start: int, first: int, goal: int, avoid: int
) -> bool:
    """Uncovered possibly directed path start, first, ..., goal (depth-first, simple paths)."""
    if first == goal:
        return True
    stack = [(start, first, frozenset({start, first}))]
    while stack:
        prev, cur, on_path = stack.pop()
        for nxt in _pd_step(marks, cur):
            nxt = int(nxt)
            if nxt in on_path or nxt == avoid or adj[prev, nxt]:
                continue
            if nxt == goal:
                return True
            stack.append((cur, nxt, on_path | {nxt}))
    return False


def _circle_arrow_edges(marks: np.ndarray) -> Iterator[tuple[int, int]]:
    """Edges a o-> c, each checked when reached (the caller may orient earlier ones)."""
    for c, a in zip(*np.nonzero(marks == CIRCLE), strict=True):
        a, c = int(a), int(c)
        if marks[a, c] == ARROW and marks[c, a] == CIRCLE:
            yield a, c


def _rule9(marks: np.ndarray, _: SepSets) -> bool:
    """a o-> c and an uncovered p.d. path <a, b, ..., c> with b, c not adjacent  =>  a --> c."""
    adj = marks != NONE
    changed = False
    for a, c in _circle_arrow_edges(marks):
        for b in _pd_step(marks, a):
            b = int(b)
            if b == c or adj[b, c]:
                continue
            if _uncovered_pd_path_exists(marks, adj, a, b, c, avoid=-1):
                marks[c, a] = TAIL
                changed = True
                break
    return changed


def _rule10(marks: np.ndarray, _: SepSets) -> bool:
    """a o-> c, b --> c <-- d, uncovered p.d. paths a->..b and a->..d whose
    first steps mu, omega differ and are not adjacent  =>  a --> c."""
    adj = marks != NONE
    changed = False
    for a, c in _circle_arrow_edges(marks):
        parents = np.flatnonzero((marks[:, c] == ARROW) & (marks[c, :] == TAIL))
        parents = [int(p) for p in parents if p != a]
        firsts = [int(m) for m in _pd_step(marks, a) if m != c]
        if len(parents) < 2 or len(firsts) < 2:
            continue
        reach = {
            (m, p): _uncovered_pd_path_exists(marks, adj, a, m, p, avoid=c)
            for m in firsts
            for p in parents
        }
        if _r10_applies(adj, parents, firsts, reach):
            marks[c, a] = TAIL
            changed = True
    return changed


def _r10_applies(
    adj: np.ndarray, parents: list[int], firsts: list[int], reach: dict[tuple[int, int], bool]
) -> bool:
    for ib, b in enumerate(parents):
        for d in parents[ib + 1 :]:
            for mu in firsts:
                if not reach[(mu, b)]:
                    continue
                for omega in firsts:
                    if omega != mu and not adj[mu, omega] and reach[(omega, d)]:
                        return True
    return False
