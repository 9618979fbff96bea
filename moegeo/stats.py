"""The statistics of the replication verdict, on scipy.stats: exact tests, one decision rule.

Seeds are the unit: each seed gives one (paired) observation. A claim's reading is made of one
or more **parts** (a joint reading, ``a+b``, must hold under each of its parts); each part is
the per-seed values ``x`` of one statistic.

**Hypotheses of a part.** A *direction* part with smallest meaningful effect delta >= 0 has
the exact one-sided sign tests of the median (``median_test``, Conover's tie-conservative form,
as ``scipy.stats.quantile_test``)

* ``rep``: median > +delta,  ``con``: median < -delta,
* and where delta > 0 also ``pos``: median > 0, ``neg``: median < 0 and ``eq``: -delta < median
  < delta (two one-sided tests, the larger p).

A *magnitude* part tests the paper's single-seed value v, anywhere in its reported interval
[a, b], against our seeds: ``dif`` is the two-sided prediction p-value of the point of [a, b]
closest to the seeds' mean under a normal model of the seeds, t = (v - mean) / (sd sqrt(1 +
1/n)) against Student's t with n - 1 degrees of freedom.

**One family, Holm.** Every hypothesis of every part of every reading of a family enters one
Holm step-down at ``alpha`` (identical hypotheses, the same values under the same test, count
once; ``M`` distinct hypotheses). This controls the family-wise rate of every call below under
any dependence: a false call needs a true hypothesis rejected. In a sensitivity family,
hypotheses that cannot reach significance are dropped first (Tarone's rule, ``tarone``), which
keeps that guarantee.

**Verdict of a part** from its rejected hypotheses: ``rep`` REPLICATED, ``con`` CONTRADICTED,
``eq`` NEGLIGIBLE, ``pos`` CLAIMED SIGN, SIZE UNDETERMINED, ``neg`` OPPOSITE SIGN, SIZE
UNDETERMINED; ``dif`` DIFFERENT SIZE, else CONSISTENT; nothing rejected: NOT REPLICATED, or TOO
FEW SEEDS when not even a unanimous sweep could pass Holm's first step (2^-n > alpha / M). A
hedged claim (an expectation, "may") is never contradicted: its CONTRADICTED and OPPOSITE SIGN
read NOT BORNE OUT. A two-sided claim holds with ``rep`` or ``con``; with ``eq`` it is NOT BORNE
OUT.

**A joint reading** combines its parts' verdicts (``combine``): REPLICATED only if every part
is; DEPENDS ON DEFINITION where some part supports the claim and another opposes it, each
significantly; CONTRADICTED where some part is contradicted and none supports it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import scipy.special
import scipy.stats

ALPHA = 0.05
#: the confidence level of every reported interval
CONFIDENCE = 0.95


class Verdict(str, Enum):
    REPLICATED = "REPLICATED"
    CONTRADICTED = "CONTRADICTED"
    NEGLIGIBLE = "NEGLIGIBLE"  # the effect is significantly inside (-delta, delta)
    CLAIMED_SIGN = "CLAIMED SIGN, SIZE UNDETERMINED"  # significant in the claimed direction, size not established
    OPPOSITE_SIGN = "OPPOSITE SIGN, SIZE UNDETERMINED"
    DEPENDS_ON_DEFINITION = "DEPENDS ON DEFINITION"  # parts of a joint reading significant in opposite directions
    CONSISTENT = "CONSISTENT"  # magnitude: the paper's value could be one of our seeds
    DIFFERENT_SIZE = "DIFFERENT SIZE"  # magnitude: it could not
    NOT_BORNE_OUT = "NOT BORNE OUT"  # a hedged expectation, significantly against
    NOT_REPLICATED = "NOT REPLICATED"  # nothing significant
    TOO_FEW_SEEDS = "TOO FEW SEEDS"  # even a unanimous sweep could not pass the correction
    CONDITION_NOT_MET = "CONDITION NOT MET"  # the claim's premise does not hold in our runs
    BY_CONSTRUCTION = "BY CONSTRUCTION"  # a declared control reaches the same verdict


#: verdicts that are significant calls (a control reaching one of them makes a claim BY CONSTRUCTION)
CALLS = frozenset(
    {
        Verdict.REPLICATED,
        Verdict.CONTRADICTED,
        Verdict.NEGLIGIBLE,
        Verdict.CLAIMED_SIGN,
        Verdict.OPPOSITE_SIGN,
        Verdict.DEPENDS_ON_DEFINITION,
        Verdict.CONSISTENT,
        Verdict.DIFFERENT_SIZE,
        Verdict.NOT_BORNE_OUT,
    }
)
SUPPORTS = frozenset({Verdict.REPLICATED, Verdict.CLAIMED_SIGN, Verdict.CONSISTENT})
OPPOSES = frozenset({Verdict.CONTRADICTED, Verdict.OPPOSITE_SIGN, Verdict.DIFFERENT_SIZE, Verdict.NOT_BORNE_OUT})


# --------------------------------------------------------------------------- tests and intervals
@dataclass(frozen=True)
class Interval:
    """A confidence or prediction interval with its coverage."""

    low: float
    high: float
    coverage: float

    def __str__(self) -> str:
        return f"[{self.low:.4g}, {self.high:.4g}] ({100 * self.coverage:.1f}%)"


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
    observation equal to ``value`` counts against the alternative. No p goes below 2^-n.
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
    (as ``scipy.stats.quantile_test(x).confidence_interval``). Below 6 seeds no such k exists at
    95%: the range of ``x`` is returned with its (lower) exact coverage ``1 - 2^(1-n)``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    x = np.sort(_finite(x))
    n = len(x)
    tails = scipy.special.bdtr(np.arange(n // 2 + 1), n, 0.5)  # P(Bin <= j), j = 0 .. n//2
    k = max(1, int((tails <= (1 - confidence) / 2).sum()))
    coverage = 1 - 2 * float(scipy.special.bdtr(k - 1, n, 0.5))
    return Interval(float(x[k - 1]), float(x[n - k]), coverage)


def prediction_interval(x, confidence: float = CONFIDENCE) -> Interval:
    """Normal-theory prediction interval for one more seed, mean +- t sd sqrt(1 + 1/n) with the
    Student quantile of n - 1 degrees of freedom: the interval the magnitude test inverts (its
    coverage is exact for normal seeds). Needs n >= 3."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    x = _finite(x)
    n = len(x)
    if n < 3:
        raise ValueError(f"a prediction interval needs at least 3 seeds, got {n}")
    half = scipy.stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) * math.sqrt(1 + 1 / n)
    return Interval(float(x.mean() - half), float(x.mean() + half), confidence)


