"""Agreement harness: synthetic attention heads, run through causality-lab's CLEANN.

The seed tool (IntelLabs/lvlm-interpret) explains a token with causality-lab's ``CLEANN``
and ``LearnStructOrderedICD`` (``utils_causal_discovery_fn.create_explanation``). This
script generates heads of our own, runs that reference on them *outside the product*, and
writes the inputs and the reference's outputs as a test fixture that
``tests/methods/cleann/test_reference_agreement.py`` compares our learner against.
causality-lab is never vendored nor imported by the product: it is imported here only
from the path given with ``--reference`` (a checkout, e.g. extracted from a git mirror).

Cases: ``T``-token causal softmax heads (a sink, a recency bump, content logits from random
queries and keys; ``sharp`` heads concentrate attention, ``flat`` ones spread it, which
gives dense graphs), the explained token is the last one and the nodes are it plus the
``n - 1`` earlier tokens it attends to most (as the seed tool picks nodes). Half of the
cases keep positions ``0..T-1``; the other half place the same rows at LLaVA-like
positions (image tokens from 35, text after 611), because the reference iterates Python
sets of positions and their order depends on the numbers.

Run::

    python bench/cleann_reference.py --reference /tmp/ref/cl            # write the fixture
    python bench/cleann_reference.py --reference /tmp/ref/cl --check    # compare, no write

Each case is stored as the node positions and their attention rows (float16, as a trace
stores them; only the nodes' rows matter because ``corr = A Aᵀ`` restricted to them).
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[1] / "tests/methods/cleann/fixtures/cleann_reference.npz"
ALPHAS = (1e-5, 1e-3, 1e-2)
DOFS = (64, 128, 256)
MAX_RADIUS = 3
T_TOKENS = 48
IMAGE_START, IMAGE_TOKENS = 35, 576


@dataclass
class Case:
    """One head: node positions (sorted, target last), their rows, and the test settings."""

    positions: np.ndarray
    rows: np.ndarray  # [n, T] float16
    alpha: float
    dof: int
    kind: str

    @property
    def target(self) -> int:
        return int(self.positions[-1])


def synthetic_head(rng: np.random.Generator, t: int, sharpness: float) -> np.ndarray:
    """``[t, t]`` row-stochastic causal attention of one head."""
    d = 16
    x = rng.normal(size=(t, d))
    q, k = x @ rng.normal(size=(d, d)), x @ rng.normal(size=(d, d))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    logits = sharpness * (q @ k.T)  # bounded, so float16 never flushes a weight to zero
    logits[:, 0] += rng.uniform(0.0, 4.0)  # attention sink
    pos = np.arange(t)
    dist = pos[:, None] - pos[None, :]
    logits += np.where((dist >= 0) & (dist <= 2), rng.uniform(0.0, 2.0), 0.0)
    logits = np.where(dist >= 0, logits, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    att = np.exp(logits)
    return att / att.sum(axis=1, keepdims=True)


def make_cases(seed: int = 0, count: int = 144) -> list[Case]:
    """``count`` cases cycling over alpha x dof x {sharp, flat}, node counts 5..47."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        alpha = ALPHAS[i % 3]
        dof = DOFS[(i // 3) % 3]
        kind = ("sharp", "flat")[(i // 9) % 2]
        n = int(rng.integers(5, T_TOKENS))
        local, rows = _nondegenerate_head(rng, n, 4.0 if kind == "sharp" else 1.0)
        positions = local if (i // 18) % 2 == 0 else _spread_positions(local, rng)
        cases.append(Case(positions.astype(np.int64), rows, alpha, dof, kind))
    return cases


def _nondegenerate_head(
    rng: np.random.Generator, n: int, sharpness: float
) -> tuple[np.ndarray, np.ndarray]:
    """Node positions and float16 rows of full rank (an invertible correlation matrix).

    float16 flushes tiny weights to zero, so early tokens of a sink-dominated head can get
    identical rows; the reference then fails on a singular matrix, so such heads are redrawn.
    """
    target = T_TOKENS - 1
    while True:
        att = synthetic_head(rng, T_TOKENS, sharpness)
        earlier = np.argsort(-att[target, :target], kind="stable")[: n - 1]
        local = np.sort(np.append(earlier, target))
        rows = att[local].astype(np.float16)
        if np.linalg.matrix_rank(rows.astype(np.float64)) == n:
            return local, rows


def _spread_positions(local: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same order, LLaVA-like numbers: most nodes image tokens, the rest text after them."""
    n = len(local)
    n_text = int(rng.integers(1, max(2, n // 3)))
    image = np.sort(rng.choice(IMAGE_TOKENS, n - n_text, replace=False)) + IMAGE_START
    text = np.sort(rng.choice(80, n_text, replace=False)) + IMAGE_START + IMAGE_TOKENS
    return np.concatenate([image, text])


class _AnySet(type):
    """``isinstance(x, set)`` in the reference's modules must still accept plain sets."""

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, builtins.set)


class AscendingSet(set, metaclass=_AnySet):
    """A set that iterates in ascending order, and whose set algebra stays ascending.

    causality-lab iterates Python sets of token positions in many places (which
    ancestor is tested first, which conditioning node, which neighbour grows the PDS
    tree first). That order follows the numbers' hashes and each set's history, so the
    reference's result changes when the same head sits at other positions. Installed
    as ``set`` in the reference's modules (``--order ascending``), it makes the
    reference deterministic in the order our learner uses.
    """

    def __iter__(self):
        return iter(sorted(set.__iter__(self)))

    def copy(self):
        return AscendingSet(set.__iter__(self))

    def __and__(self, other):
        return AscendingSet(set.__and__(self, other))

    def __or__(self, other):
        return AscendingSet(set.__or__(self, other))

    def __sub__(self, other):
        return AscendingSet(set.__sub__(self, other))

    __rand__, __ror__ = __and__, __or__


_REFERENCE_MODULES = (
    "causal_discovery_algs.ordered_icd",
    "causal_discovery_algs.icd",
    "causal_discovery_utils.cond_indep_tests",
    "causal_discovery_utils.constraint_based",
    "causal_reasoning.cleann_explainer",
    "graphical_models.basic_graph",
    "graphical_models.basic_equivalance_class_graph",
    "graphical_models.partial_ancestral_graph",
    "graphical_models.possible_dsep_tree",
    "graphical_models.undirected_graph",
)


def set_reference_order(ascending: bool) -> None:
    """Make the reference iterate its sets in ascending order (or restore Python's)."""
    import importlib

    for name in _REFERENCE_MODULES:
        module = importlib.import_module(name)
        if ascending:
            module.set = AscendingSet
        elif "set" in vars(module):
            del module.set


def run_reference(case: Case, ascending: bool = False, offset: int = 0) -> dict:
    """The seed tool's call sequence on one case (causality-lab must be on sys.path).

    ``offset`` shifts every position (the same head further into a sequence).
    """
    from causal_discovery_algs import LearnStructOrderedICD
    from causal_reasoning import CLEANN

    set_reference_order(ascending)
    make_set = AscendingSet if ascending else set

    positions = case.positions + offset
    target = int(positions[-1])
    attention = np.zeros((target + 1, case.rows.shape[1]))
    attention[:, 0] = 1.0  # rows of tokens that are not nodes only need a variance
    attention[positions] = case.rows.astype(np.float64)
    nodes = [int(p) for p in positions]
    t0 = time.perf_counter()
    explainer = CLEANN(
        attention_matrix=attention,
        num_samples=case.dof,
        p_val_th=case.alpha,
        explanation_tester=None,
        nodes_set=make_set(nodes),
    )
    learner = LearnStructOrderedICD(
        make_set(nodes), sorted(nodes), explainer.ci_test, is_selection_bias=False
    )
    learner.learn_structure_global()
    explainer.graph = learner.graph
    explanation = explainer.explain(target, max_range=MAX_RADIUS)
    seconds = time.perf_counter() - t0
    tree = explainer.results[target]["pds_tree"]
    return {
        "explanation": sorted(int(v) - offset for v in explanation[0][0]),
        "radius": {str(int(v) - offset): r for v, r in _min_radius(tree).items()},
        "marks": learner.graph.get_adj_mat().astype(int).tolist(),
        "n_ci_tests": int(sum(explainer.ci_test.test_counter)),
        "seconds": seconds,
    }


def _min_radius(tree) -> dict[int, int]:
    """Each node's smallest depth in a causality-lab PDS tree (the seed tool shows it there)."""
    out: dict[int, int] = {}
    level, radius = list(tree.children), 1
    while level:
        for child in level:
            out.setdefault(child.origin, radius)
        level = [c for child in level for c in child.children]
        radius += 1
    return out


def save_fixture(path: Path, cases: list[Case], outputs: list[dict]) -> None:
    arrays = {f"rows_{i}": c.rows for i, c in enumerate(cases)}
    meta = [
        {"positions": c.positions.tolist(), "alpha": c.alpha, "dof": c.dof, "kind": c.kind} | out
        for c, out in zip(cases, outputs, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


def load_fixture(path: Path = FIXTURE) -> list[tuple[Case, dict]]:
    """Cases and what the fixture says about them, as written by :func:`save_fixture`."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return [
            (
                Case(
                    np.asarray(m["positions"], dtype=np.int64),
                    data[f"rows_{i}"],
                    float(m["alpha"]),
                    int(m["dof"]),
                    m["kind"],
                ),
                m,
            )
            for i, m in enumerate(meta)
        ]


class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout


def reference_outputs(case: Case, limit_s: int) -> dict | None:
    """Everything the fixture keeps about one case, or None if the reference is too slow.

    ``reference``: as the seed tool runs it (Python's set order); ``ascending``: the
    same code iterating its sets in ascending order; ``shifted_same``: whether the
    seed-tool run gives the same result with every position shifted by one.
    """
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    try:
        plain = run_reference(case)
        ascending = run_reference(case, ascending=True)
        shifted = run_reference(case, offset=1)
    except _Timeout:
        return None
    finally:
        signal.alarm(0)
    keys = ("explanation", "marks")
    ascending = {k: ascending[k] for k in ("explanation", "radius", "marks")}
    return {
        "reference": plain,
        "ascending": ascending,
        "shifted_same": all(shifted[k] == plain[k] for k in keys),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="causality-lab checkout")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    parser.add_argument("--count", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-s", type=int, default=60, help="skip cases slower than this")
    parser.add_argument("--check", action="store_true", help="print only, write nothing")
    args = parser.parse_args()
    sys.path.insert(0, str(args.reference.resolve()))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    kept, outputs = [], []
    for i, case in enumerate(make_cases(args.seed, args.count)):
        out = reference_outputs(case, args.limit_s)
        head = f"{i:3d} n={len(case.positions):2d} a={case.alpha:g} dof={case.dof} {case.kind:5s}"
        if out is None:
            print(f"{head} skipped: the reference needs over {args.limit_s} s", flush=True)
            continue
        kept.append(case)
        outputs.append(out)
        ref = out["reference"]
        print(
            f"{head} |E|={len(ref['explanation']):2d} tests={ref['n_ci_tests']:6d} "
            f"{ref['seconds']:.3f}s order-free={out['shifted_same']}",
            flush=True,
        )
    if not args.check:
        save_fixture(args.out, kept, outputs)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB), {len(kept)} cases")


if __name__ == "__main__":
    main()
