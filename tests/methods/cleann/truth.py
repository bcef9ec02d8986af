"""Ground truth for testing the causal learner, computed independently of it.

Random DAGs with hidden nodes, d-separation (Koller & Friedman's reachable
algorithm), a perfect CI oracle over the observed nodes, the true MAG
skeleton by brute force over separating sets, and the true PAG under the
known order by brute-force enumeration of every Markov-equivalent MAG.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import chain, combinations, product

import numpy as np

from methods.cleann.graph import ARROW, CIRCLE, NONE, TAIL


def random_dag(m: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """``adj[i, j]`` True means i -> j; index order is a topological order."""
    return np.triu(rng.random((m, m)) < p, k=1)


class DSep:
    """d-separation queries on one DAG (Koller & Friedman's reachable algorithm)."""

    def __init__(self, adj: np.ndarray) -> None:
        self.parents = [[int(p) for p in np.flatnonzero(adj[:, v])] for v in range(len(adj))]
        self.children = [[int(c) for c in np.flatnonzero(adj[v])] for v in range(len(adj))]

    def __call__(self, x: int, y: int, z: set[int]) -> bool:
        anc_z = set(z)
        stack = list(z)
        while stack:
            for p in self.parents[stack.pop()]:
                if p not in anc_z:
                    anc_z.add(p)
                    stack.append(p)
        queue = deque([(x, True)])  # (node, arrived from a child, i.e. travelling up)
        seen = set(queue)
        while queue:
            v, up = queue.popleft()
            if v == y:
                return False
            nxt = []
            if up and v not in z:
                nxt += [(p, True) for p in self.parents[v]]
                nxt += [(c, False) for c in self.children[v]]
            elif not up:
                if v not in z:
                    nxt += [(c, False) for c in self.children[v]]
                if v in anc_z:
                    nxt += [(p, True) for p in self.parents[v]]
            for state in nxt:
                if state not in seen:
                    seen.add(state)
                    queue.append(state)
        return True


def ancestors(adj: np.ndarray) -> np.ndarray:
    """``anc[a, b]``: a directed path a -> ... -> b exists (a != b)."""
    reach = adj.astype(bool).copy()
    for k in range(len(adj)):
        reach |= reach[:, [k]] & reach[[k], :]
    return reach


@dataclass
class LatentModel:
    """A DAG plus which of its nodes are observed (in topological order)."""

    adj: np.ndarray
    observed: list[int]

    def __post_init__(self) -> None:
        self._dsep = DSep(self.adj)

    def oracle(self, i: int, j: int, cond: tuple[int, ...]) -> float:
        """Perfect CI test over observed indices: p = 1 if d-separated else 0."""
        z = {self.observed[c] for c in cond}
        return 1.0 if self._dsep(self.observed[i], self.observed[j], z) else 0.0

    def separable(self, i: int, j: int) -> bool:
        others = [k for k in range(len(self.observed)) if k not in (i, j)]
        subsets = chain.from_iterable(combinations(others, s) for s in range(len(others) + 1))
        return any(self.oracle(i, j, s) == 1.0 for s in subsets)

    def mag_skeleton(self) -> np.ndarray:
        """Brute force: adjacent iff no subset of the other observed nodes separates."""
        n = len(self.observed)
        adj = np.zeros((n, n), dtype=bool)
        for i, j in combinations(range(n), 2):
            adj[i, j] = adj[j, i] = not self.separable(i, j)
        return adj

    def mag_skeleton_by_ancestors(self) -> np.ndarray:
        """Adjacent iff not separated by their observed ancestors (MAG pairwise Markov)."""
        anc = ancestors(self.adj)
        obs = self.observed
        n = len(obs)
        adj = np.zeros((n, n), dtype=bool)
        for i, j in combinations(range(n), 2):
            cond = tuple(
                k
                for k in range(n)
                if k not in (i, j) and (anc[obs[k], obs[i]] or anc[obs[k], obs[j]])
            )
            adj[i, j] = adj[j, i] = self.oracle(i, j, cond) == 0.0
        return adj

    def mag_marks(self, skeleton: np.ndarray) -> np.ndarray:
        """True MAG: arrowhead at the later node; tail at the earlier iff it is an ancestor."""
        anc = ancestors(self.adj)
        marks = np.zeros(skeleton.shape, dtype=np.int8)
        for i, j in zip(*np.nonzero(np.triu(skeleton, 1)), strict=True):
            marks[i, j] = ARROW
            marks[j, i] = TAIL if anc[self.observed[i], self.observed[j]] else ARROW
        return marks


def _mag_as_dag(marks: np.ndarray) -> np.ndarray:
    """Replace every i <-> j by a hidden common parent so d-separation gives m-separation."""
    n = marks.shape[0]
    bidirected = [
        (i, j)
        for i, j in zip(*np.nonzero(np.triu(marks != NONE, 1)), strict=True)
        if marks[j, i] == ARROW
    ]
    adj = np.zeros((n + len(bidirected), n + len(bidirected)), dtype=bool)
    for i, j in zip(*np.nonzero(np.triu(marks != NONE, 1)), strict=True):
        if marks[j, i] == TAIL:
            adj[i, j] = True
    for k, (i, j) in enumerate(bidirected):
        adj[n + k, i] = adj[n + k, j] = True
    return adj


def true_pag(model: LatentModel) -> np.ndarray:
    """PAG under the known order, by enumerating all Markov-equivalent MAGs."""
    skeleton = model.mag_skeleton()
    n = skeleton.shape[0]
    edges = list(zip(*np.nonzero(np.triu(skeleton, 1)), strict=True))
    statements = [
        (i, j, s)
        for i, j in combinations(range(n), 2)
        for size in range(n - 1)
        for s in combinations([k for k in range(n) if k not in (i, j)], size)
    ]
    truth = [model.oracle(i, j, s) == 1.0 for i, j, s in statements]
    mag = model.mag_marks(skeleton)
    triples = [
        (a, c, b)
        for c in range(n)
        for a, b in combinations(np.flatnonzero(skeleton[c]), 2)
        if not skeleton[a, b]
    ]
    colliders = [mag[a, c] == ARROW and mag[b, c] == ARROW for a, c, b in triples]
    members = []
    for choice in product((TAIL, ARROW), repeat=len(edges)):
        marks = np.zeros((n, n), dtype=np.int8)
        for (i, j), mark in zip(edges, choice, strict=True):
            marks[i, j], marks[j, i] = ARROW, mark
        directed = np.zeros((n, n), dtype=bool)
        for (i, j), mark in zip(edges, choice, strict=True):
            directed[i, j] = mark == TAIL
        anc = ancestors(directed)
        if any(mark == ARROW and anc[i, j] for (i, j), mark in zip(edges, choice, strict=True)):
            continue  # almost directed cycle: not ancestral
        # Necessary for Markov equivalence: the same unshielded colliders.
        if any(
            (marks[a, c] == ARROW and marks[b, c] == ARROW) != col
            for (a, c, b), col in zip(triples, colliders, strict=True)
        ):
            continue
        dsep = DSep(_mag_as_dag(marks))
        if all(dsep(i, j, set(s)) == t for (i, j, s), t in zip(statements, truth, strict=True)):
            members.append(choice)
    assert members, "the true MAG must be in its own equivalence class"
    pag = np.zeros((n, n), dtype=np.int8)
    for e, (i, j) in enumerate(edges):
        seen = {m[e] for m in members}
        pag[i, j] = ARROW
        pag[j, i] = seen.pop() if len(seen) == 1 else CIRCLE
    return pag


def random_latent_model(
    rng: np.random.Generator, n_observed: int, n_latent: int, p: float
) -> LatentModel:
    """DAG whose hidden nodes each have at least two children (real confounders)."""
    m = n_observed + n_latent
    while True:
        adj = random_dag(m, p, rng)
        hidden = [v for v in rng.permutation(m) if adj[v].sum() >= 2][:n_latent]
        if len(hidden) == n_latent:
            observed = sorted(set(range(m)) - {int(h) for h in hidden})
            return LatentModel(adj, observed)


def sem_mixing(model: LatentModel, rng: np.random.Generator) -> np.ndarray:
    """``X = M e`` for a linear SEM on the DAG with unit-variance nodes and unit noise.

    Edge weights are drawn as ±U(0.5, 1.5) and each node is then rescaled to unit
    variance, so no variable drowns its descendants' other causes (which would
    make dependencies nearly invisible).
    """
    m = len(model.adj)
    mixing = np.zeros((m, m))
    for v in range(m):
        parents = np.flatnonzero(model.adj[:, v])
        w = rng.uniform(0.5, 1.5, len(parents)) * rng.choice([-1.0, 1.0], len(parents))
        row = w @ mixing[parents] if len(parents) else np.zeros(m)
        row[v] = 1.0
        mixing[v] = row / np.linalg.norm(row)
    return mixing


def gaussian_correlation(
    model: LatentModel, rng: np.random.Generator, n_samples: int | None = None
) -> np.ndarray:
    """Observed correlation of a linear-Gaussian SEM (exact, or from ``n_samples`` draws)."""
    mixing = sem_mixing(model, rng)
    if n_samples is None:
        cov = mixing @ mixing.T
    else:
        x = mixing @ rng.standard_normal((len(mixing), n_samples))
        cov = np.cov(x)
    cov = cov[np.ix_(model.observed, model.observed)]
    sd = np.sqrt(np.diag(cov))
    return cov / np.outer(sd, sd)


def sem_attention(model: LatentModel, rng: np.random.Generator) -> np.ndarray:
    """A lower-triangular "attention" matrix whose A Aᵀ is a SEM covariance over all nodes."""
    return sem_mixing(model, rng)
