"""Seed-swept calibration of moegeo's decision rule v2 against an exact oracle.

Every calibration check simulates planted data (numpy, fixed seeds), feeds it through the
engine's public API (stats.Part / stats.decide), counts verdicts and compares the rate with the
oracle's exact value (oracle.py: exact binomial / multinomial enumeration).  The band is
exact +- 4 Monte-Carlo standard errors, sqrt(r (1 - r) / N).

Each check also asserts, with the oracle only, that the bugs it targets (bug models in
oracle.py: a per-direction Holm, b-/b+ Holm off by one, c/c_cc normal-approximation sign test,
d claimed sides only in M, e only a joint's first part in M, and an extra f single-step
Bonferroni) move the exact value outside the
band by a further 3 standard errors of the buggy rate, so the check documents that it can fail.

check_*() -> (passed, message) are plain functions (re-run by a bug-injection test); the
test_* wrappers assert them (tests/test_engine_mutations.py re-runs them with each bug injected
into moegeo.stats, and requires every bug to fail at least one). Written from the decision rule's
specification without reading moegeo.stats.
"""

from __future__ import annotations

import math
import os
import sys
from functools import cache

import numpy as np
import pytest
from scipy import stats as sps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stats_oracle as O  # noqa: E402

from moegeo import stats  # noqa: E402

ALPHA = 0.05
K_BAND = 4.0  # band half-width, in Monte-Carlo standard errors of the exact rate
K_BUG = 3.0  # a targeted bug must sit K_BAND*se + K_BUG*se_bug away from the exact rate
ALL_BUGS = ("a", "b-", "b+", "c", "c_cc", "d", "e", "f")  # f: extra (Bonferroni)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _v(verdict) -> str:
    """Verdict as its string value (stats.Verdict is a str Enum)."""
    return getattr(verdict, "value", verdict)


def _se(r, N):
    return math.sqrt(max(r * (1 - r), 0.0) / N)


def _judge(label, count, N, exact, bugs=None, targets=()):
    """Rate check: count/N within exact +- K_BAND se.  bugs: variant -> exact value under the
    bug model; for every variant in targets the design must make it detectable (asserted)."""
    se = _se(exact, N)
    lo, hi = exact - K_BAND * se, exact + K_BAND * se
    bugs = bugs or {}
    for b in targets:
        eb = bugs[b]
        gap = abs(eb - exact)
        need = K_BAND * se + K_BUG * _se(eb, N)
        assert gap > need, (
            f"design error in {label}: bug {b} exact {eb:.5f} vs {exact:.5f}, gap {gap:.5f} <= {need:.5f}"
        )
    rate = count / N
    ok = lo <= rate <= hi
    bugtxt = ", ".join(f"{b}={bugs[b]:.4f}" for b in targets)
    extra = [b for b in _detectable(exact, bugs, N) if b not in targets]
    msg = (
        f"{label}: rate {rate:.5f} ({count}/{N}), exact {exact:.5f}, band "
        f"[{max(lo, 0):.5f}, {hi:.5f}]"
        + (f"; targeted bugs: {bugtxt}" if bugtxt else "")
        + (f"; also outside: {', '.join(f'{b}={bugs[b]:.4f}' for b in extra)}" if extra else "")
    )
    return ok, msg


def _combine(results):
    ok = all(r[0] for r in results)
    return ok, " | ".join(("" if r[0] else "FAIL ") + r[1] for r in results)


def _detectable(exact, bugs, N):
    """Bug variants whose exact value lies outside the band (+ K_BUG se_bug) at this N."""
    se = _se(exact, N)
    return tuple(b for b, eb in bugs.items() if abs(eb - exact) > K_BAND * se + K_BUG * _se(eb, N))


# ------------------------------- cached oracle values ------------------------------------------
@cache
def _fwer(n, m, variant):
    return O.fwer_exact(n, m, variant=variant)


@cache
def _power(n, q, m_null, variant):
    return O.power_exact(n, q, m_null, variant=variant)  # multiset enumeration


@cache
def _family(spec, variant):
    """spec: tuple of readings, each a tuple of ('n', n, mu, sigma, delta) part descriptors."""
    readings = [[O.DirPart.normal(n, mu, sg, dl) for (_, n, mu, sg, dl) in rd] for rd in spec]
    return O.exact_family(readings, variant=variant)


def _family_prob(spec, variant, reading, verdict):
    return O.verdict_prob(_family(spec, variant), reading, verdict)


def _sim_family(rng, spec, N):
    """Simulate N families of spec (normal seeds) through stats.decide; yields decisions."""
    flat = [(r, j, n, mu, sg, dl) for r, rd in enumerate(spec) for j, (_, n, mu, sg, dl) in enumerate(rd)]
    draws = [rng.normal(mu, sg, size=(N, n)) for (_, _, n, mu, sg, _) in flat]
    for i in range(N):
        readings = [[] for _ in spec]
        for (r, _j, _n, _mu, _sg, dl), X in zip(flat, draws):
            readings[r].append(stats.Part(x=X[i], kind="direction", delta=dl, two_sided=False, hedged=False))
        yield stats.decide(readings, alpha=ALPHA)


