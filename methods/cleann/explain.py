"""CLEANN explanation of one token from one head's attention matrix.

Pipeline (Rohekar, Gurwicz & Nisimov, NeurIPS 2023): correlation from
``A Aᵀ`` over the selected tokens, a PAG learned by ordered ICD with Fisher-z
tests, then the PDS tree rooted at the explained token. The tokens at PDS
distance ``1..max_radius`` are its explanation: the ones that could be
needed to separate it from the rest of the input.

The paper finds the *minimal* explanation by querying the model with tokens
removed; this library has no model, so it uses the graph's own test instead:
the smallest PDS-legal set, containing all of the target's neighbours (which
no set can separate from it), given which the target is independent of every
other node. If no such set is found within a budget, the whole explanation
set is returned and ``minimal_is_separating`` is False.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import numpy as np

from methods.cleann.ci_test import FisherZTest, attention_correlation
from methods.cleann.graph import list_edges
from methods.cleann.pds import PDSTree, build_pds_tree
from methods.cleann.structure import learn_ordered_pag

DEFAULT_ALPHA = 1e-5
DEFAULT_DOF = 128
DEFAULT_MAX_RADIUS = 3
DEFAULT_MINIMAL_BUDGET = 256
# "reference": visit candidates in the order causality-lab (the seed tool) iterates its
# Python sets of token positions; "ascending": by position, independent of where tokens sit.
SET_ORDERS = ("reference", "ascending")
# -log10 of the smallest positive double: caps one token's share of head importance.
_P_FLOOR = float(np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class ExplainParams:
    """Parameters a result was computed with (stored with it for reproducibility)."""

    alpha: float = DEFAULT_ALPHA
    dof: float = DEFAULT_DOF
    max_radius: int = DEFAULT_MAX_RADIUS
    max_cond_size: int | None = None
    minimal_budget: int = DEFAULT_MINIMAL_BUDGET
    ancestor_pruning: bool = True
    set_order: str = "reference"

    def validate(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.dof > 0:
            raise ValueError(f"dof must be positive, got {self.dof}")
        if self.max_radius < 1:
            raise ValueError(f"max_radius must be >= 1, got {self.max_radius}")
        if self.max_cond_size is not None and self.max_cond_size < 0:
            raise ValueError(f"max_cond_size must be >= 0 or None, got {self.max_cond_size}")
        if self.set_order not in SET_ORDERS:
            raise ValueError(f"set_order must be one of {SET_ORDERS}, got {self.set_order!r}")


@dataclass
class CausalExplanation:
    """CLEANN result for one target token and one head. Positions are token positions.

    ``explanation_by_radius[r]`` (for every ``r`` in ``1..max_radius``) holds the
    tokens whose shortest PDS path from the target has ``r`` edges; the
    explanation at search radius ``r`` is the union over ``1..r``.
    ``marks[i, j]`` is the PAG mark at ``nodes[j]`` on the edge ``nodes[i]``-``nodes[j]``
    (0 none, 1 circle, 2 arrow, 3 tail). ``pds_tree`` lists ``(parent, child, depth)``.
    ``p_values[v]`` is the largest p-value of the tests of ``v`` against the target
    during learning (below ``alpha``: never separated). ``head_importance`` sums
    ``-log10 p`` over the image tokens in the explanation.
    """

    target: int
    nodes: list[int]
    marks: np.ndarray
    pds_tree: list[tuple[int, int, int]]
    explanation_by_radius: dict[int, list[int]]
    minimal_explanation: list[int]
    minimal_is_separating: bool
    p_values: dict[int, float]
    head_importance: float
    params: ExplainParams
    n_ci_tests: int = 0
    head: int | None = None

    @property
    def explanation(self) -> list[int]:
        """All explanation tokens within ``max_radius``."""
        return sorted(v for vs in self.explanation_by_radius.values() for v in vs)

    def edges(self) -> list[tuple[int, int, str, str]]:
        """PAG edges as ``(pos_i, pos_j, mark_at_i, mark_at_j)`` with ``pos_i < pos_j``."""
        return list_edges(self.marks, self.nodes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (plain lists, ints, floats, str keys)."""
        return {
            "target": self.target,
            "head": self.head,
            "nodes": list(self.nodes),
            "marks": self.marks.astype(int).tolist(),
            "pds_tree": [list(e) for e in self.pds_tree],
            "explanation_by_radius": {str(r): v for r, v in self.explanation_by_radius.items()},
            "minimal_explanation": list(self.minimal_explanation),
            "minimal_is_separating": self.minimal_is_separating,
            "p_values": {str(k): v for k, v in self.p_values.items()},
            "head_importance": self.head_importance,
            "n_ci_tests": self.n_ci_tests,
            "params": asdict(self.params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CausalExplanation:
        return cls(
            target=int(data["target"]),
            head=None if data.get("head") is None else int(data["head"]),
            nodes=[int(v) for v in data["nodes"]],
            marks=np.asarray(data["marks"], dtype=np.int8).reshape(
                len(data["nodes"]), len(data["nodes"])
            ),
            pds_tree=[(int(a), int(b), int(d)) for a, b, d in data["pds_tree"]],
            explanation_by_radius={
                int(r): [int(v) for v in vs] for r, vs in data["explanation_by_radius"].items()
            },
            minimal_explanation=[int(v) for v in data["minimal_explanation"]],
            minimal_is_separating=bool(data["minimal_is_separating"]),
            p_values={int(k): float(v) for k, v in data["p_values"].items()},
            head_importance=float(data["head_importance"]),
            n_ci_tests=int(data.get("n_ci_tests", 0)),
            params=ExplainParams(**data["params"]),
        )


def explain(
    attention: np.ndarray,
    nodes: np.ndarray,
    target: int,
    alpha: float = DEFAULT_ALPHA,
    dof: float = DEFAULT_DOF,
    max_radius: int = DEFAULT_MAX_RADIUS,
    *,
    image_positions: np.ndarray | None = None,
    max_cond_size: int | None = None,
    minimal_budget: int = DEFAULT_MINIMAL_BUDGET,
    ancestor_pruning: bool = True,
    set_order: str = "reference",
) -> CausalExplanation:
    """Explain token ``target`` from one head's ``[T, T]`` attention matrix.

    ``nodes`` are the token positions to learn the graph over (see
    :func:`methods.cleann.nodes.select_nodes`); ``target`` must be one of them.
    ``image_positions`` marks which tokens count towards head importance
    (default: all nodes). ``max_cond_size`` optionally caps the CI conditioning
    size, trading completeness for bounded time on dense graphs.
    ``ancestor_pruning``: see :func:`methods.cleann.structure.learn_ordered_pag`.
    ``set_order``: one of :data:`SET_ORDERS` (see :mod:`methods.cleann.structure`).
    """
    att = np.asarray(attention)
    if att.ndim != 2 or att.shape[0] != att.shape[1]:
        raise ValueError(f"attention must be a square [T, T] matrix, got shape {att.shape}")
    pos = _validate_nodes(nodes, att.shape[0])
    params = ExplainParams(
        alpha, dof, max_radius, max_cond_size, minimal_budget, ancestor_pruning, set_order
    )
    rows = att[pos]
    if not np.all(np.isfinite(rows)):
        raise ValueError("attention rows of the selected nodes contain NaN or inf")
    image = pos if image_positions is None else np.asarray(image_positions, dtype=np.int64)
    return explain_rows(rows, pos, int(target), params, np.isin(pos, image))


def _validate_nodes(nodes: np.ndarray, size: int) -> np.ndarray:
    arr = np.asarray(nodes)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("nodes must be a non-empty 1-D array of token positions")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"nodes must be integer positions, got dtype {arr.dtype}")
    pos = np.unique(arr.astype(np.int64))
    if pos[0] < 0 or pos[-1] >= size:
        raise ValueError(f"nodes must lie in [0, {size}); got {pos[0]}..{pos[-1]}")
    return pos


def explain_rows(
    rows: np.ndarray,
    positions: np.ndarray,
    target: int,
    params: ExplainParams,
    is_image: np.ndarray,
) -> CausalExplanation:
    """Core of :func:`explain` on the nodes' attention rows only (cheap to ship to workers).

    ``positions`` must be sorted and unique; ``is_image`` is a mask over them.
    """
    params.validate()
    hits = np.flatnonzero(positions == target)
    if hits.size == 0:
        raise ValueError(f"target {target} is not among the nodes {positions.tolist()}")
    t = int(hits[0])
    labels = [int(p) for p in positions]

    test = FisherZTest(attention_correlation(rows), params.dof)
    order_labels = labels if params.set_order == "reference" else None
    learned = learn_ordered_pag(
        len(labels),
        test,
        params.alpha,
        params.max_cond_size,
        params.ancestor_pruning,
        order_labels,
    )
    tree = build_pds_tree(learned.marks, t, params.max_radius, labels=order_labels)
    by_radius = tree.by_radius()
    minimal, separating = _minimal_explanation(test, tree, params)

    p_values = {
        labels[v]: learned.max_p[(min(v, t), max(v, t))] for v in range(len(labels)) if v != t
    }
    importance = sum(
        -math.log10(max(p_values[labels[v]], _P_FLOOR)) for v in tree.depth if is_image[v]
    )
    return CausalExplanation(
        target=labels[t],
        nodes=labels,
        marks=learned.marks,
        pds_tree=[(labels[a], labels[b], d) for a, b, d in tree.edges],
        explanation_by_radius={
            r: [labels[v] for v in by_radius.get(r, [])] for r in range(1, params.max_radius + 1)
        },
        minimal_explanation=sorted(labels[v] for v in minimal),
        minimal_is_separating=separating,
        p_values=p_values,
        head_importance=float(importance),
        params=params,
        n_ci_tests=test.n_tests,
    )


def _minimal_explanation(
    test: FisherZTest, tree: PDSTree, params: ExplainParams
) -> tuple[list[int], bool]:
    """Smallest PDS-legal superset of the target's neighbours that separates it from the rest."""
    t = tree.root
    neighbours = [v for v, d in tree.depth.items() if d == 1]
    deeper = sorted((v for v, d in tree.depth.items() if d > 1), key=lambda v: (tree.depth[v], v))

    def separates(members: list[int]) -> bool:
        return bool(np.all(test.pvalues_given(t, sorted(members)) > params.alpha))

    if separates(neighbours):
        return neighbours, True
    tried = 1
    for size in range(1, len(deeper) + 1):
        for extra in combinations(deeper, size):
            if tried >= params.minimal_budget:
                return list(tree.depth), False
            members = neighbours + list(extra)
            if not tree.is_legal(sum(1 << v for v in members)):
                continue
            tried += 1
            if separates(members):
                return members, True
    return list(tree.depth), False
