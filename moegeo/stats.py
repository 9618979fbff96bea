"""The statistics of the replication verdict, on scipy.stats.

Seeds are the unit: each seed gives one (paired) observation. All tests are exact one-sided
sign tests (``scipy.stats.binomtest`` on the signs, zeros dropped): they need no symmetry or
tie assumptions, and with n seeds no p-value can go below 2^-n. Effects carry a percentile
bootstrap 95% CI of the median (``scipy.stats.bootstrap``, fixed generator).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import scipy.stats

ALPHA = 0.05
N_BOOTSTRAP = 4000


class Verdict(str, Enum):
    REPLICATED = "REPLICATED"
    NOT_REPLICATED = "NOT REPLICATED"  # no significant effect (or the magnitude is off)
    CONTRADICTED = "CONTRADICTED"  # significant in the opposite direction
    TOO_FEW_SEEDS = "TOO FEW SEEDS"  # even a unanimous sweep could not pass the correction


@dataclass(frozen=True)
class TestResult:
    """One one-sided test on per-seed values ``x`` (e.g. paired differences)."""

    pvalue: float  # H1: median(x) > 0
    pvalue_opposite: float  # H1: median(x) < 0
    effect: float  # median(x)
    ci_low: float
    ci_high: float
    n: int  # seeds used (non-zero signs)
    n_positive: int


def median_ci(x, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the median of ``x``."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return float(np.median(x)), float(np.median(x))
    res = scipy.stats.bootstrap((x,), np.median, confidence_level=confidence, n_resamples=N_BOOTSTRAP,
                                method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def sign_test(x, with_ci: bool = True) -> TestResult:
    """Exact one-sided sign tests of median(x) > 0 and median(x) < 0, with the median's CI
    (NaN with ``with_ci=False``, for simulations)."""
    x = np.asarray(x, dtype=float)
    if not np.isfinite(x).all():
        raise ValueError(f"sign_test needs finite values, got {x}")
    nz = x[x != 0]
    n, k = len(nz), int((nz > 0).sum())
    p = scipy.stats.binomtest(k, n, 0.5, alternative="greater").pvalue if n else 1.0
    q = scipy.stats.binomtest(k, n, 0.5, alternative="less").pvalue if n else 1.0
    lo, hi = median_ci(x) if len(x) and with_ci else (np.nan, np.nan)
    return TestResult(float(p), float(q), float(np.median(x)) if len(x) else np.nan, lo, hi, n, k)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate control)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj


def direction_verdict(p_adj: float, p_opp_adj: float, n: int, m: int, alpha: float = ALPHA) -> Verdict:
    """REPLICATED if the claimed direction is significant after correction, CONTRADICTED if the
    opposite one is, TOO FEW SEEDS if not even a unanimous sweep (p = 2^-n) could pass the
    first Holm step (alpha / m), else NOT REPLICATED."""
    if p_adj <= alpha:
        return Verdict.REPLICATED
    if p_opp_adj <= alpha:
        return Verdict.CONTRADICTED
    if 2.0 ** -n > alpha / m:
        return Verdict.TOO_FEW_SEEDS
    return Verdict.NOT_REPLICATED


#: a distribution-free 95% CI of a median needs n >= 6 (2 * 2^-n <= 0.05)
MIN_SEEDS_FOR_CI = 6


def interval_verdict(ci: tuple[float, float], interval: tuple[float, float], n: int,
                     null: float | None = None) -> Verdict:
    """A magnitude claim: REPLICATED if our CI overlaps the paper's interval; CONTRADICTED if the
    CI lies entirely on the other side of ``null`` (no effect) from the interval; else NOT
    REPLICATED (the effect exists but its size differs). TOO FEW SEEDS below 6 seeds."""
    if n < MIN_SEEDS_FOR_CI:
        return Verdict.TOO_FEW_SEEDS
    lo, hi = ci
    if hi >= interval[0] and lo <= interval[1]:
        return Verdict.REPLICATED
    if null is not None and ((interval[0] > null and hi < null) or (interval[1] < null and lo > null)):
        return Verdict.CONTRADICTED
    return Verdict.NOT_REPLICATED


def equivalence_test(x, low: float, high: float) -> TestResult:
    """TOST with sign tests: H1 is low < median(x) < high; ``pvalue`` is the larger of the two
    one-sided p-values; ``pvalue_opposite`` the smaller p of median(x) beyond either bound."""
    x = np.asarray(x, dtype=float)
    above_low, below_high = sign_test(x - low), sign_test(high - x)
    base = sign_test(x)
    return TestResult(max(above_low.pvalue, below_high.pvalue),
                      min(above_low.pvalue_opposite, below_high.pvalue_opposite),
                      base.effect, base.ci_low, base.ci_high, len(x), int(((x > low) & (x < high)).sum()))