def _count(spec, N, seed, events):
    """events: name -> (reading, verdict).  Returns counts."""
    rng = np.random.default_rng(seed)
    c = {k: 0 for k in events}
    for dec in _sim_family(rng, spec, N):
        for k, (r, v) in events.items():
            if _v(dec[r].verdict) == v:
                c[k] += 1
    return c


# ----------------------------------------------------------------------------------------------
# 1. family-wise error under the full null (m delta=0 claims, median 0, M = 2m)
# ----------------------------------------------------------------------------------------------
# exact values (oracle.fwer_full_null = 1 - (1 - 2 s)^m, s = P(Bin(n,1/2) >= k*(alpha/M))):
#   n=24, m=3: k*=19, FWER 0.01970; bugs a/c/d (threshold alpha/3 or normal approx): k*=18,
#              0.06644; b-/b+/c_cc/e leave k* at 19 (0.01970).
#   n=20, m=5: k*=17, FWER 0.01282; bugs a/c/d: k*=16, 0.05771.
#   n=23, m=5: k*=19, FWER 0.01293; bugs a/b-/c/d: k*=18, 0.05199 (b-: alpha/9 crosses
#              P(B>=18) = 0.00531 < 0.00556).
#   n=20, m=4: k*=16, FWER 0.04644; bugs b+/c_cc: k*=17, 0.01027 (alpha/9 = 0.00556 < P(B>=16)
#              = 0.00591 <= alpha/8).
FWER_DESIGNS = {  # (n, m): (N, targeted bugs)
    (24, 3): (1500, ("a", "c", "d")),
    (20, 5): (1500, ("a", "c", "d")),
    (23, 5): (1500, ("a", "b-", "c", "d")),
    (20, 4): (1500, ("b+", "c_cc")),
}


def _check_fwer(n, m, seed):
    N, targets = FWER_DESIGNS[(n, m)]
    exact = _fwer(n, m, "ok")
    closed = O.fwer_full_null(n, m)
    assert abs(exact - closed) < 1e-12
    assert exact <= ALPHA, f"oracle FWER {exact} > alpha"
    bugs = {b: _fwer(n, m, b) for b in ALL_BUGS}
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 1.0, size=(N, m, n))
    hits = 0
    for i in range(N):
        dec = stats.decide([[stats.Part(x=X[i, j], kind="direction", delta=0.0)] for j in range(m)], alpha=ALPHA)
        if any(len(pd.rejected) > 0 for d in dec for pd in d.parts):
            hits += 1
    return _judge(f"FWER full null n={n} m={m} (M={2 * m})", hits, N, exact, bugs, targets)


def check_fwer_null_n24_m3():
    return _check_fwer(24, 3, 101)


def check_fwer_null_n20_m5():
    return _check_fwer(20, 5, 102)


def check_fwer_null_n23_m5():
    return _check_fwer(23, 5, 103)


def check_fwer_null_n20_m4():
    return _check_fwer(20, 4, 104)


# ----------------------------------------------------------------------------------------------
# 2. power at a planted effect, other hypotheses null (worst case for Holm)
# ----------------------------------------------------------------------------------------------
# claim 1: P(seed > 0) = q (seeds N(mu, 1) with Phi(mu) = q), m_null null delta=0 claims.
#   n=20, m_null=3 (M=8), q=0.8: k*=16, exact power 0.62965 (bound P(Bin(20,.8)>=16) = 0.62965);
#              bugs b+/c_cc: k*=17, 0.41313.
#   n=23, m_null=4 (M=10), q=0.8: k*=19, exact 0.50272 (bound 0.50071); bugs a/b-/c/d: k*=18,
#              0.69469.
POWER_DESIGNS = {  # (n, q, m_null): (N, targets)
    (20, 0.8, 3): (600, ("b+", "c_cc")),
    (23, 0.8, 4): (600, ("a", "b-", "c", "d")),
}


def _check_power(n, q, m_null, seed):
    N, targets = POWER_DESIGNS[(n, q, m_null)]
    exact = _power(n, q, m_null, "ok")
    M = 2 + 2 * m_null
    lb = O.power_lower_bound(n, q, M)
    assert lb <= exact + 1e-12 and exact - lb < 0.01, (lb, exact)
    bugs = {b: _power(n, q, m_null, b) for b in ALL_BUGS}
    mu = float(sps.norm.ppf(q))
    rng = np.random.default_rng(seed)
    X1 = rng.normal(mu, 1.0, size=(N, n))
    X0 = rng.normal(0.0, 1.0, size=(N, m_null, n))
    hits = 0
    for i in range(N):
        readings = [[stats.Part(x=X1[i], kind="direction", delta=0.0)]]
        readings += [[stats.Part(x=X0[i, j], kind="direction", delta=0.0)] for j in range(m_null)]
        dec = stats.decide(readings, alpha=ALPHA)
        hits += _v(dec[0].verdict) == "REPLICATED"
    return _judge(
        f"power n={n} q={q} M={M} (k*={O.first_step_threshold(n, M)}, lower bound {lb:.5f})",
        hits,
        N,
        exact,
        bugs,
        targets,
    )


