"""The thresholds moegeo declares where the papers give none are checked against chance: at
exact chance each rule must behave as its declaration says."""

import math

import numpy as np
import pytest

from moegeo.claims import dual_jacobian_pca as dual
from moegeo.probes import cosine_matrix

SIMS = 1500


def _chance_cosines(rng, sims: int, E: int, d: int) -> np.ndarray:
    """``(sims, E(E-1)/2)``: the pairwise cosines of vec of E independent Gaussian d x d matrices
    (A.3's null), ``sims`` times; the first draw through ``moegeo.probes.cosine_matrix``."""
    import torch

    X = rng.standard_normal((sims, E, d * d))
    X /= np.linalg.norm(X, axis=-1, keepdims=True)
    C = np.einsum("sek,sfk->sef", X, X)
    np.testing.assert_allclose(C[0], cosine_matrix(torch.as_tensor(X[0])).numpy(), atol=1e-12)
    i, j = np.triu_indices(E, 1)
    return C[:, i, j]


def test_c4n_bound_is_the_one_sided_95_percent_point_of_chance():
    """At exact chance (independent random matrices), the ratio of a seed's mean |cos| to its
    expectation stays below C4n's bound in 95% of seeds: the declared quantile, within 4
    Monte-Carlo standard errors (the old 1 + 2 CV bound would keep about 97.7%)."""
    rng = np.random.default_rng(0)
    d, E = 64, 8
    m1 = dual.null_moments(d)[0]
    ratio = np.abs(_chance_cosines(rng, SIMS, E, d)).mean(axis=1) / m1
    below = np.mean(ratio < dual.chance_upper(d, E * (E - 1) // 2))
    q = dual.CHANCE_QUANTILE
    assert abs(below - q) <= 4 * math.sqrt(q * (1 - q) / SIMS), below


def test_c4_threshold_is_the_fraction_of_chance_cosines_inside_the_range():
    """C4's threshold is the share of cosines of unrelated matrices inside [-0.01, 0.015]: a
    chance-level seed sits on it (the median of the statistic at chance is 0)."""
    rng = np.random.default_rng(1)
    c = _chance_cosines(rng, 200, 8, 64).ravel()
    inside = np.mean((c >= dual.COSINE_RANGE[0]) & (c <= dual.COSINE_RANGE[1]))
    p = dual.chance_fraction(64)
    assert abs(inside - p) <= 4 * math.sqrt(p * (1 - p) / len(c)), (inside, p)
    assert p == pytest.approx(0.570, abs=0.001)