def prediction_pvalue(x, low: float, high: float) -> float:
    """Two-sided p-value that one more draw of ``x``'s (normal) distribution lands at the point of
    ``[low, high]`` closest to the mean of ``x``: 1 when the mean lies inside it."""
    x = _finite(x)
    n, mean, sd = len(x), float(x.mean()), float(x.std(ddof=1))
    v = min(max(mean, low), high)
    if v == mean:
        return 1.0
    if sd == 0:
        return 0.0
    t = abs(v - mean) / (sd * math.sqrt(1 + 1 / n))
    return float(2 * scipy.stats.t.sf(t, n - 1))


def min_p(n: int) -> float:
    """The smallest one-sided sign-test p-value n seeds can give: a unanimous sweep, 2^-n."""
    return 2.0**-n


# --------------------------------------------------------------------------- parts and their hypotheses
@dataclass(frozen=True, eq=False)
class Part:
    """One part of a claim's reading: per-seed values ``x`` of one statistic.

    ``kind`` "direction" (median > 0 claimed, or either way if ``two_sided``) with smallest
    meaningful effect ``delta``; or "magnitude": the paper's single-seed value lies in
    ``interval`` (on the scale of ``x``). ``hedged``: the paper states an expectation, which is
    never contradicted, only not borne out.
    """

    x: np.ndarray
    kind: str = "direction"
    delta: float = 0.0
    interval: tuple[float, float] | None = None
    two_sided: bool = False
    hedged: bool = False

    def __post_init__(self):
        object.__setattr__(self, "x", _finite(self.x))
        if self.kind not in ("direction", "magnitude"):
            raise ValueError(f"kind must be 'direction' or 'magnitude', got {self.kind!r}")
        if not (math.isfinite(self.delta) and self.delta >= 0):
            raise ValueError(f"delta must be a finite number >= 0, got {self.delta}")
        if self.kind == "magnitude":
            if self.interval is None or not (
                math.isfinite(self.interval[0])
                and self.interval[0] <= self.interval[1]
                and math.isfinite(self.interval[1])
            ):
                raise ValueError(f"a magnitude part needs a finite interval low <= high, got {self.interval}")

    @property
    def n(self) -> int:
        return len(self.x)

    def hypotheses(self) -> dict[str, tuple[float, str, float]]:
        """name -> (p-value, identity key, smallest attainable p)."""
        x, d, tag = self.x, self.delta + 0.0, hashlib.sha1(self.x.tobytes()).hexdigest()
        nd = 0.0 - d  # -d without a negative zero, so equal thresholds give equal keys
        if self.kind == "magnitude":
            lo, hi = self.interval
            p = 1.0 if self.n < 3 else prediction_pvalue(x, lo, hi)
            return {"dif": (p, f"{tag}:pred:{lo!r}:{hi!r}", 0.0 if self.n >= 3 else 1.0)}
        out = {
            "rep": (median_test(x, d, "greater"), f"{tag}:>{d!r}", min_p(self.n)),
            "con": (median_test(x, nd, "less"), f"{tag}:<{nd!r}", min_p(self.n)),
        }
        if d > 0:
            out["pos"] = (median_test(x, 0.0, "greater"), f"{tag}:>0.0", min_p(self.n))
            out["neg"] = (median_test(x, 0.0, "less"), f"{tag}:<0.0", min_p(self.n))
            out["eq"] = (
                max(median_test(x, -d, "greater"), median_test(x, d, "less")),
                f"{tag}:tost:{d!r}",
                min_p(self.n),
            )
        return out