def check_power_n20_M8():
    return _check_power(20, 0.8, 3, 201)


def check_power_n23_M10():
    return _check_power(23, 0.8, 4, 202)


# ----------------------------------------------------------------------------------------------
# 3. two-part joint readings, both sides
# ----------------------------------------------------------------------------------------------
# REPLICATED side: part 1 at its boundary, part 2 a sure effect (the least favourable point of
# the intersection-union null); CONTRADICTED side: both parts at the opposite boundary.
# (a) delta = 0, n = 18, alone in the family (M = 4):
#     P(REPLICATED) 0.01544 (bugs a/d/e 0.04813, b+/c_cc 0.00377);
#     P(CONTRADICTED) 0.00741 (bugs a/b-/c 0.03017, d/e 0.02916).
# (b) delta = 1, sigma = 0.5, n = 10, alone (M = 10):
#     P(REPLICATED) 0.00098 (bugs a/c/d/e 0.01074, just detectable at N = 2000);
#     P(CONTRADICTED) 0.00195 (a 0.02137,
#     c/d 0.01666, e 0.02119).
# P(REPLICATED) with BOTH parts at the boundary (oracle.joint_boundary) is ~s^2 (< 1e-4) and is
# bounded, not simulated.
def _p(n, mu, sigma, delta):
    return ("n", n, mu, sigma, delta)


JOINT_DESIGNS = {
    "delta0_n18": dict(
        rep=((_p(18, 0.0, 1.0, 0.0), _p(18, 3.1, 1.0, 0.0)),),
        con=((_p(18, 0.0, 1.0, 0.0), _p(18, 0.0, 1.0, 0.0)),),
        N=2000,
        rep_targets=("a", "d", "e"),
        con_targets=("a", "b-", "c", "d", "e"),
    ),
    "delta1_n10": dict(
        rep=((_p(10, 1.0, 0.5, 1.0), _p(10, 4.0, 0.5, 1.0)),),
        con=((_p(10, -1.0, 0.5, 1.0), _p(10, -1.0, 0.5, 1.0)),),
        N=2000,
        rep_targets=("a", "c", "d", "e"),
        con_targets=("a", "c", "d", "e"),
    ),
}


def _check_joint(name, seed):
    D = JOINT_DESIGNS[name]
    N = D["N"]
    out = []
    for side, verdict, targets, s in (
        ("rep", "REPLICATED", D["rep_targets"], seed),
        ("con", "CONTRADICTED", D["con_targets"], seed + 1),
    ):
        spec = D[side]
        exact = _family_prob(spec, "ok", 0, verdict)
        bugs = {b: _family_prob(spec, b, 0, verdict) for b in ALL_BUGS}
        c = _count(spec, N, s, {"v": (0, verdict)})["v"]
        out.append(_judge(f"joint {name} false {verdict}", c, N, exact, bugs, targets))
    return _combine(out)


def check_joint_delta0_n18():
    return _check_joint("delta0_n18", 301)


def check_joint_delta1_n10():
    return _check_joint("delta1_n10", 303)


# ----------------------------------------------------------------------------------------------
# 4. false REPLICATED of one delta>0 claim whose median is exactly +delta
# ----------------------------------------------------------------------------------------------
# n = 20, delta = 1, sigma = 1, alone (M = 5): exact 0.00591 = P(Bin(20,1/2) >= 16), between the
# oracle's bounds 0.00591 (first step, alpha/5) and 0.01181 (any true null <= alpha/4); bugs a/d
# (M counted as 3: rep tested at alpha/3, or alpha/2 once pos is rejected: k* = 15) 0.02065.
def check_false_replicated_boundary():
    N = 3000
    spec = ((_p(20, 1.0, 1.0, 1.0),),)
    exact, lo_b, hi_b = O.false_replicated_boundary(20, 1.0, 0, sigma=1.0)
    assert abs(exact - _family_prob(spec, "ok", 0, "REPLICATED")) < 1e-12
    assert lo_b - 1e-12 <= exact <= hi_b + 1e-12 <= ALPHA
    bugs = {b: _family_prob(spec, b, 0, "REPLICATED") for b in ALL_BUGS}
    c = _count(spec, N, 401, {"v": (0, "REPLICATED")})["v"]
    return _judge("false REPLICATED at median +delta (n=20, M=5)", c, N, exact, bugs, ("a", "d"))


