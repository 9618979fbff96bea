"""The verdict engine: exact p-values, Holm, TOST, and its error rates on planted data."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moegeo import stats
from moegeo.stats import Verdict

ALPHA = stats.ALPHA


def test_holm_matches_hand_computation():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_holm_is_monotone_and_at_least_raw(p):
    adj = stats.holm(p)
    assert (adj >= np.asarray(p) - 1e-15).all() and (adj <= 1).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(adj[order]) >= -1e-15).all()


@given(st.lists(st.floats(-10, 10, allow_nan=False).filter(lambda v: v != 0), min_size=1, max_size=25))
def test_sign_test_is_the_exact_binomial_tail(x):
    n, k = len(x), sum(v > 0 for v in x)
    expected = sum(math.comb(n, j) for j in range(k, n + 1)) / 2**n
    r = stats.sign_test(x)
    assert r.pvalue == pytest.approx(expected, rel=1e-9)
    assert r.pvalue_opposite == pytest.approx(sum(math.comb(n, j) for j in range(0, k + 1)) / 2**n, rel=1e-9)
    assert r.pvalue >= 2.0**-n - 1e-15


def simulate(effect_log: float, n_sweeps: int, n_seeds: int = 20, sd: float = 0.25, seed: int = 0) -> np.ndarray:
    """Per-sweep direction p-values for dense = moe * exp(effect) with independent log-normal
    seed noise of sd 0.25 on each arm (25% seed-to-seed variation)."""
    rng = np.random.default_rng(seed)
    moe = np.exp(rng.normal(0, sd, (n_sweeps, n_seeds)))
    dense = np.exp(effect_log + rng.normal(0, sd, (n_sweeps, n_seeds)))
    return np.array([stats.sign_test(d - m, with_ci=False).pvalue for d, m in zip(dense, moe)])


def test_false_replication_rate_on_planted_null_is_at_most_alpha():
    p = simulate(0.0, 2000)
    assert (p <= ALPHA).mean() <= ALPHA


def test_holm_controls_family_wise_error_on_planted_null():
    fam = simulate(0.0, 10 * 500, seed=1).reshape(500, 10)
    fwer = np.mean([(stats.holm(row) <= ALPHA).any() for row in fam])
    assert fwer <= ALPHA


def test_power_at_the_papers_effect_size_with_20_seeds():
    """§3.1: dense sigma_1 "approximately 1.5-1.7x" the experts'; the low end, 1.5x."""
    p = simulate(math.log(1.5), 1000, seed=2)
    assert (p <= ALPHA).mean() >= 0.8


def test_equivalence_test():
    rng = np.random.default_rng(0)
    inside = stats.equivalence_test(rng.normal(0.002, 0.001, 20), -0.01, 0.015)
    assert inside.pvalue <= 2.0**-20 + 1e-12
    outside = stats.equivalence_test(rng.normal(0.05, 0.001, 20), -0.01, 0.015)
    assert outside.pvalue == 1.0 and outside.pvalue_opposite <= 2.0**-20 + 1e-12


def test_median_ci_covers_the_true_median():
    rng = np.random.default_rng(3)
    cover = [lo <= 0 <= hi for lo, hi in (stats.median_ci(rng.normal(0, 1, 20), seed=i) for i in range(200))]
    assert np.mean(cover) >= 0.88  # percentile bootstrap of a median at n = 20: near-nominal


@pytest.mark.parametrize("p, q, n, m, expected", [
    (0.01, 1.0, 20, 10, Verdict.REPLICATED),
    (1.0, 0.01, 20, 10, Verdict.CONTRADICTED),
    (0.5, 0.5, 20, 10, Verdict.NOT_REPLICATED),
    (0.5, 0.5, 3, 10, Verdict.TOO_FEW_SEEDS),  # 2^-3 = 0.125 > 0.05/10
])
def test_direction_verdict(p, q, n, m, expected):
    assert stats.direction_verdict(p, q, n, m) is expected


@pytest.mark.parametrize("ci, expected", [
    ((1.4, 1.55), Verdict.REPLICATED), ((1.1, 1.3), Verdict.NOT_REPLICATED),
    ((0.6, 0.9), Verdict.CONTRADICTED), ((1.8, 2.0), Verdict.NOT_REPLICATED),
])
def test_interval_verdict(ci, expected):
    assert stats.interval_verdict(ci, (1.5, 1.7), n=20, null=1.0) is expected
    assert stats.interval_verdict(ci, (1.5, 1.7), n=5, null=1.0) is Verdict.TOO_FEW_SEEDS