@dataclass(frozen=True)
class PartDecision:
    """The decision on one part: its ``verdict``, its ``rejected`` hypotheses, their raw ``p``
    and Holm-adjusted ``p_adj`` (1 for a hypothesis dropped as untestable)."""

    verdict: Verdict
    rejected: frozenset
    p: dict
    p_adj: dict


@dataclass(frozen=True)
class Decision:
    """The decision on one reading: ``verdict``, one ``PartDecision`` per part, and the family's
    number of distinct hypotheses tested, ``M``."""

    verdict: Verdict
    parts: tuple[PartDecision, ...]
    M: int
    dropped: int = 0  # hypotheses of the family dropped as untestable (Tarone)
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- multiplicity
def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values: sorted ascending, p_(j) adjusted to
    min(1, max_{i <= j} (M - i + 1) p_(i)) (family-wise error control under any dependence)."""
    p = np.asarray(pvalues, dtype=float)
    if p.size and not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1) | np.isnan(p)][:5]}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj


def tarone(min_ps, alpha: float = ALPHA) -> np.ndarray:
    """Tarone's rule for discrete tests: the hypotheses that can reach significance, the smallest
    K with #{i: min_p_i <= alpha / K} <= K, and those i. Dropping the others (they could never be
    rejected) keeps the family-wise error of the rest at alpha. Returns the boolean mask."""
    m = np.asarray(min_ps, dtype=float)
    for K in range(1, len(m) + 1):
        keep = m <= alpha / K
        if keep.sum() <= K:
            return keep
    return np.ones(len(m), dtype=bool)


# --------------------------------------------------------------------------- the decision
@dataclass(frozen=True)
class Hypothesis:
    """One distinct one-sided hypothesis of a family: its ``name`` (rep, con, pos, neg, eq, dif),
    raw ``p``, smallest attainable p ``floor`` and the index of the part it first came from."""

    name: str
    p: float
    floor: float
    part: int


def adjust(entries: dict[str, Hypothesis], alpha: float = ALPHA, drop_untestable: bool = False) -> dict[str, float]:
    """Holm-adjusted p-values of a family's distinct hypotheses (key -> p_adj), all of them in one
    step-down; with ``drop_untestable``, those Tarone's rule drops are left out (not tested)."""
    keys = list(entries)
    if drop_untestable:
        keys = [k for k, keep in zip(keys, tarone([entries[k].floor for k in keys], alpha)) if keep]
    return dict(zip(keys, holm([entries[k].p for k in keys])))


def part_verdict(part: Part, rejected: frozenset, M: int, alpha: float = ALPHA) -> Verdict:
    """The verdict of one part from its rejected hypotheses (module docstring)."""
    if part.kind == "magnitude":
        if "dif" in rejected:
            return Verdict.DIFFERENT_SIZE
        return Verdict.TOO_FEW_SEEDS if part.n < 3 else Verdict.CONSISTENT
    against = Verdict.NOT_BORNE_OUT if part.hedged else Verdict.CONTRADICTED
    if part.two_sided:
        if rejected & {"rep", "con"}:
            return Verdict.REPLICATED
        if "eq" in rejected:
            return Verdict.NOT_BORNE_OUT
        if rejected & {"pos", "neg"}:
            return Verdict.CLAIMED_SIGN
    else:
        if "rep" in rejected:
            return Verdict.REPLICATED
        if "con" in rejected:
            return against
        if "eq" in rejected:
            return Verdict.NEGLIGIBLE
        if "pos" in rejected:
            return Verdict.CLAIMED_SIGN
        if "neg" in rejected:
            return Verdict.NOT_BORNE_OUT if part.hedged else Verdict.OPPOSITE_SIGN
    if min_p(part.n) > alpha / max(M, 1):
        return Verdict.TOO_FEW_SEEDS
    return Verdict.NOT_REPLICATED