# Holm's step-down matters here: n = 16, delta = 1, sigma = 0.5, alone (M = 5).  The claim's own
# pos (median +delta > 0: a false null) is rejected first with probability ~1, so rep is tested
# at alpha/4 = 0.0125 >= P(Bin(16,1/2) >= 12) = 0.01064: exact 0.01063, although its first-step
# size at alpha/5 is only P(B >= 13) = 0.00209.  Bugs b+ (alpha/5 at step 2) and f (single-step
# Bonferroni, no step-down) give 0.00209.
def check_false_replicated_stepdown_n16():
    N = 5000
    spec = ((_p(16, 1.0, 0.5, 1.0),),)
    exact, lo_b, hi_b = O.false_replicated_boundary(16, 1.0, 0, sigma=0.5)
    assert lo_b - 1e-12 <= exact <= hi_b + 1e-12 and hi_b - lo_b > 0.008
    bugs = {b: _family_prob(spec, b, 0, "REPLICATED") for b in ALL_BUGS}
    c = _count(spec, N, 402, {"v": (0, "REPLICATED")})["v"]
    return _judge(
        f"false REPLICATED at +delta, step-down via pos (n=16, M=5; first-step size "
        f"{lo_b:.5f}, upper bound {hi_b:.5f})",
        c,
        N,
        exact,
        bugs,
        ("b+", "f"),
    )


# ----------------------------------------------------------------------------------------------
# 5. NEGLIGIBLE only when the truth is inside (-delta, delta)
# ----------------------------------------------------------------------------------------------
# one claim, n = 20, delta = 1, sigma = 1 (M = 5)
#   mu = 0.95 delta: P(REPLICATED) 0.00353 <= its size at the boundary 0.00591;
#                    P(NEGLIGIBLE) 0.00958 (a correct call here)
#   mu = -0.8 delta: P(OPPOSITE SIGN) 0.56919 (bug a 0.74664), P(NEGLIGIBLE) 0.03431 <= alpha,
#                    P(CONTRADICTED) 0.00063; and per simulation the verdict follows R as the
#                    spec orders it (con in R -> CONTRADICTED, never NEGLIGIBLE; neg in R
#                    without eq -> OPPOSITE SIGN; NEGLIGIBLE only with eq in R; nothing -> NOT
#                    REPLICATED)
#   mu = -1.2 delta: truth outside, P(NEGLIGIBLE) 0.00063 <= alpha; P(CONTRADICTED) 0.03439
#                    (bugs a 0.0911, d 0.0910)
def _spec_direction_verdict(R):
    if "rep" in R:
        return "REPLICATED"
    if "con" in R:
        return "CONTRADICTED"
    if "eq" in R:
        return "NEGLIGIBLE"
    if "pos" in R:
        return "CLAIMED SIGN, SIZE UNDETERMINED"
    if "neg" in R:
        return "OPPOSITE SIGN, SIZE UNDETERMINED"
    return "NOT REPLICATED"  # 2^-20 < alpha/5: never TOO FEW SEEDS here


def _neg_point(mu, N, seed, checks):
    spec = ((_p(20, mu, 1.0, 1.0),),)
    rng = np.random.default_rng(seed)
    counts, mismatch = {}, []
    for dec in _sim_family(rng, spec, N):
        v = _v(dec[0].verdict)
        counts[v] = counts.get(v, 0) + 1
        R = set(dec[0].parts[0].rejected)
        want = _spec_direction_verdict(R)
        if v != want and len(mismatch) < 3:
            mismatch.append(f"R={sorted(R)} verdict {v!r}, spec {want!r}")
    out = []
    for verdict, targets in checks:
        exact = _family_prob(spec, "ok", 0, verdict)
        bugs = {b: _family_prob(spec, b, 0, verdict) for b in ALL_BUGS}
        out.append(_judge(f"mu={mu} {verdict}", counts.get(verdict, 0), N, exact, bugs, targets))
    out.append(
        (
            not mismatch,
            f"mu={mu} verdict follows R in the spec's order" + (": " + "; ".join(mismatch) if mismatch else ""),
        )
    )
    return _combine(out), counts


def check_negligible_inside_095():
    N = 1500
    (ok, msg), counts = _neg_point(0.95, N, 501, [("REPLICATED", ()), ("NEGLIGIBLE", ())])
    size_boundary = O.false_replicated_boundary(20, 1.0, 0)[0]
    exact_rep = _family_prob(((_p(20, 0.95, 1.0, 1.0),),), "ok", 0, "REPLICATED")
    assert exact_rep <= size_boundary
    # rare: not above the boundary size plus the band
    hi = size_boundary + K_BAND * _se(size_boundary, N)
    rare = counts.get("REPLICATED", 0) / N <= hi
    return ok and rare, msg + f" | REPLICATED rate <= boundary size band {hi:.5f}: {rare}"


def check_negligible_not_relabelled_m080():
    N = 1000
    (ok, msg), counts = _neg_point(
        -0.8,
        N,
        502,
        [
            ("OPPOSITE SIGN, SIZE UNDETERMINED", ("a",)),
            ("NEGLIGIBLE", ()),
            ("CONTRADICTED", ()),
            ("NOT REPLICATED", ("a",)),
        ],
    )
    exact_neg = _family_prob(((_p(20, -0.8, 1.0, 1.0),),), "ok", 0, "NEGLIGIBLE")
    assert exact_neg <= ALPHA
    hi = ALPHA + K_BAND * _se(ALPHA, N)
    bounded = counts.get("NEGLIGIBLE", 0) / N <= hi
    return ok and bounded, msg + f" | NEGLIGIBLE rate <= alpha band {hi:.5f}: {bounded}"


