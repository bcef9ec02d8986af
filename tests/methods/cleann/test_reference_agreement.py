"""Our CLEANN against causality-lab's, the reference the seed tool uses, on committed fixtures.

``bench/cleann_reference.py`` generated the heads (5-47 nodes, alpha 1e-5/1e-3/1e-2, dof
64/128/256, sharp and flat attention, small and LLaVA-like positions) and ran the
reference outside the product, twice per case:

* ``reference``: exactly as the seed tool calls it. causality-lab iterates Python sets of
  token positions (which pair is tested first, which conditioning node, which neighbour
  grows the PDS tree), so its result depends on the numbers: for most cases the fixture
  records that the same head shifted by one position gives another result
  (``shifted_same``). Our default ``set_order="reference"`` rebuilds those sets; it
  equals this run on all but the cases listed in ``SET_HISTORY``.
* ``ascending``: the same reference code with its sets iterating in ascending order.
  Ours with ``set_order="ascending"`` must equal it exactly on every case: the algorithm
  is the same, only the visiting order is a choice.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.cleann_reference import FIXTURE, load_fixture
from methods.cleann.explain import CausalExplanation, ExplainParams, explain_rows

CASES = load_fixture(FIXTURE)
# Cases where ours (set_order="reference") differs from the seed-tool run: causality-lab
# also iterates the sets of edge marks it keeps per node (the r = 1 neighbours, rules
# R1-R4), whose order depends on every mark change before, a history we do not replay.
# In each the reference disagrees with itself in ascending order too. Explanation sets
# differ in 54, 58, 74 and 101, PAG marks in all nine.
SET_HISTORY = {17, 25, 52, 54, 56, 58, 74, 101, 132}


def _ours(case, set_order: str = "reference") -> CausalExplanation:
    params = ExplainParams(case.alpha, case.dof, max_radius=3, set_order=set_order)
    mask = np.ones(len(case.positions), dtype=bool)
    return explain_rows(case.rows.astype(np.float64), case.positions, case.target, params, mask)


@pytest.fixture(scope="module")
def ours() -> list[CausalExplanation]:
    return [_ours(case) for case, _ in CASES]


@pytest.fixture(scope="module")
def ours_ascending() -> list[CausalExplanation]:
    return [_ours(case, "ascending") for case, _ in CASES]


def _same(res: CausalExplanation, ref: dict) -> tuple[bool, bool]:
    return res.explanation == ref["explanation"], np.array_equal(res.marks, ref["marks"])


def test_fixture_spans_the_requested_grid():
    assert len(CASES) >= 100
    assert {c.alpha for c, _ in CASES} == {1e-5, 1e-3, 1e-2}
    assert {c.dof for c, _ in CASES} == {64, 128, 256}
    assert {c.kind for c, _ in CASES} == {"sharp", "flat"}
    sizes = [len(c.positions) for c, _ in CASES]
    assert min(sizes) <= 7 and max(sizes) >= 45
    assert any(c.positions[-1] > 600 for c, _ in CASES)  # LLaVA-like positions too


def test_equal_to_the_reference_in_ascending_order(ours_ascending):
    for (case, fixture), res in zip(CASES, ours_ascending, strict=True):
        ref = fixture["ascending"]
        assert res.explanation == ref["explanation"], case.positions.tolist()
        np.testing.assert_array_equal(res.marks, ref["marks"])
        depth = {int(v): r for v, r in ref["radius"].items()}
        assert {v: r for r, vs in res.explanation_by_radius.items() for v in vs} == depth
        assert case.target not in res.explanation  # the token never explains itself


def test_equal_to_the_seed_tool_run_but_for_mark_set_history(ours):
    sets = pags = 0
    jaccard = []
    differ = set()
    for i, ((_, fixture), res) in enumerate(zip(CASES, ours, strict=True)):
        plain, asc = fixture["reference"], fixture["ascending"]
        same_set, same_pag = _same(res, plain)
        sets += same_set
        pags += same_pag
        a, b = set(res.explanation), set(plain["explanation"])
        jaccard.append(len(a & b) / len(a | b) if a | b else 1.0)
        if not (same_set and same_pag):
            differ.add(i)  # the reference answers otherwise in another order:
            assert asc["explanation"] != plain["explanation"] or asc["marks"] != plain["marks"]
    shift_free = sum(f["shifted_same"] for _, f in CASES)
    print(
        f"\nvs the seed-tool run: explanation sets equal {sets}/{len(CASES)}, PAGs equal "
        f"{pags}/{len(CASES)}, mean Jaccard {np.mean(jaccard):.3f}; the reference keeps its "
        f"result under a one-position shift in {shift_free}/{len(CASES)}"
    )
    assert differ == SET_HISTORY


def test_ascending_order_does_not_depend_on_where_the_head_sits(ours_ascending):
    """The same head one position later gives the same graph and explanation (shifted),
    which the seed-tool run of the reference (and our default) does not on most heads."""
    for (case, _), res in list(zip(CASES, ours_ascending, strict=True))[::7]:
        moved = _ours(replace(case, positions=case.positions + 1), "ascending")
        assert moved.explanation == [v + 1 for v in res.explanation]
        np.testing.assert_array_equal(moved.marks, res.marks)


def test_unknown_set_order_is_refused():
    case, _ = CASES[0]
    with pytest.raises(ValueError, match="set_order"):
        _ours(case, "hash")