def combine(verdicts: list[Verdict]) -> Verdict:
    """A joint reading's verdict from its parts' (intersection-union: every part must hold)."""
    v = list(verdicts)
    if len(v) == 1:
        return v[0]
    if all(x is Verdict.REPLICATED for x in v):
        return Verdict.REPLICATED
    if all(x is Verdict.CONSISTENT for x in v):
        return Verdict.CONSISTENT
    supports, opposes = any(x in SUPPORTS for x in v), any(x in OPPOSES for x in v)
    if supports and opposes:
        return Verdict.DEPENDS_ON_DEFINITION
    for strong in (Verdict.CONTRADICTED, Verdict.NOT_BORNE_OUT, Verdict.DIFFERENT_SIZE, Verdict.OPPOSITE_SIGN):
        if strong in v:
            return strong
    if all(x is Verdict.NEGLIGIBLE for x in v):
        return Verdict.NEGLIGIBLE
    if all(x in SUPPORTS for x in v):
        return Verdict.CLAIMED_SIGN
    if all(x is Verdict.TOO_FEW_SEEDS for x in v):
        return Verdict.TOO_FEW_SEEDS
    return Verdict.NOT_REPLICATED


def decide(readings: list[list[Part]], alpha: float = ALPHA, *, drop_untestable: bool = False) -> list[Decision]:
    """The decision rule on one family: ``readings`` is a list of readings, each a list of
    ``Part``. Holm over every distinct hypothesis of every part (optionally after Tarone's
    ``drop_untestable``); returns one ``Decision`` per reading, in order."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    hyps = [[part.hypotheses() for part in reading] for reading in readings]
    entries: dict[str, Hypothesis] = {}
    for reading in hyps:
        for i, part in enumerate(reading):
            for name, (p, key, floor) in part.items():
                entries.setdefault(key, Hypothesis(name, p, floor, i))
    adjusted = adjust(entries, alpha, drop_untestable)
    M = len(adjusted)
    out = []
    for reading, parts in zip(readings, hyps):
        decisions = []
        for part, h in zip(reading, parts):
            p_adj = {name: adjusted.get(key, 1.0) for name, (_, key, _) in h.items()}
            rejected = frozenset(name for name, q in p_adj.items() if q <= alpha)
            decisions.append(
                PartDecision(
                    part_verdict(part, rejected, M, alpha), rejected, {name: v[0] for name, v in h.items()}, p_adj
                )
            )
        out.append(Decision(combine([d.verdict for d in decisions]), tuple(decisions), M, len(entries) - M))
    return out


# --------------------------------------------------------------------------- power
def power(q: float, n: int, M: int, alpha: float = ALPHA) -> float:
    """Exact power of one sign test at Holm's worst case (every other hypothesis of the M null, so
    it must pass alpha / M) when each seed lands beyond the threshold in the claimed direction
    with probability ``q``: P(Bin(n, q) >= k*), k* the fewest seeds whose p passes."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    k = next((k for k in range(n + 1) if scipy.stats.binom.sf(k - 1, n, 0.5) <= alpha / M), None)
    return 0.0 if k is None else float(scipy.stats.binom.sf(k - 1, n, q))


def seeds_needed(q: float, M: int, target: float = 0.8, alpha: float = ALPHA, most: int = 1000) -> int | None:
    """The fewest seeds giving ``power(q, n, M) >= target``; None if not within ``most``."""
    return next((n for n in range(1, most + 1) if power(q, n, M, alpha) >= target), None)


def normal_power(effect: float, sd: float, delta: float, n: int, M: int, alpha: float = ALPHA) -> float:
    """``power`` when the per-seed statistic is normal with mean ``effect`` and ``sd``, so each seed
    lands beyond ``delta`` with probability Phi((effect - delta) / sd)."""
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd}")
    return power(float(scipy.stats.norm.cdf((effect - delta) / sd)), n, M, alpha)