def check_negligible_outside_m120():
    N = 1000
    (ok, msg), counts = _neg_point(-1.2, N, 503, [("NEGLIGIBLE", ()), ("CONTRADICTED", ("a", "d"))])
    hi = ALPHA + K_BAND * _se(ALPHA, N)
    bounded = counts.get("NEGLIGIBLE", 0) / N <= hi
    return ok and bounded, msg + f" | NEGLIGIBLE rate <= alpha band {hi:.5f}: {bounded}"


# ----------------------------------------------------------------------------------------------
# 6. magnitude consistency test: exact size under normal data
# ----------------------------------------------------------------------------------------------
# H0: the paper's value y is one more draw of the seeds' normal distribution; interval [y, y].
# Then p is exactly U(0,1):  alone (M = 1) P(DIFFERENT SIZE) = alpha = 0.05 (n = 4; a z instead
# of t gives 0.145); with one null delta=0 direction claim (n = 10, M = 3) the exact rate is
# 0.016846 (oracle.magnitude_with_directions; a first-step-only value would be alpha/3).
def check_magnitude_size():
    out = []
    rng = np.random.default_rng(601)
    N = 2000
    n = 4
    X = rng.normal(0.0, 1.0, size=(N, n + 1))
    c = 0
    for i in range(N):
        y = float(X[i, n])
        dec = stats.decide([[stats.Part(x=X[i, :n], kind="magnitude", interval=(y, y))]], alpha=ALPHA)
        c += _v(dec[0].verdict) == "DIFFERENT SIZE"
    out.append(_judge("magnitude alone n=4 (M=1)", c, N, O.magnitude_in_family(1)))
    N = 3000
    exact = O.magnitude_with_directions([[O.DirPart(10)]])
    X = rng.normal(0.0, 1.0, size=(N, 6))
    Z = rng.normal(0.0, 1.0, size=(N, 10))
    c = 0
    for i in range(N):
        y = float(X[i, 5])
        dec = stats.decide(
            [
                [stats.Part(x=X[i, :5], kind="magnitude", interval=(y, y))],
                [stats.Part(x=Z[i], kind="direction", delta=0.0)],
            ],
            alpha=ALPHA,
        )
        c += _v(dec[0].verdict) == "DIFFERENT SIZE"
    out.append(_judge("magnitude n=5 with a null direction claim (M=3)", c, N, exact))
    return _combine(out)


# ----------------------------------------------------------------------------------------------
# 7. unit checks: median_test vs scipy, holm by hand, p / p_adj / M of a mixed family
# ----------------------------------------------------------------------------------------------
def check_median_test_matches_scipy():
    rng = np.random.default_rng(701)
    bad = []
    for _ in range(300):
        n = int(rng.integers(1, 26))
        x = rng.integers(0, 6, size=n).astype(float)  # many ties
        for value in (float(rng.integers(-1, 7)), 2.5, float(x[0])):
            for alt in ("greater", "less"):
                got = float(stats.median_test(x, value, alt))
                want = float(sps.quantile_test(x, q=value, p=0.5, alternative=alt).pvalue)
                if not math.isclose(got, want, rel_tol=1e-10, abs_tol=1e-14):
                    bad.append((list(x), value, alt, got, want))
    return (not bad), f"median_test vs scipy.stats.quantile_test: {len(bad)} mismatches {bad[:2]}"


HOLM_CASES = [
    # p, hand-computed adjusted p (sorted 0.005, 0.01, 0.03, 0.04 -> 4*.005, 3*.01, 2*.03,
    # max(.06, 1*.04) -> .02, .03, .06, .06; back in input order)
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
    # clipping at 1 and monotonicity: 2*.6 = 1.2 -> 1, then max(1, .7) = 1
    ([0.6, 0.7], [1.0, 1.0]),
    # ties: 3*.01 = .03 for both tied values at ranks 1 and 2 (max(.03, 2*.01) = .03), 1*.2
    ([0.01, 0.2, 0.01], [0.03, 0.2, 0.03]),
    ([0.001], [0.001]),
    # 5 values: sorted .001 .002 .02 .03 .5 -> .005 .008 .06 .06 .5
    ([0.5, 0.02, 0.001, 0.03, 0.002], [0.5, 0.06, 0.005, 0.06, 0.008]),
]


def check_holm_hand():
    bad = []
    for p, want in HOLM_CASES:
        got = np.asarray(stats.holm(np.array(p)), float)
        if not np.allclose(got, want, rtol=1e-12, atol=1e-15):
            bad.append((p, list(got), want))
        if not np.allclose(O.holm_adjusted(p), want, rtol=1e-12, atol=1e-15):
            raise AssertionError(f"oracle holm wrong on {p}")
    return (not bad), f"holm vs hand computation: {bad}"


