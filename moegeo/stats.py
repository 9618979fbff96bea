"""The statistics of the replication verdict, on scipy.stats.

Seeds are the unit: each seed gives one (paired) observation ``x``. Every test is an exact,
distribution-free test of the median of ``x`` (``scipy.stats.quantile_test``, the sign test in
its tie-conservative form: an observation equal to the hypothesised value counts against the
alternative), and every effect carries the exact order-statistic confidence interval of the
median, whose coverage is known for every n. With n seeds no p-value goes below 2^-n.

The decision rule, for a family of claims (``decide``):

* Each claim is one hypothesis with two sides: the claimed side (``pvalue``) and the opposite
  side (``pvalue_opposite``). Both one-sided p-values of every claim enter the family: Holm's
  step-down procedure runs over the 2m one-sided p-values at ``alpha``, which controls the
  family-wise rate of false and wrong-direction calls under any dependence between claims
  (all claims share the same seeds and models); identical hypotheses (the same observations
  under the same test) are counted once.
* A significant claimed side is REPLICATED; a significant opposite side is CONTRADICTED
  (direction and range claims) or DIFFERENT SIZE (magnitude claims). A significant direction
  whose median effect is smaller than the claim's smallest meaningful effect, either way, is
  NEGLIGIBLE. Otherwise NOT REPLICATED (INCONCLUSIVE for magnitudes), or TOO FEW SEEDS when
  not even a unanimous sweep could pass the first Holm step (2^-n > alpha / 2m).
* A claim made of parts that must all hold (a joint reading) is tested by intersection-union:
  the claimed side's p is the largest part's (exact, no correction needed), the opposite side's
  the smallest part's, Bonferroni-multiplied by the number of parts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import scipy.special
import scipy.stats

ALPHA = 0.05
#: the confidence level of every reported interval
CONFIDENCE = 0.95


class Verdict(str, Enum):
    REPLICATED = "REPLICATED"
    NOT_REPLICATED = "NOT REPLICATED"  # no significant effect either way
    NEGLIGIBLE = "NEGLIGIBLE"  # significant in the claimed direction, below the smallest meaningful effect
    CONTRADICTED = "CONTRADICTED"  # significant in the opposite direction / outside the claimed range
    DIFFERENT_SIZE = "DIFFERENT SIZE"  # magnitude: significantly outside the paper's (widened) interval
    INCONCLUSIVE = "INCONCLUSIVE"  # magnitude: neither inside nor outside significantly
    TOO_FEW_SEEDS = "TOO FEW SEEDS"  # even a unanimous sweep could not pass the correction
    CONDITION_NOT_MET = "CONDITION NOT MET"  # the claim's premise does not hold in our runs


@dataclass(frozen=True)
class Interval:
    """A confidence or prediction interval with its exact coverage."""

    low: float
    high: float
    coverage: float

    def __str__(self) -> str:
        return f"[{self.low:.4g}, {self.high:.4g}] ({100 * self.coverage:.1f}%)"


@dataclass(frozen=True)
class TestResult:
    """One claim's test on per-seed values ``x``.

    ``pvalue`` is the exact p-value of the claimed side, ``pvalue_opposite`` of the opposite side;
    ``n_claimed`` counts the seeds that individually point the claimed way.
    """

    pvalue: float
    pvalue_opposite: float
    effect: float  # median(x)
    ci: Interval  # exact CI of the median
    n: int
    n_claimed: int

def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    if len(x) == 0:
        raise ValueError("a test needs at least one seed, got none")
    if not np.isfinite(x).all():
        raise ValueError(f"per-seed values must be finite, got {x}")
    return x


def median_test(x, value: float = 0.0, alternative: str = "greater") -> float:
    """Exact sign test of H1: median(x) > value ("greater") or < value ("less").

    Conover's form, as ``scipy.stats.quantile_test`` (the oracle in the tests): "greater" has
    p = P(Bin(n, 1/2) <= #{x <= value}), "less" has p = P(Bin(n, 1/2) >= #{x < value}), so an
    observation equal to ``value`` counts against the alternative. Computed with the binomial
    ufunc ``scipy.special.bdtr`` (thousands of claims per second).
    """
    x = _finite(x)
    n = len(x)
    if alternative == "greater":
        return float(scipy.special.bdtr(int((x <= value).sum()), n, 0.5))
    if alternative == "less":
        t = int((x < value).sum())
        return 1.0 if t == 0 else float(scipy.special.bdtrc(t - 1, n, 0.5))
    raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")


def median_ci(x, confidence: float = CONFIDENCE) -> Interval:
    """Exact distribution-free CI of the median: order statistics ``[x_(k), x_(n+1-k)]`` with the
    largest k whose binomial coverage ``1 - 2 P(Bin(n, 1/2) <= k - 1)`` is at least ``confidence``
    (as ``scipy.stats.quantile_test(x).confidence_interval``). Below 6 seeds no such k exists:
    the range of ``x`` is returned with its (lower) exact coverage ``1 - 2^(1-n)``."""
    x = np.sort(_finite(x))
    n = len(x)
    tails = scipy.special.bdtr(np.arange(n // 2 + 1), n, 0.5)  # P(Bin <= j), j = 0 .. n//2
    k = max(1, int((tails <= (1 - confidence) / 2).sum()))  # tails[k-1] <= (1-conf)/2
    coverage = 1 - 2 * float(scipy.special.bdtr(k - 1, n, 0.5))
    return Interval(float(x[k - 1]), float(x[n - k]), coverage)


def prediction_interval(x, confidence: float = CONFIDENCE) -> Interval:
    """Distribution-free prediction interval for one more seed: ``[x_(j), x_(n+1-j)]`` covers a
    new i.i.d. draw with probability exactly ``(n + 1 - 2j) / (n + 1)``; j is the largest with
    coverage >= ``confidence``, or 1 (the range, coverage ``(n-1)/(n+1)``) when n is too small."""
    x = np.sort(_finite(x))
    n = len(x)
    j = max(1, math.floor((n + 1) * (1 - confidence) / 2))
    if n < 2:
        return Interval(float(x[0]), float(x[0]), 0.0)
    return Interval(float(x[j - 1]), float(x[n - j]), (n + 1 - 2 * j) / (n + 1))


def direction_test(x) -> TestResult:
    """Claimed: median(x) > 0. Opposite: median(x) < 0."""
    x = _finite(x)
    return TestResult(median_test(x, 0, "greater"), median_test(x, 0, "less"), float(np.median(x)),
                      median_ci(x), len(x), int((x > 0).sum()))


def equivalence_test(x, low: float, high: float) -> TestResult:
    """Claimed: low < median(x) < high, by two one-sided tests (TOST: the larger p). Opposite:
    the median lies beyond either bound (the smaller p, Bonferroni-doubled over the two bounds).

    Rejecting the claimed side's null at level a is the same as the (1 - 2a) exact CI of the
    median lying inside ``(low, high)``."""
    if not low < high:
        raise ValueError(f"equivalence interval must have low < high, got ({low}, {high})")
    x = _finite(x)
    p = max(median_test(x, low, "greater"), median_test(x, high, "less"))
    q = min(1.0, 2 * min(median_test(x, low, "less"), median_test(x, high, "greater")))
    return TestResult(p, q, float(np.median(x)), median_ci(x), len(x), int(((x > low) & (x < high)).sum()))


def intersection_union(tests: list[TestResult]) -> TestResult:
    """All parts must hold (Berger's intersection-union test): claimed p = the largest part p;
    opposite p = the smallest part's, times the number of parts (any part contradicted).
    Effect, CI and counts are those of the binding part: the one with the weakest evidence for
    the claim (largest claimed-side p, then smallest opposite p)."""
    if len(tests) == 1:
        return tests[0]
    b = max(tests, key=lambda t: (t.pvalue, -t.pvalue_opposite))
    return TestResult(max(t.pvalue for t in tests), min(1.0, len(tests) * min(t.pvalue_opposite for t in tests)),
                      b.effect, b.ci, b.n, b.n_claimed)


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


def holm_unique(pvalues, keys) -> np.ndarray:
    """Holm over the distinct hypotheses: rows with the same key (the same observations under the
    same test) are one hypothesis, counted once, and share its adjusted p-value."""
    keys = list(keys)
    first = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    uniq = list(first.values())
    adj = dict(zip(first, holm(np.asarray(pvalues, dtype=float)[uniq])))
    return np.array([adj[k] for k in keys])


def min_p(n: int) -> float:
    """The smallest one-sided p-value n seeds can give: a unanimous sweep, 2^-n."""
    return 2.0 ** -n


def decide(t: TestResult, p_adj: float, p_adj_opposite: float, kind: str, m: int, alpha: float = ALPHA,
           smallest_effect: float = 0.0) -> Verdict:
    """The verdict of one claim from its test and the Holm-adjusted p-values of its two sides.

    ``kind``: "direction", "equivalence" or "magnitude"; ``m``: the number of distinct
    hypotheses in the family (2m one-sided p-values); ``smallest_effect``: a significant
    direction claim whose |median effect| is below it is NEGLIGIBLE, whichever its side.
    """
    claimed, opposite = p_adj <= alpha, p_adj_opposite <= alpha
    if claimed or opposite:
        if kind == "direction" and abs(t.effect) < smallest_effect:
            return Verdict.NEGLIGIBLE
        if claimed:
            return Verdict.REPLICATED
        return Verdict.DIFFERENT_SIZE if kind == "magnitude" else Verdict.CONTRADICTED
    if min_p(t.n) > alpha / (2 * m):
        return Verdict.TOO_FEW_SEEDS
    return Verdict.INCONCLUSIVE if kind == "magnitude" else Verdict.NOT_REPLICATED


def power(effect_quantile: float, n: int, m: int, alpha: float = ALPHA) -> float:
    """Exact power of one direction claim under the worst case for Holm (every other hypothesis
    of the m null): P(its claimed-side p <= alpha / 2m) when each seed points the claimed way
    with probability ``effect_quantile``."""
    k = next((k for k in range(n + 1) if scipy.stats.binom.sf(k - 1, n, 0.5) <= alpha / (2 * m)), None)
    return 0.0 if k is None else float(scipy.stats.binom.sf(k - 1, n, effect_quantile))
