"""Fisher-z partial-correlation test against an independent regression computation."""

import math

import numpy as np
import pytest
from scipy import stats

from methods.cleann.ci_test import FisherZTest, attention_correlation, fisher_z_pvalue


def _residual_pvalue(x: np.ndarray, i: int, j: int, cond: tuple[int, ...]) -> float:
    """Partial correlation as the correlation of least-squares residuals, then Fisher z."""
    n = x.shape[1]
    design = np.column_stack([np.ones(n), *(x[c] for c in cond)])
    res_i = x[i] - design @ np.linalg.lstsq(design, x[i], rcond=None)[0]
    res_j = x[j] - design @ np.linalg.lstsq(design, x[j], rcond=None)[0]
    r = np.corrcoef(res_i, res_j)[0, 1]
    z = math.sqrt(n - len(cond) - 3) * math.atanh(r)
    return float(2 * stats.norm.sf(abs(z)))


@pytest.mark.parametrize("cond", [(), (2,), (2, 3), (1, 3, 4)])
def test_fisher_z_matches_residual_regression(cond):
    rng = np.random.default_rng(0)
    n = 400
    e = rng.standard_normal((5, n))
    x = np.vstack([e[0], e[1] + 0.3 * e[0], e[2] + 0.5 * e[0], e[3] + 0.4 * e[1], e[4]])
    ours = FisherZTest(np.corrcoef(x), dof=n)
    for i, j in [(0, 1), (0, 4), (1, 4)]:
        if i in cond or j in cond:
            continue
        expected = _residual_pvalue(x, i, j, cond)
        assert ours(i, j, cond) == pytest.approx(expected, rel=1e-6, abs=1e-12)
        assert ours(j, i, cond) == ours(i, j, cond)  # symmetric (and cached)


def test_pvalue_is_one_without_degrees_of_freedom():
    assert fisher_z_pvalue(0.9, n_cond=10, dof=12) == 1.0
    assert 0.0 <= fisher_z_pvalue(1.0, n_cond=0, dof=128) < 1e-100  # |r| = 1 stays finite


def test_attention_correlation_handles_duplicates_and_zero_rows():
    rows = np.zeros((4, 6))
    rows[:3, 0] = 1.0  # three tokens attend only to the sink: identical rows
    corr = attention_correlation(rows)  # row 3 is all zero: no variance
    assert np.all(np.isfinite(corr))
    np.testing.assert_allclose(np.diag(corr), 1.0)
    assert corr[0, 1] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(corr[3, :3], 0.0)
    test = FisherZTest(corr, dof=128)
    for cond in [(), (2,), (2, 3)]:  # singular blocks: finite, and never "independent"
        assert 0.0 <= test(0, 1, cond) < 1e-5
    assert np.all((test.pvalues_given(0, [2, 3]) >= 0) & (test.pvalues_given(0, [2, 3]) <= 1))