def check_family_internals():
    """Mixed family: delta>0 claim, delta=0 claim, magnitude, a two-part joint, and the same
    data reused (identical hypotheses count once).  Per simulation: every raw p equals the
    oracle's formula, p_adj equals Holm over the family's distinct p-values, rejected equals
    {p_adj <= alpha} and the Holm step-down, and d.M equals the distinct count."""
    rng = np.random.default_rng(801)
    bad = []
    for _it in range(200):
        x1 = rng.normal(0.6, 1.0, 20)
        x2 = rng.normal(0.0, 1.0, 24)
        x3 = rng.normal(0.0, 1.0, 6)
        y = float(rng.normal())
        j1, j2 = rng.normal(1.2, 1.0, 16), rng.normal(-0.3, 1.0, 16)
        readings = [
            [stats.Part(x=x1, kind="direction", delta=0.5)],
            [stats.Part(x=x2, kind="direction", delta=0.0)],
            [stats.Part(x=x3, kind="magnitude", interval=(y - 0.1, y + 0.1))],
            [stats.Part(x=j1, kind="direction", delta=0.5), stats.Part(x=j2, kind="direction", delta=0.5)],
            # the same data x1 at delta = 0: its rep/con are reading 0's pos/neg (count once)
            [stats.Part(x=x1, kind="direction", delta=0.0)],
        ]
        dec = stats.decide(readings, alpha=ALPHA)
        # oracle p-values, keyed by (test, threshold, the values) for de-duplication
        fam = {}
        want_p = []
        for r, rd in enumerate(readings):
            row = []
            for part in rd:
                xk = np.asarray(part.x, float).tobytes()
                if part.kind == "magnitude":
                    pv = {"dif": O.magnitude_p(part.x, part.interval)}
                    keys = {"dif": ("dif", tuple(part.interval), xk)}
                else:
                    d = float(part.delta)
                    pv = O.direction_pvalues(part.x, d)
                    keys = {
                        "rep": ("g", d, xk),
                        "con": ("l", -d, xk),
                        "pos": ("g", 0.0, xk),
                        "neg": ("l", 0.0, xk),
                        "eq": ("eq", d, xk),
                    }
                for h, p in pv.items():
                    fam[keys[h]] = p
                row.append((pv, keys))
            want_p.append(row)
        keys = list(fam)
        M = len(keys)
        adj = dict(zip(keys, O.holm_adjusted([fam[k] for k in keys])))
        rej = dict(zip(keys, O.holm_rejected([fam[k] for k in keys])))
        if dec[0].M != M or M != 5 + 2 + 1 + 10:
            bad.append(f"M {dec[0].M} != {M}")
        for r, row in enumerate(want_p):
            for j, (pv, ks) in enumerate(row):
                pd = dec[r].parts[j]
                for h, p in pv.items():
                    if not math.isclose(pd.p[h], p, rel_tol=1e-9, abs_tol=1e-15):
                        bad.append(f"p[{h}] reading {r}: {pd.p[h]} != {p}")
                    if not math.isclose(pd.p_adj[h], adj[ks[h]], rel_tol=1e-9, abs_tol=1e-15):
                        bad.append(f"p_adj[{h}] reading {r}: {pd.p_adj[h]} != {adj[ks[h]]}")
                want_R = {h for h in pv if rej[ks[h]]}
                if set(pd.rejected) & set(pv) != want_R:
                    bad.append(f"R reading {r}: {sorted(pd.rejected)} != {sorted(want_R)}")
                if want_R != {h for h in pv if adj[ks[h]] <= ALPHA}:
                    raise AssertionError("oracle: Holm rejections != adjusted <= alpha")
        if bad:
            break
    return (not bad), f"family internals (200 families, M=18): {bad[:3]}"


def _data_with_counts(counts, delta):
    """Seeds with the given cell counts: delta = 0: (K below 0, rest above); delta > 0:
    (c0 < -d, -d <= c1 < 0, 0 <= c2 < d, c3 >= d); jittered, never on a threshold."""
    if delta == 0:
        K, n = counts
        return np.concatenate([-1.0 - 0.01 * np.arange(K), 1.0 + 0.01 * np.arange(n - K)])
    d = delta
    c0, c1, c2, c3 = counts
    return np.concatenate(
        [
            -1.5 * d - 0.01 * np.arange(c0),
            -0.5 * d - 0.01 * np.arange(c1),
            0.5 * d + 0.01 * np.arange(c2),
            1.5 * d + 0.01 * np.arange(c3),
        ]
    )


def _outcomes(part):
    """(counts, probability) of every count outcome of an oracle DirPart (no pruning)."""
    n = part.n
    if part.delta == 0:
        return [((k, n), sps.binom.pmf(k, n, part.p_below)) for k in range(n + 1)]
    out = []
    for c0 in range(n + 1):
        for c1 in range(n + 1 - c0):
            for c2 in range(n + 1 - c0 - c1):
                c = (c0, c1, c2, n - c0 - c1 - c2)
                out.append((c, float(sps.multinomial.pmf(c, n, part.cells))))
    return out


