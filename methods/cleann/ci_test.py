"""Conditional-independence tests on a correlation matrix.

CLEANN reads self-attention as a linear structural model: the output of a
head is ``Z = A V`` with i.i.d. value vectors, so ``cov(Z) ∝ A Aᵀ``. Partial
correlations of that covariance give conditional independence between
tokens, tested with Fisher's z at a stated number of samples (``dof``,
conventionally the head dimension).

The structure learner only needs a callable ``(i, j, cond) -> p-value``, so a
perfect d-separation oracle can replace :class:`FisherZTest` in tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy import special

_MAX_ABS_R = 1.0 - 1e-12


class CITest(Protocol):
    """p-value of the hypothesis ``i ⊥ j | cond`` (large p: independent)."""

    def __call__(self, i: int, j: int, cond: Sequence[int]) -> float: ...


def attention_correlation(rows: np.ndarray) -> np.ndarray:
    """Correlation matrix of ``rows @ rows.T`` for the selected tokens' attention rows.

    Exactly ``cov / sqrt(diag diagᵀ)`` as the reference computes it (no ridge: a
    ridge shifts borderline p-values across alpha). Tokens whose row is all zero
    have no variance; they are made uncorrelated with everything rather than
    producing NaNs.
    """
    rows = np.asarray(rows, dtype=np.float64)
    cov = rows @ rows.T
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    live = std > 0
    inv = np.where(live, 1.0 / np.where(live, std, 1.0), 0.0)
    corr = cov * inv * inv[:, None]
    np.fill_diagonal(corr, 1.0)
    return corr


def fisher_z_pvalue(r: float, n_cond: int, dof: float) -> float:
    """Two-sided p-value of Fisher's z for partial correlation ``r``.

    When ``dof - |cond| - 3 <= 0`` the test has no power; we report p = 1
    (cannot reject independence) rather than an undefined statistic.
    """
    eff = dof - n_cond - 3
    if eff <= 0:
        return 1.0
    r = min(max(r, -_MAX_ABS_R), _MAX_ABS_R)
    z = math.sqrt(eff) * abs(math.atanh(r))
    return math.erfc(z / math.sqrt(2.0))


class FisherZTest:
    """Partial-correlation CI test on a fixed correlation matrix, with a cache."""

    def __init__(self, corr: np.ndarray, dof: float) -> None:
        self.corr = np.asarray(corr, dtype=np.float64)
        self.dof = float(dof)
        self.n_tests = 0
        self._cache: dict[tuple[int, int, tuple[int, ...]], float] = {}

    def partial_correlation(self, i: int, j: int, cond: Sequence[int]) -> float:
        c = self.corr
        if not cond:
            return float(c[i, j])
        if len(cond) == 1:  # closed form: by far the most frequent case
            k = cond[0]
            denom = (1.0 - c[i, k] ** 2) * (1.0 - c[j, k] ** 2)
            # a duplicate of i or j in the set: no evidence of independence (as the reference)
            r = (c[i, j] - c[i, k] * c[j, k]) / math.sqrt(denom) if denom > 0 else 1.0
        else:
            idx = [i, j, *cond]
            prec = _inverse(c[np.ix_(idx, idx)])
            denom = abs(prec[0, 0] * prec[1, 1])
            r = -prec[0, 1] / math.sqrt(denom) if denom > 0 else 0.0
        return float(r) if math.isfinite(r) else 0.0

    def pvalues_given(self, i: int, cond: Sequence[int]) -> np.ndarray:
        """p-values of ``i ⊥ v | cond`` for every node ``v`` at once (one solve).

        Entries for ``i`` itself and for members of ``cond`` are meaningless
        and set to 1.
        """
        c = self.corr
        s = list(cond)
        if s:
            cs = c[s]
            w = _inverse(cs[:, s]) @ cs
            row = c[i] - c[i, s] @ w
            diag = np.clip(1.0 - np.einsum("ij,ij->j", cs, w), 1e-300, None)
        else:
            row, diag = c[i], np.ones(len(c))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.nan_to_num(row / (np.sqrt(diag[i]) * np.sqrt(diag)))
        r = np.clip(r, -_MAX_ABS_R, _MAX_ABS_R)
        eff = self.dof - len(s) - 3
        if eff <= 0:
            return np.ones(len(c))
        z = math.sqrt(eff) * np.abs(np.arctanh(r))
        p = special.erfc(z / math.sqrt(2.0))
        p[[i, *s]] = 1.0
        self.n_tests += len(c) - 1 - len(s)
        return p

    def __call__(self, i: int, j: int, cond: Sequence[int]) -> float:
        a, b = (i, j) if i < j else (j, i)
        key = (a, b, tuple(sorted(cond)))
        p = self._cache.get(key)
        if p is None:
            self.n_tests += 1
            p = fisher_z_pvalue(self.partial_correlation(a, b, key[2]), len(cond), self.dof)
            self._cache[key] = p
        return p


def _inverse(m: np.ndarray) -> np.ndarray:
    """Inverse, or pseudo-inverse when tokens are exact duplicates (singular block)."""
    try:
        return np.linalg.inv(m)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(m)
