"""Ordered-ICD PAG learner against independently computed ground truth.

With a perfect d-separation oracle the learner must return exactly the PAG of
the true MAG's equivalence class under the known order (found by brute-force
enumeration of all Markov-equivalent MAGs in ``truth.py``). With
linear-Gaussian correlation matrices it must recover the skeleton.
"""

import numpy as np
import pytest

from methods.cleann.ci_test import FisherZTest
from methods.cleann.graph import ARROW, TAIL, list_edges
from methods.cleann.structure import learn_ordered_pag
from tests.methods.cleann.truth import (
    ancestors,
    gaussian_correlation,
    random_latent_model,
    true_pag,
)


def _small_models(seed: int, count: int, max_edges: int = 9):
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < count:
        model = random_latent_model(rng, int(rng.integers(4, 7)), int(rng.integers(1, 3)), 0.45)
        skeleton = model.mag_skeleton()
        if 3 <= np.triu(skeleton, 1).sum() <= max_edges:
            found.append((model, skeleton))
    return found


@pytest.mark.parametrize("ancestor_pruning", [True, False])
def test_oracle_recovers_true_pag_with_latents(ancestor_pruning):
    for model, skeleton in _small_models(seed=7, count=12):
        # the two ground-truth skeleton computations agree with each other
        np.testing.assert_array_equal(skeleton, model.mag_skeleton_by_ancestors())
        truth = true_pag(model)
        learned = learn_ordered_pag(
            len(model.observed), model.oracle, alpha=0.5, ancestor_pruning=ancestor_pruning
        )
        assert list_edges(learned.marks) == list_edges(truth)


def test_oracle_on_larger_graphs_skeleton_exact_and_marks_sound():
    rng = np.random.default_rng(3)
    for _ in range(6):
        model = random_latent_model(rng, 11, 3, 0.3)
        skeleton = model.mag_skeleton_by_ancestors()
        learned = learn_ordered_pag(len(model.observed), model.oracle, alpha=0.5)
        np.testing.assert_array_equal(learned.marks != 0, skeleton)
        anc = ancestors(model.adj)
        obs = model.observed
        for i, j in zip(*np.nonzero(learned.marks), strict=True):
            mark_at_j = learned.marks[i, j]
            if mark_at_j == ARROW:  # arrowhead at j: j is not an ancestor of i
                assert not anc[obs[j], obs[i]]
            elif mark_at_j == TAIL:  # tail at j: j is an ancestor of i
                assert anc[obs[j], obs[i]]


def _skeleton_scores(pruning: bool, n_latent: int, n_samples: int | None, seed: int):
    rng = np.random.default_rng(seed)
    tp = fp = fn = 0
    for _ in range(12):
        model = random_latent_model(rng, 10, n_latent, 0.3)
        truth = model.mag_skeleton_by_ancestors()
        corr = gaussian_correlation(model, rng, n_samples)
        dof = 1e12 if n_samples is None else n_samples
        alpha = 1e-5 if n_samples is None else 1e-3
        est = learn_ordered_pag(10, FisherZTest(corr, dof), alpha, ancestor_pruning=pruning)
        iu = np.triu_indices(10, 1)
        est_e, true_e = est.marks[iu] != 0, truth[iu]
        tp += int(np.sum(est_e & true_e))
        fp += int(np.sum(est_e & ~true_e))
        fn += int(np.sum(~est_e & true_e))
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1)


def test_gaussian_exact_covariance_near_perfect():
    precision, recall = _skeleton_scores(pruning=True, n_latent=3, n_samples=None, seed=1)
    print(f"exact covariance, 10 observed + 3 latent: P={precision:.3f} R={recall:.3f}")
    assert precision >= 0.95
    assert recall >= 0.95


@pytest.mark.parametrize("pruning", [True, False])
def test_gaussian_samples_report(pruning):
    """Finite samples: limited by near-unfaithful weak dependencies, not the algorithm."""
    precision, recall = _skeleton_scores(pruning, n_latent=0, n_samples=20_000, seed=2)
    print(f"20k samples, no latents, ancestor_pruning={pruning}: P={precision:.3f} R={recall:.3f}")
    assert recall >= 0.9
    assert precision >= (0.95 if not pruning else 0.75)
