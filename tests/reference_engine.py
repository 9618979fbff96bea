"""A minimal, independent implementation of the spec's `moegeo.stats` API (decision rule v2),
written only from decision_rule.md, to validate the oracle and the calibration tests.

Bug injection (to show that the calibration checks can fail): set `reference_engine.BUG` (or the
env var ORACLE_BUG before import) to one of
    "a"    per-direction Holm families (claimed side {rep,pos,eq,dif} / opposite {con,neg})
    "b-"   Holm denominators M - i            "b+"  Holm denominators M - i + 2
    "c"    sign test by normal approximation  "c_cc" the same with continuity correction
    "d"    M counts only rep/pos (+eq, dif): con/neg left out of M
    "e"    a joint reading: only its first part's hypotheses enter M
    "f"    (extra) single-step Bonferroni: reject iff p <= alpha/M, adjusted p = min(1, M p)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from enum import Enum
from functools import cache

import numpy as np
from scipy import stats as sps

BUG = os.environ.get("ORACLE_BUG", "")


class Verdict(str, Enum):
    REPLICATED = "REPLICATED"
    CONTRADICTED = "CONTRADICTED"
    NEGLIGIBLE = "NEGLIGIBLE"
    CLAIMED_SIGN = "CLAIMED SIGN, SIZE UNDETERMINED"
    OPPOSITE_SIGN = "OPPOSITE SIGN, SIZE UNDETERMINED"
    DEPENDS = "DEPENDS ON DEFINITION"
    CONSISTENT = "CONSISTENT"
    DIFFERENT_SIZE = "DIFFERENT SIZE"
    NOT_BORNE_OUT = "NOT BORNE OUT"
    NOT_REPLICATED = "NOT REPLICATED"
    TOO_FEW_SEEDS = "TOO FEW SEEDS"

    def __str__(self):
        return self.value


V = Verdict


@dataclass(eq=False)
class Part:
    x: np.ndarray
    kind: str = "direction"
    delta: float = 0.0
    two_sided: bool = False
    hedged: bool = False
    interval: tuple | None = None


@dataclass(frozen=True)
class PartDecision:
    verdict: Verdict
    rejected: frozenset
    p: dict
    p_adj: dict


@dataclass
class Decision:
    verdict: Verdict
    parts: list
    M: int


@cache
def _tables(n):
    c = [math.comb(n, j) for j in range(n + 1)]
    tot = 2**n
    cdf = [sum(c[: k + 1]) / tot for k in range(n + 1)]
    sf = [sum(c[k:]) / tot for k in range(n + 1)] + [0.0]
    return cdf, sf


def median_test(x, value, alternative):
    """Exact one-sided sign test (Conover, ties against the alternative)."""
    x = np.asarray(x, float)
    n = len(x)
    if alternative == "greater":
        t = int(np.count_nonzero(x <= value))
        if BUG in ("c", "c_cc"):
            cc = 0.5 if BUG == "c_cc" else 0.0
            return float(sps.norm.cdf((t + cc - n / 2) / (math.sqrt(n) / 2)))
        return _tables(n)[0][t]
    if alternative == "less":
        t = int(np.count_nonzero(x < value))
        if BUG in ("c", "c_cc"):
            cc = 0.5 if BUG == "c_cc" else 0.0
            return float(sps.norm.sf((t - cc - n / 2) / (math.sqrt(n) / 2)))
        return _tables(n)[1][t]
    raise ValueError(alternative)


def _denoms(m, Meff=None):
    Meff = m if Meff is None else Meff
    i = np.arange(1, m + 1)
    d = Meff - i + 1 + {"b-": -1, "b+": 1}.get(BUG, 0)
    if BUG in ("d", "e"):
        d = np.maximum(d, 1)
    return d


def holm(pvalues, Meff=None):
    """Holm-adjusted p-values: p_adj_(j) = min(1, max_{i<=j} (M-i+1) p_(i))."""
    p = np.asarray(pvalues, float)
    m = len(p)
    if m == 0:
        return p.copy()
    if BUG == "f":
        return np.minimum(1.0, m * p)
    order = np.argsort(p, kind="stable")
    d = _denoms(m, Meff).astype(float)
    scaled = d * p[order]
    adj_sorted = np.minimum(1.0, np.maximum.accumulate(scaled))
    out = np.empty(m)
    out[order] = adj_sorted
    return out


def _magnitude_p(x, interval):
    n = len(x)
    mean, sd = float(np.mean(x)), float(np.std(x, ddof=1))
    a, b = interval
    v = min(max(mean, a), b)
    if sd == 0:
        return 1.0 if v == mean else 0.0
    t = (v - mean) / (sd * math.sqrt(1 + 1 / n))
    return float(2 * sps.t.sf(abs(t), n - 1))


def _hypotheses(part):
    """List of (name, key, p) for one part."""
    x = np.asarray(part.x, float)
    xb = x.tobytes()
    out = []
    if part.kind == "magnitude":
        if len(x) >= 3:
            out.append(("dif", ("dif", tuple(part.interval), xb), _magnitude_p(x, part.interval)))
        return out
    d = float(part.delta)
    out.append(("rep", ("greater", d, xb), median_test(x, d, "greater")))
    out.append(("con", ("less", -d, xb), median_test(x, -d, "less")))
    if d > 0:
        out.append(("pos", ("greater", 0.0, xb), median_test(x, 0.0, "greater")))
        out.append(("neg", ("less", 0.0, xb), median_test(x, 0.0, "less")))
        eqp = max(median_test(x, -d, "greater"), median_test(x, d, "less"))
        out.append(("eq", ("eq", d, xb), eqp))
    return out


def _direction_verdict(part, R, n, M, alpha):
    if part.two_sided:
        if "rep" in R or "con" in R:
            return V.REPLICATED
        if "eq" in R:
            return V.NOT_BORNE_OUT
        if "pos" in R or "neg" in R:
            return V.CLAIMED_SIGN  # assumption: spec silent for two-sided pos/neg
    else:
        if "rep" in R:
            return V.REPLICATED
        if "con" in R:
            return V.NOT_BORNE_OUT if part.hedged else V.CONTRADICTED
        if "eq" in R:
            return V.NEGLIGIBLE
        if "pos" in R:
            return V.CLAIMED_SIGN
        if "neg" in R:
            return V.NOT_BORNE_OUT if part.hedged else V.OPPOSITE_SIGN
    if not R and 2.0**-n > alpha / M:
        return V.TOO_FEW_SEEDS
    return V.NOT_REPLICATED


def _joint(vs, kinds):
    if len(vs) == 1:
        return vs[0]
    sup = [v in (V.REPLICATED, V.CLAIMED_SIGN, V.CONSISTENT) for v in vs]
    opp = [v in (V.CONTRADICTED, V.OPPOSITE_SIGN, V.DIFFERENT_SIZE, V.NOT_BORNE_OUT) for v in vs]
    if all(v in (V.REPLICATED, V.CONSISTENT) for v in vs):
        return V.CONSISTENT if all(k == "magnitude" for k in kinds) else V.REPLICATED
    if all(v == V.DIFFERENT_SIZE for v in vs):
        return V.DIFFERENT_SIZE
    if any(sup) and any(opp):
        return V.DEPENDS
    for strong in (V.CONTRADICTED, V.NOT_BORNE_OUT, V.DIFFERENT_SIZE):  # spec amendment: opposing, none supporting
        if any(v == strong for v in vs):
            return strong
    if any(v == V.OPPOSITE_SIGN for v in vs):
        return V.OPPOSITE_SIGN
    if all(v == V.NEGLIGIBLE for v in vs):
        return V.NEGLIGIBLE
    if all(sup) and any(v == V.CLAIMED_SIGN for v in vs):
        return V.CLAIMED_SIGN
    if all(v == V.TOO_FEW_SEEDS for v in vs):
        return V.TOO_FEW_SEEDS
    return V.NOT_REPLICATED


def decide(readings, alpha=0.05):
    # collect distinct hypotheses
    keys, pvals, names_of_key, first_part_key = [], [], {}, {}
    index = {}
    per_part = []
    for reading in readings:
        row = []
        for j, part in enumerate(reading):
            hs = _hypotheses(part)
            hrow = []
            for name, key, p in hs:
                if key not in index:
                    index[key] = len(keys)
                    keys.append(key)
                    pvals.append(p)
                    names_of_key[key] = name
                    first_part_key[key] = j == 0
                elif j == 0:
                    first_part_key[key] = True
                hrow.append((name, index[key]))
            row.append(hrow)
        per_part.append(row)
    H = len(keys)
    pv = np.array(pvals, float)
    rejected = np.zeros(H, bool)
    padj = np.ones(H)
    names = [names_of_key[k] for k in keys]
    if BUG == "a":
        opp = np.array([nm in ("con", "neg") for nm in names], bool)
        groups = [(np.flatnonzero(~opp), None), (np.flatnonzero(opp), None)]
        M_report = H
    elif BUG == "d":
        groups = [(np.arange(H), int(sum(nm not in ("con", "neg") for nm in names)))]
        M_report = groups[0][1]
    elif BUG == "e":
        groups = [(np.arange(H), int(sum(first_part_key[k] for k in keys)))]
        M_report = groups[0][1]
    else:
        groups = [(np.arange(H), None)]
        M_report = H
    for cols, Meff in groups:
        if len(cols) == 0:
            continue
        adj = holm(pv[cols], Meff)
        padj[cols] = adj
        sub = pv[cols]
        order = np.argsort(sub, kind="stable")
        d = _denoms(len(cols), Meff).astype(float)
        thr = np.where(d > 0, alpha / np.where(d > 0, d, 1), np.inf)
        passed = np.cumprod(sub[order] <= thr).astype(bool)
        if BUG == "f":
            passed = sub[order] <= alpha / len(cols)
        r = np.zeros(len(cols), bool)
        r[order] = passed
        rejected[cols] = r
    M = max(M_report, 1)
    out = []
    for reading, row in zip(readings, per_part):
        pds, vs = [], []
        for part, hrow in zip(reading, row):
            R = frozenset(nm for nm, k in hrow if rejected[k])
            p = {nm: float(pv[k]) for nm, k in hrow}
            pa = {nm: float(padj[k]) for nm, k in hrow}
            n = len(part.x)
            if part.kind == "magnitude":
                if n < 3:
                    v = V.TOO_FEW_SEEDS
                elif "dif" in R:
                    v = V.DIFFERENT_SIZE
                else:
                    v = V.CONSISTENT
            else:
                v = _direction_verdict(part, R, n, M, alpha)
            vs.append(v)
            pds.append(PartDecision(v, R, p, pa))
        out.append(Decision(_joint(vs, [p.kind for p in reading]), pds, M))
    return out