def check_exact_enumeration_small():
    """Exact, not statistical: enumerate every count configuration of a small family, build
    seeds with those counts, run stats.decide on each, weight by the configuration's
    probability, and compare the engine's exact verdict distribution with the oracle's."""
    from itertools import product

    bad = []
    families = [
        # M = 5 + 2 = 7; 2^-8 <= alpha/7
        [[O.DirPart.normal(8, 0.3, 1.0, 0.5)], [O.DirPart(8, p_below=0.3)]],
        # a joint reading alone, M = 7; 2^-5 and 2^-6 > alpha/7: TOO FEW SEEDS reachable
        [[O.DirPart.normal(5, -0.4, 1.0, 0.5), O.DirPart(6, p_below=0.6)]],
    ]
    for fam in families:
        want = O.exact_family(fam, merge=False, prune=0.0).verdicts
        parts = [p for rd in fam for p in rd]
        outs = [_outcomes(p) for p in parts]
        got = [dict() for _ in fam]
        for combo in product(*outs):
            prob = float(np.prod([c[1] for c in combo]))
            xs = iter([_data_with_counts(c[0], p.delta) for c, p in zip(combo, parts)])
            readings = [[stats.Part(x=next(xs), kind="direction", delta=p.delta) for p in rd] for rd in fam]
            dec = stats.decide(readings, alpha=ALPHA)
            for r, d in enumerate(dec):
                v = _v(d.verdict)
                got[r][v] = got[r].get(v, 0.0) + prob
        bad += [
            (r, k, got[r].get(k, 0), want[r].get(k, 0))
            for r in range(len(fam))
            for k in set(got[r]) | set(want[r])
            if abs(got[r].get(k, 0) - want[r].get(k, 0)) > 1e-9
        ]
    return (not bad), f"exact enumeration of two small families (1485 + 392 configurations): mismatches {bad[:4]}"


def check_dedupe_by_value():
    """Spec: identical hypotheses (same per-seed VALUES under the same test and threshold) count
    once -- also when the arrays are distinct objects with equal values."""
    x = np.linspace(-1.0, 2.0, 12)
    cases = [
        ([[stats.Part(x=x, kind="direction", delta=0.0)], [stats.Part(x=x.copy(), kind="direction", delta=0.0)]], 2),
        ([[stats.Part(x=x, kind="direction", delta=0.5)], [stats.Part(x=x.copy(), kind="direction", delta=0.0)]], 5),
        ([[stats.Part(x=x, kind="direction", delta=0.5)], [stats.Part(x=x + 1e-9, kind="direction", delta=0.5)]], 10),
    ]
    bad = []
    for readings, M in cases:
        got = stats.decide(readings, alpha=ALPHA)[0].M
        if got != M:
            bad.append(f"M {got} != {M}")
    return (not bad), f"de-duplication by values: {bad}"


def check_verdict_examples():
    """Deterministic examples of the rules (TOO FEW SEEDS, unanimous sweep, magnitude n < 3,
    hedged and two-sided readings)."""
    bad = []

    def one(readings, r, want):
        got = _v(stats.decide(readings, alpha=ALPHA)[r].verdict)
        if got != want:
            bad.append(f"{want} expected, got {got}")

    up4, up6 = np.arange(1.0, 5.0), np.arange(1.0, 7.0)
    one([[stats.Part(x=up4, kind="direction", delta=0.0)]], 0, "TOO FEW SEEDS")  # 1/16 > .025
    one([[stats.Part(x=up6, kind="direction", delta=0.0)]], 0, "REPLICATED")  # 1/64 <= .025
    one([[stats.Part(x=-up6, kind="direction", delta=0.0)]], 0, "CONTRADICTED")
    one([[stats.Part(x=-up6, kind="direction", delta=0.0, hedged=True)]], 0, "NOT BORNE OUT")
    one([[stats.Part(x=-up6, kind="direction", delta=0.0, two_sided=True)]], 0, "REPLICATED")
    one([[stats.Part(x=np.array([0.1, 0.2]), kind="magnitude", interval=(5.0, 6.0))]], 0, "TOO FEW SEEDS")
    one([[stats.Part(x=np.array([0.1, 0.2, 0.15, 0.12]), kind="magnitude", interval=(0.0, 1.0))]], 0, "CONSISTENT")
    # 12 seeds all in (0, 0.5) with delta 1: eq rejected (p = 2^-12 for both TOST halves)
    small = np.linspace(0.05, 0.45, 12)
    one([[stats.Part(x=small, kind="direction", delta=1.0)]], 0, "NEGLIGIBLE")
    one([[stats.Part(x=small, kind="direction", delta=1.0, two_sided=True)]], 0, "NOT BORNE OUT")
    # all seeds in (0, 1) but some near 1: pos rejected, eq and rep not -> CLAIMED SIGN
    mid = np.array([0.9] * 7 + [1.5] * 5)
    one([[stats.Part(x=mid, kind="direction", delta=1.0)]], 0, "CLAIMED SIGN, SIZE UNDETERMINED")
    one([[stats.Part(x=-mid, kind="direction", delta=1.0)]], 0, "OPPOSITE SIGN, SIZE UNDETERMINED")
    # joint: one part replicated, the other contradicted
    up8 = np.arange(1.0, 9.0)  # M = 4: 2^-8 <= alpha/4
    one(
        [[stats.Part(x=up8 + 10, kind="direction", delta=0.0), stats.Part(x=-up8 - 10, kind="direction", delta=0.0)]],
        0,
        "DEPENDS ON DEFINITION",
    )
    one(
        [[stats.Part(x=up8 + 10, kind="direction", delta=0.0), stats.Part(x=up8 + 20, kind="direction", delta=0.0)]],
        0,
        "REPLICATED",
    )
    one(
        [[stats.Part(x=-up8, kind="direction", delta=0.0), stats.Part(x=up8 - 4.5, kind="direction", delta=0.0)]],
        0,
        "CONTRADICTED",
    )
    return (not bad), f"verdict examples: {bad}"


# ----------------------------------------------------------------------------------------------
# the list of checks (re-run by the bug-injection test) and coverage of the bug models
# ----------------------------------------------------------------------------------------------
CALIBRATION_CHECKS = [
    check_fwer_null_n24_m3,
    check_fwer_null_n20_m5,
    check_fwer_null_n23_m5,
    check_fwer_null_n20_m4,
    check_power_n20_M8,
    check_power_n23_M10,
    check_joint_delta0_n18,
    check_joint_delta1_n10,
    check_false_replicated_boundary,
    check_false_replicated_stepdown_n16,
    check_negligible_inside_095,
    check_negligible_not_relabelled_m080,
    check_negligible_outside_m120,
    check_magnitude_size,
]
UNIT_CHECKS = [
    check_median_test_matches_scipy,
    check_holm_hand,
    check_family_internals,
    check_verdict_examples,
    check_exact_enumeration_small,
    check_dedupe_by_value,
]
ALL_CHECKS = CALIBRATION_CHECKS + UNIT_CHECKS


def targeted_bugs():
    """Bug models targeted (and asserted detectable) by the calibration designs."""
    t = set()
    for _, targets in FWER_DESIGNS.values():
        t |= set(targets)
    for _, targets in POWER_DESIGNS.values():
        t |= set(targets)
    for D in JOINT_DESIGNS.values():
        t |= set(D["rep_targets"]) | set(D["con_targets"])
    return t | {"a", "d", "b+", "f"}  # + check_false_replicated_* targets


def test_every_bug_model_is_targeted():
    assert targeted_bugs() == set(ALL_BUGS)


def test_oracle_first_principles():
    """The oracle's closed forms agree with brute-force enumeration / scipy."""
    # sign p by math.comb vs scipy.binom
    for n in (5, 12, 20, 24):
        for k in range(n + 1):
            assert math.isclose(O.sign_p(k, n), sps.binom.sf(k - 1, n, 0.5), rel_tol=1e-12)
    # first-step thresholds quoted in the comments
    assert O.first_step_threshold(24, 6) == 19 and O.first_step_threshold(24, 3) == 18
    assert O.first_step_threshold(20, 10) == 17 and O.first_step_threshold(20, 5) == 16
    assert O.first_step_threshold(23, 10) == 19 and O.first_step_threshold(23, 9) == 18
    assert O.first_step_threshold(20, 8) == 16 and O.first_step_threshold(20, 9) == 17
    assert O.first_step_threshold(4, 2) == 5  # TOO FEW SEEDS: 2^-4 > alpha/2
    # FWER: closed form == enumeration of the full product of counts
    for n, m in ((24, 3), (12, 2)):
        assert math.isclose(
            O.fwer_full_null(n, m), O.exact_family([[O.DirPart(n)] for _ in range(m)]).any_rejection, rel_tol=1e-10
        )
    # multiset power enumeration == full product enumeration
    for v in ("ok", "a", "b+", "f"):
        assert math.isclose(
            O.power_exact(12, 0.8, 2, variant=v), O.power_exact_bruteforce(12, 0.8, 2, variant=v), rel_tol=1e-9
        )
    # merging p > alpha and pruning do not change the enumeration
    fam = [
        [O.DirPart.normal(10, 0.3, 1.0, 0.5)],
        [O.DirPart(9, p_below=0.3)],
        [O.DirPart(6, p_below=0.2), O.DirPart(7)],
    ]
    r1 = O.exact_family(fam)
    r2 = O.exact_family(fam, merge=False, prune=0.0)
    for a, b in zip(r1.verdicts, r2.verdicts):
        assert abs(sum(a.values()) - 1) < 1e-9
        assert all(abs(a.get(k, 0) - b.get(k, 0)) < 1e-10 for k in set(a) | set(b))
    # magnitude p-value is exactly uniform under H0 (its CDF at alpha/M is alpha/M)
    n = 5
    tcrit = sps.t.isf(0.01 / 2, n - 1)
    assert math.isclose(2 * sps.t.sf(tcrit, n - 1), 0.01, rel_tol=1e-10)


# thin pytest wrappers
@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
def test_check(check):
    ok, msg = check()
    assert ok, msg
