"""Independent oracle for the moegeo decision rule v2 (spec: decision_rule.md).

Everything here is computed from first principles (math.comb, scipy.stats.binom / norm / t,
and exhaustive enumeration of seed counts).  Nothing from moegeo is imported.

Notation
--------
B ~ Bin(n, 1/2).  F(k) = P(B <= k),  S(k) = P(B >= k) = 1 - F(k - 1).
alpha = 0.05.  M = number of distinct one-sided hypotheses in the family.

Sign tests (spec, Conover tie-conservative form, = scipy.stats.quantile_test):
    greater(x, v) = F(#{x_i <= v})          H1: median > v
    less(x, v)    = S(#{x_i <  v})          H1: median < v

With continuous data no seed equals a threshold, so a *direction* part with delta > 0 is fully
described by the four cell counts
    c0 = #{x < -d},  c1 = #{-d <= x < 0},  c2 = #{0 <= x < d},  c3 = #{x >= d}
(a multinomial when seeds are independent), and
    rep = F(c0+c1+c2)   con = S(c0)   pos = F(c0+c1)   neg = S(c0+c1)
    eq  = max(F(c0), S(c0+c1+c2))
With delta = 0 only K = #{x < 0} ~ Bin(n, P(x<0)) matters:  rep = F(K),  con = S(K).

Holm (spec): sort p ascending, p_(j) rejected iff p_(i) <= alpha/(M-i+1) for all i <= j.

"Bug models" (variant=...) reproduce, inside the oracle, what a buggy engine would do, so the
tests can assert that each bug moves an exact value outside the Monte-Carlo band:
    "ok"      the spec
    "a"       Holm run separately over the claimed side {rep, pos, eq, dif} and the opposite side
              {con, neg} (per-direction families)
    "b-"      Holm denominators M - i          (first step alpha/(M-1); alpha/0 = +inf)
    "b+"      Holm denominators M - i + 2      (first step alpha/(M+1))
    "c"       sign test by the normal approximation, no continuity correction
              greater: Phi((T1 - n/2)/(sqrt(n)/2)),  less: 1 - Phi((T2 - n/2)/(sqrt(n)/2))
    "c_cc"    same with continuity correction (T1 + 1/2, T2 - 1/2)
    "d"       M counts only the non-opposite hypotheses (rep/pos/eq/dif: con, neg left out of M,
              halving M when delta = 0); all p-values still go through the step-down with
              denominators max(M_eff - i + 1, 1)
    "e"       for a joint reading only the first part's hypotheses enter M (M_eff = M minus the
              hypotheses of parts 2..k); denominators max(M_eff - i + 1, 1)
    "f"       (extra, not in the audit list) single-step Bonferroni: reject iff p <= alpha/M
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
BUG_VARIANTS = ("a", "b-", "b+", "c", "c_cc", "d", "e", "f")

# verdict codes used by the enumerator
REP, CON, NEG_, CLA, OPP, DEP, CONS, DIFS, NBO, NR, TFS = range(11)
VERDICT_NAMES = {
    REP: "REPLICATED",
    CON: "CONTRADICTED",
    NEG_: "NEGLIGIBLE",
    CLA: "CLAIMED SIGN, SIZE UNDETERMINED",
    OPP: "OPPOSITE SIGN, SIZE UNDETERMINED",
    DEP: "DEPENDS ON DEFINITION",
    CONS: "CONSISTENT",
    DIFS: "DIFFERENT SIZE",
    NBO: "NOT BORNE OUT",
    NR: "NOT REPLICATED",
    TFS: "TOO FEW SEEDS",
}
NAME_TO_CODE = {v: k for k, v in VERDICT_NAMES.items()}


# ----------------------------------------------------------------------------------------------
# exact sign tests
# ----------------------------------------------------------------------------------------------
@cache
def _cdf_table(n: int) -> np.ndarray:
    """F(k) = P(Bin(n,1/2) <= k) for k = 0..n, exactly as sum_{j<=k} C(n,j) / 2^n."""
    acc, out = 0, []
    for j in range(n + 1):
        acc += math.comb(n, j)
        out.append(acc / 2**n)
    return np.array(out)


def F(k, n):
    """P(Bin(n,1/2) <= k); vectorised in k; F(-1) = 0."""
    k = np.asarray(k)
    t = np.concatenate([[0.0], _cdf_table(n)])
    return t[np.clip(k, -1, n) + 1]


def S(k, n):
    """P(Bin(n,1/2) >= k) = 1 - F(k-1); vectorised in k."""
    return 1.0 - F(np.asarray(k) - 1, n)


def sign_p_greater(n_le: int, n: int) -> float:
    """greater(x, v) = P(Bin(n,1/2) <= #{x_i <= v})."""
    return float(F(n_le, n))


def sign_p_less(n_lt: int, n: int) -> float:
    """less(x, v) = P(Bin(n,1/2) >= #{x_i < v})."""
    return float(S(n_lt, n))


def sign_p(k_claimed: int, n: int) -> float:
    """One-sided exact p when k_claimed of n seeds lie strictly on the alternative's side
    (no ties at the threshold): p = P(Bin(n,1/2) >= k_claimed) = sum_{j>=k} C(n,j)/2^n.
    (greater: k_claimed = n - #{x<=v};  less: k_claimed = #{x<v}.)"""
    return sum(math.comb(n, j) for j in range(k_claimed, n + 1)) / 2**n


def sign_p_normal(t: int, n: int, alternative: str, cc: bool) -> float:
    """Bug model (c): normal approximation.  greater: Phi((T1 [+1/2] - n/2)/(sqrt(n)/2)),
    less: 1 - Phi((T2 [-1/2] - n/2)/(sqrt(n)/2))."""
    sd = math.sqrt(n) / 2
    if alternative == "greater":
        return float(sps.norm.cdf((t + (0.5 if cc else 0.0) - n / 2) / sd))
    return float(sps.norm.sf((t - (0.5 if cc else 0.0) - n / 2) / sd))


def first_step_threshold(n: int, M: int, alpha: float = ALPHA) -> int:
    """Smallest k (seeds strictly in the claimed direction, out of n) with
    P(Bin(n,1/2) >= k) <= alpha / M.  Returns n + 1 when even k = n fails (2^-n > alpha/M:
    TOO FEW SEEDS)."""
    for k in range(n + 1):
        if sign_p(k, n) <= alpha / M:
            return k
    return n + 1


def threshold_at_level(n: int, level: float) -> int:
    """Smallest k with P(Bin(n,1/2) >= k) <= level (n+1 if none)."""
    for k in range(n + 1):
        if sign_p(k, n) <= level:
            return k
    return n + 1


def one_sided_size(n: int, level: float) -> float:
    """Exact size of the one-sided sign test at nominal level `level` at the null boundary
    (each seed beyond the threshold w.p. 1/2): s = P(Bin(n,1/2) >= k*(level)) <= level."""
    k = threshold_at_level(n, level)
    return sign_p(k, n) if k <= n else 0.0


def fwer_full_null(n: int, m: int, alpha: float = ALPHA) -> float:
    """Exact family-wise error of m independent delta=0 direction claims (M = 2m hypotheses),
    every median exactly 0, continuous data.  Holm rejects something iff min p <= alpha/M; for
    one claim rep = F(K) and con = S(K) cannot both be <= alpha/M < 1/2, so
    P(claim has a p <= alpha/M) = 2 s, s = one_sided_size(n, alpha/M), and
        FWER = 1 - (1 - 2 s)^m."""
    s = one_sided_size(n, alpha / (2 * m))
    return 1.0 - (1.0 - 2.0 * s) ** m


def power_lower_bound(n: int, q: float, M: int, alpha: float = ALPHA) -> float:
    """Power of one direction claim whose seeds land beyond delta in the claimed direction
    w.p. q, when the claim must pass Holm's first step (worst case for Holm: all other M-1
    hypotheses null):  P(Bin(n, q) >= k*), k* = first_step_threshold(n, M, alpha).  The exact
    power with null companions is at least this (a companion null can be rejected first)."""
    k = first_step_threshold(n, M, alpha)
    return float(sps.binom.sf(k - 1, n, q)) if k <= n else 0.0


def magnitude_first_step_size(M: int, alpha: float = ALPHA) -> float:
    """Under H0 (the paper's value y and the n seeds are iid normal, interval [y, y]),
    t = (y - mean)/(sd sqrt(1+1/n)) ~ T_{n-1} exactly, so p = 2 P(T_{n-1} >= |t|) ~ U(0,1) and
    P(p <= alpha/M) = alpha/M."""
    return alpha / M


def magnitude_p(x: np.ndarray, interval) -> float:
    """The spec's prediction p-value (closest point v of [a,b] to the mean)."""
    x = np.asarray(x, float)
    n = len(x)
    mean, sd = x.mean(), x.std(ddof=1)
    a, b = interval
    v = min(max(mean, a), b)
    t = (v - mean) / (sd * math.sqrt(1 + 1 / n))
    return float(2 * sps.t.sf(abs(t), n - 1))


# ----------------------------------------------------------------------------------------------
# models of parts and exhaustive enumeration of a family
# ----------------------------------------------------------------------------------------------
@dataclass
class DirPart:
    """A direction part with n iid continuous seeds.  For delta == 0 give p_below = P(x < 0);
    for delta > 0 give the four cell probabilities (P(x<-d), P(-d<=x<0), P(0<=x<d), P(x>=d))."""

    n: int
    delta: float = 0.0
    p_below: float = 0.5
    cells: tuple | None = None
    hedged: bool = False

    @staticmethod
    def normal(n, mu, sigma=1.0, delta=0.0, hedged=False):
        if delta == 0:
            return DirPart(n, 0.0, p_below=float(sps.norm.cdf((0 - mu) / sigma)), hedged=hedged)
        c = sps.norm.cdf(np.array([-delta, 0.0, delta]), mu, sigma)
        cells = (c[0], c[1] - c[0], c[2] - c[1], 1 - c[2])
        return DirPart(n, delta, cells=tuple(float(v) for v in cells), hedged=hedged)

    @property
    def names(self):
        return ("rep", "con") if self.delta == 0 else ("rep", "con", "pos", "neg", "eq")


def _pv(kind, t, n, variant):
    """p-value of greater (t = #{x<=v}) or less (t = #{x<v}) under the variant's sign test."""
    t = np.asarray(t)
    if variant in ("c", "c_cc"):
        sd = math.sqrt(n) / 2
        cc = 0.5 if variant == "c_cc" else 0.0
        if kind == "greater":
            return sps.norm.cdf((t + cc - n / 2) / sd)
        return sps.norm.sf((t - cc - n / 2) / sd)
    return F(t, n) if kind == "greater" else S(t, n)


def part_outcomes(part: DirPart, variant="ok", prune=1e-12, cap=None):
    """All count outcomes of a part with their probabilities and p-value vectors.
    Returns (prob[K], pvals[K, h], dropped_mass).  Outcomes are kept in descending probability
    until the neglected mass is <= prune."""
    n = part.n
    if part.delta == 0:
        K = np.arange(n + 1)
        prob = sps.binom.pmf(K, n, part.p_below)
        pv = np.stack([_pv("greater", K, n, variant), _pv("less", K, n, variant)], axis=1)
    else:
        rows = [(c0, c1, c2) for c0 in range(n + 1) for c1 in range(n + 1 - c0) for c2 in range(n + 1 - c0 - c1)]
        C = np.array(rows)
        c0, c1, c2 = C[:, 0], C[:, 1], C[:, 2]
        c3 = n - c0 - c1 - c2
        lp = np.array(part.cells, float)
        with np.errstate(divide="ignore"):
            logp = np.log(lp)
        from scipy.special import gammaln

        lg = gammaln(n + 1) - gammaln(c0 + 1) - gammaln(c1 + 1) - gammaln(c2 + 1) - gammaln(c3 + 1)
        terms = np.stack([c0, c1, c2, c3], 1) * np.where(np.isfinite(logp), logp, 0.0)
        bad = (np.stack([c0, c1, c2, c3], 1) > 0) & ~np.isfinite(logp)
        prob = np.exp(lg + terms.sum(1))
        prob[bad.any(1)] = 0.0
        rep = _pv("greater", c0 + c1 + c2, n, variant)
        con = _pv("less", c0, n, variant)
        pos = _pv("greater", c0 + c1, n, variant)
        neg = _pv("less", c0 + c1, n, variant)
        eq = np.maximum(_pv("greater", c0, n, variant), _pv("less", c0 + c1 + c2, n, variant))
        pv = np.stack([rep, con, pos, neg, eq], 1)
    if cap is not None:
        # a p above alpha is never rejected (every Holm threshold is <= alpha, except a
        # threshold of +inf at the last step of variant b-, which rejects whatever value it
        # gets) and only its rank among larger values can change; so p > cap can be set to 1
        # and identical p-vectors merged without changing any rejection.
        pv = np.where(pv > cap, 1.0, pv)
        uniq, inv = np.unique(pv, axis=0, return_inverse=True)
        prob = np.bincount(inv.ravel(), weights=prob, minlength=len(uniq))
        pv = uniq
    order = np.argsort(-prob, kind="stable")
    prob, pv = prob[order], pv[order]
    tail = np.cumsum(prob[::-1])[::-1]  # tail[i] = mass of outcomes i..end
    keep = int(np.searchsorted(-tail, -prune, side="left"))  # first i with tail[i] <= prune
    keep = max(keep, 1)
    dropped = float(tail[keep]) if keep < len(prob) else 0.0
    return prob[:keep], pv[:keep], dropped


def holm_reject(P: np.ndarray, alpha: float, names: list, first_part_mask=None, variant="ok"):
    """Vectorised Holm over the rows of P (N configurations x H hypotheses), per variant.
    names: hypothesis name per column; first_part_mask: bool per column, False for hypotheses of
    parts 2..k of joint readings (used by variant 'e')."""
    N, H = P.shape
    R = np.zeros((N, H), bool)
    cols_all = np.arange(H)
    if variant == "a":
        opp = np.array([nm in ("con", "neg") for nm in names])
        groups = [(cols_all[~opp], int((~opp).sum())), (cols_all[opp], int(opp.sum()))]
    elif variant == "d":
        groups = [(cols_all, int(sum(nm not in ("con", "neg") for nm in names)))]
    elif variant == "e":
        groups = [(cols_all, int(np.sum(first_part_mask)))]
    else:
        groups = [(cols_all, H)]
    shift = {"b-": -1, "b+": 1}.get(variant, 0)
    clamp = variant in ("d", "e")
    if variant == "f":  # single-step Bonferroni: p <= alpha/M, no step-down
        return P <= alpha / H
    for cols, Meff in groups:
        if len(cols) == 0:
            continue
        sub = P[:, cols]
        order = np.argsort(sub, axis=1, kind="stable")
        s = np.take_along_axis(sub, order, 1)
        i = np.arange(1, len(cols) + 1)
        denom = (Meff - i + 1 + shift).astype(float)
        if clamp:
            denom = np.maximum(denom, 1.0)
        with np.errstate(divide="ignore"):
            thr = np.where(denom > 0, alpha / np.where(denom > 0, denom, 1.0), np.inf)
        passed = np.cumprod(s <= thr, axis=1).astype(bool)
        Rsub = np.zeros_like(passed)
        np.put_along_axis(Rsub, order, passed, 1)
        R[:, cols] = Rsub
    return R


def _part_verdict(Rp: dict, names, n, M, alpha, hedged):
    """Vectorised verdict of one direction part (spec rules 1-7) from its rejection columns."""
    N = len(next(iter(Rp.values())))
    z = np.zeros(N, bool)
    rep, con = Rp["rep"], Rp["con"]
    eq, pos, neg = Rp.get("eq", z), Rp.get("pos", z), Rp.get("neg", z)
    anyr = rep | con | eq | pos | neg
    v = np.full(N, NR)
    if 2.0**-n > alpha / M:
        v[~anyr] = TFS
    v = np.where(neg, NBO if hedged else OPP, v)
    v = np.where(pos, CLA, v)
    v = np.where(eq, NEG_, v)
    v = np.where(con, NBO if hedged else CON, v)
    v = np.where(rep, REP, v)
    return v


def joint_verdict(V: np.ndarray) -> np.ndarray:
    """Vectorised joint reading verdict (direction parts) from part verdicts V (N x k)."""
    if V.shape[1] == 1:
        return V[:, 0].copy()
    sup = (V == REP) | (V == CLA)
    opp = (V == CON) | (V == OPP)
    anysup, anyopp = sup.any(1), opp.any(1)
    out = np.full(len(V), NR)
    out = np.where((V == TFS).all(1), TFS, out)
    out = np.where(sup.all(1) & (V == CLA).any(1), CLA, out)
    out = np.where((V == NEG_).all(1), NEG_, out)
    out = np.where((V == OPP).any(1) & ~anysup, OPP, out)
    out = np.where((V == CON).any(1) & ~anysup, CON, out)
    out = np.where(anysup & anyopp, DEP, out)
    out = np.where((V == REP).all(1), REP, out)
    return out


@dataclass
class ExactResult:
    verdicts: list  # per reading: dict verdict name -> probability
    any_rejection: float  # P(at least one hypothesis rejected)
    rejected: dict  # (reading, part, name) -> P(rejected)
    M: int
    dropped: float  # probability mass neglected by pruning (an error bound)
    events: dict = field(default_factory=dict)


def exact_family(readings, alpha=ALPHA, variant="ok", prune=1e-12, max_configs=3_000_000, events=None, merge=True):
    """Exact distribution of every reading's verdict for a family of independent direction
    parts (readings: list of lists of DirPart), by enumerating the product of the parts' count
    outcomes.  events: optional dict name -> f(R, cols, codes) returning a bool array; its
    probability is reported in .events."""
    parts, names, fmask, slices = [], [], [], []
    for r, reading in enumerate(readings):
        for j, p in enumerate(reading):
            start = len(names)
            names += list(p.names)
            fmask += [j == 0] * len(p.names)
            slices.append((r, j, p, slice(start, len(names))))
            parts.append(p)
    M = len(names)
    outs = [part_outcomes(p, variant, prune, cap=alpha if merge else None) for p in parts]
    sizes = [len(o[0]) for o in outs]
    total = int(np.prod(sizes, dtype=np.int64))
    if total > max_configs:
        raise ValueError(f"{total} configurations > {max_configs}; increase prune")
    dropped = 1.0 - float(np.prod([1.0 - o[2] for o in outs]))
    verd = [dict() for _ in readings]
    acc_v = [np.zeros(11) for _ in readings]
    acc_any = 0.0
    acc_rej = np.zeros(M)
    acc_ev = {k: 0.0 for k in (events or {})}
    chunk = max(1, 400_000 // max(1, M // 4))
    fmask = np.array(fmask)
    for lo in range(0, total, chunk):
        flat = np.arange(lo, min(total, lo + chunk))
        idx = np.unravel_index(flat, sizes)
        prob = np.ones(len(flat))
        P = np.empty((len(flat), M))
        for (r, j, p, sl), o, ii in zip(slices, outs, idx):
            prob *= o[0][ii]
            P[:, sl] = o[1][ii]
        R = holm_reject(P, alpha, names, fmask, variant)
        acc_any += float(prob[R.any(1)].sum())
        acc_rej += prob @ R
        codes = []
        for r, reading in enumerate(readings):
            Vs = []
            for rr, j, p, sl in slices:
                if rr != r:
                    continue
                Rp = {nm: R[:, sl.start + t] for t, nm in enumerate(p.names)}
                Vs.append(_part_verdict(Rp, p.names, p.n, M, alpha, p.hedged))
            jv = joint_verdict(np.stack(Vs, 1))
            codes.append(jv)
            acc_v[r] += np.bincount(jv, weights=prob, minlength=11)
        for k, f in (events or {}).items():
            acc_ev[k] += float(prob[f(R, slices, codes)].sum())
    for r in range(len(readings)):
        verd[r] = {VERDICT_NAMES[c]: float(acc_v[r][c]) for c in range(11) if acc_v[r][c] > 0}
    rej = {(r, j, nm): float(acc_rej[sl.start + t]) for (r, j, p, sl) in slices for t, nm in enumerate(p.names)}
    return ExactResult(verd, acc_any, rej, M, dropped, acc_ev)


def verdict_prob(res: ExactResult, reading: int, verdict: str) -> float:
    return res.verdicts[reading].get(verdict, 0.0)


# ----------------------------------------------------------------------------------------------
# the named quantities of the brief
# ----------------------------------------------------------------------------------------------
def false_replicated_boundary(n, delta, m_null, n_null=None, sigma=1.0, alpha=ALPHA, variant="ok"):
    """One claim (delta > 0) whose true median is exactly +delta (normal seeds, sd sigma: each
    seed above +delta w.p. 1/2) in a family with m_null independent null delta=0 claims (median
    0).  M = 5 + 2 m_null.  Returns (exact, lower, upper):
      exact = P(REPLICATED), enumerating the claim's multinomial (c0..c3) and the null claims'
              binomial counts, Holm over all M hypotheses;
      lower = P(Bin(n,1/2) >= k*(alpha/M)): rep is rejected whenever it passes the first step;
      upper = P(any true null h has p_h <= t), t = alpha/(M-1), true nulls = rep, con, neg, eq
              of the claim and the 2 m_null companions:
                  1 - (1 - P(min(rep,con,neg,eq) <= t)) (1 - 2 s(t))^m_null.
              Why: pos is the only false null, so the first true null Holm rejects has rank
              <= 2 and p <= alpha/(M-1); if rep is rejected, either p_rep <= t or another true
              null was rejected before it (with p <= t).
    (With m_null = 0 and few ties in the step-down, upper ~ P(Bin(n,1/2) >= k*(alpha/(M-1))).)"""
    n_null = n_null or n
    claim = DirPart.normal(n, delta, sigma, delta)
    fam = [[claim]] + [[DirPart(n_null)] for _ in range(m_null)]
    res = exact_family(fam, alpha, variant)
    M = 5 + 2 * m_null
    t = alpha / (M - 1)
    prob, pv, dropped = part_outcomes(claim, "ok", 0.0)
    # columns: rep, con, pos, neg, eq -> true nulls rep, con, neg, eq
    p_claim = float(prob[(pv[:, [0, 1, 3, 4]] <= t).any(1)].sum())
    upper = 1.0 - (1.0 - p_claim) * (1.0 - 2.0 * one_sided_size(n_null, t)) ** m_null
    return (verdict_prob(res, 0, "REPLICATED"), one_sided_size(n, alpha / M), upper)


def joint_boundary(n, delta, extra_null=0, sigma=1.0, alpha=ALPHA, variant="ok", strong_mu=None):
    """Two-part joint reading (both parts delta > 0, independent normal seeds) plus extra_null
    independent null delta=0 claims.  Returns dict with
      rep_both_boundary : P(REPLICATED) with both parts' medians at +delta
      rep_one_boundary  : P(REPLICATED) with part 1 at +delta and part 2 at strong_mu (the
                          least favourable point of the intersection-union null), if given
      con_opposite      : P(CONTRADICTED) with both parts' medians at -delta
    Holm over all parts' hypotheses (M = 10 + 2 extra_null)."""
    out = {}
    nulls = [[DirPart(n)] for _ in range(extra_null)]
    b = DirPart.normal(n, delta, sigma, delta)
    o = DirPart.normal(n, -delta, sigma, delta)
    out["rep_both_boundary"] = verdict_prob(exact_family([[b, b]] + nulls, alpha, variant), 0, "REPLICATED")
    if strong_mu is not None:
        s = DirPart.normal(n, strong_mu, sigma, delta)
        out["rep_one_boundary"] = verdict_prob(exact_family([[b, s]] + nulls, alpha, variant), 0, "REPLICATED")
    out["con_opposite"] = verdict_prob(exact_family([[o, o]] + nulls, alpha, variant), 0, "CONTRADICTED")
    return out


def magnitude_in_family(K, alpha=ALPHA, variant="ok"):
    """Exact P(DIFFERENT SIZE) of one of K magnitude readings that form a family alone, every H0
    true (normal seeds, point interval [y, y] with y an independent draw: each p_i ~ U(0,1),
    independent).  Holm thresholds t_i = alpha/(K-i+1).
      K = 1: P = t_1 = alpha.
      K = 2: reading 1 is rejected iff u1 <= t_1, or t_1 < u1 <= t_2 and u2 <= t_1
             (then u2 is the smaller one and passes step 1):  P = t_1 + (t_2 - t_1) t_1."""
    shift = {"b-": -1, "b+": 1}.get(variant, 0)

    def thr(i):
        return min(1.0, alpha / (K - i + 1 + shift)) if (K - i + 1 + shift) > 0 else 1.0

    if K == 1:
        return thr(1)
    if K == 2:
        t1, t2 = thr(1), thr(2)
        return t1 + max(0.0, t2 - t1) * t1
    raise NotImplementedError


def magnitude_with_directions(dir_readings, alpha=ALPHA, variant="ok"):
    """Exact P(dif rejected) for ONE magnitude hypothesis (p ~ U(0,1) under H0, independent) in a
    family that also holds the given independent direction readings (variants ok, b-, b+, c,
    c_cc).  For a configuration of the other (discrete) p's sorted q_1 <= ... <= q_{M-1}
    (q_0 = 0, q_M = 1), dif at rank r (q_{r-1} < u <= q_r) is rejected iff q_1..q_{r-1} pass
    their thresholds t_1..t_{r-1} and u <= t_r, t_i = alpha/(M-i+1) (Holm is monotone, ties
    have measure 0).  So P(reject | config) = sum_r [prefix r-1 passes] *
    max(0, min(q_r, t_r) - q_{r-1}), and P = E over the enumerated configurations."""
    parts = [p for rd in dir_readings for p in rd]
    outs = [part_outcomes(p, variant) for p in parts]
    sizes = [len(o[0]) for o in outs]
    H = sum(len(p.names) for p in parts)
    M = H + 1
    idx = np.unravel_index(np.arange(int(np.prod(sizes))), sizes)
    prob = np.ones(len(idx[0]))
    cols = []
    for o, ii in zip(outs, idx):
        prob *= o[0][ii]
        cols.append(o[1][ii])
    Q = np.sort(np.concatenate(cols, 1), 1)
    shift = {"b-": -1, "b+": 1}.get(variant, 0)
    i = np.arange(1, M + 1)
    den = M - i + 1 + shift
    t = np.where(den > 0, alpha / np.where(den > 0, den, 1), np.inf)
    Qe = np.concatenate([np.zeros((len(Q), 1)), Q, np.ones((len(Q), 1))], 1)
    prefix = np.concatenate([np.ones((len(Q), 1), bool), np.cumprod(Q <= t[None, :H], 1).astype(bool)], 1)  # r-1 = 0..H
    meas = np.zeros(len(Q))
    for r in range(1, M + 1):
        seg = np.clip(np.minimum(Qe[:, r], min(1.0, t[r - 1])) - Qe[:, r - 1], 0, None)
        meas += prefix[:, r - 1] * seg
    return float(prob @ meas)


def power_exact(n, q, m_null, alpha=ALPHA, variant="ok"):
    """Exact power P(REPLICATED) of one delta=0 direction claim with P(seed > 0) = q, in a family
    with m_null independent null delta=0 claims (M = 2 + 2 m_null).  Enumeration of the effect
    claim's count K1 ~ Bin(n, 1 - q) (seeds below 0) times the MULTISET of the exchangeable null
    claims' counts (multinomial weight m_null! / prod mult!), Holm over all M p-values; the
    effect claim is REPLICATED iff its rep is rejected (rep rejected excludes con)."""
    from itertools import combinations_with_replacement

    eff = part_outcomes(DirPart(n, 0.0, p_below=1 - q), variant, 0.0, cap=alpha)
    nul = part_outcomes(DirPart(n), variant, 0.0, cap=alpha)
    combos = list(combinations_with_replacement(range(len(nul[0])), m_null))
    w = np.empty(len(combos))
    cols = np.empty((len(combos), 2 * m_null))
    for c, combo in enumerate(combos):
        mult = np.bincount(combo, minlength=len(nul[0]))
        coef = math.factorial(m_null) / np.prod([math.factorial(int(k)) for k in mult])
        w[c] = coef * np.prod(nul[0][list(combo)])
        cols[c] = nul[1][list(combo)].ravel()
    names = ["rep", "con"] * (1 + m_null)
    total = 0.0
    for pe, pv in zip(*eff[:2]):
        P = np.concatenate([np.repeat(pv[None, :], len(combos), 0), cols], 1)
        R = holm_reject(P, alpha, names, np.ones(P.shape[1], bool), variant)
        total += pe * float(w[R[:, 0]].sum())
    return total


def power_exact_bruteforce(n, q, m_null, alpha=ALPHA, variant="ok"):
    """The same by the generic product enumeration (for cross-checking power_exact)."""
    fam = [[DirPart(n, 0.0, p_below=1 - q)]] + [[DirPart(n)] for _ in range(m_null)]
    return verdict_prob(exact_family(fam, alpha, variant), 0, "REPLICATED")


def first_step_level(M, variant="ok", M_first_part=None, alpha=ALPHA, n_opp=None):
    """Holm's first-step level under each variant for a family of M hypotheses:
    ok alpha/M; b- alpha/(M-1); b+ alpha/(M+1); a alpha/(size of the group) (callers pass
    n_opp = #opposite-side hypotheses); d alpha/(M - n_opp); e alpha/M_first_part."""
    if variant == "b-":
        return alpha / (M - 1)
    if variant == "b+":
        return alpha / (M + 1)
    if variant in ("a", "d"):
        return alpha / (M - n_opp)
    if variant == "e" and M_first_part is not None:
        return alpha / M_first_part
    return alpha / M


def fwer_exact(n, m, alpha=ALPHA, variant="ok"):
    """FWER of m null delta=0 claims under each variant.  For every variant something is
    rejected iff some p passes its group's first step; a null claim has rep = F(K), con = S(K)
    (or their normal approximations), one of each side, so
        FWER = 1 - (1 - P(min(rep, con) <= t1))^m,
    t1 = alpha/(2m) (ok, c, c_cc, e), alpha/(2m-1) (b-), alpha/(2m+1) (b+), alpha/m (a: each
    side is its own family of m; d: M counts only the m reps)."""
    t1 = first_step_level(2 * m, variant, alpha=alpha, n_opp=m)
    prob, pv, _ = part_outcomes(DirPart(n), variant if variant in ("c", "c_cc") else "ok", 0.0)
    pc = float(prob[(pv <= t1).any(1)].sum())
    return 1.0 - (1.0 - pc) ** m


def holm_adjusted(pvalues):
    """Holm-adjusted p-values by the spec's formula, written out literally:
    adjusted p_(j) = min(1, max_{i<=j} (M - i + 1) p_(i)), returned in the input order."""
    p = [float(v) for v in pvalues]
    M = len(p)
    order = sorted(range(M), key=lambda k: p[k])
    out = [0.0] * M
    running = 0.0
    for i, k in enumerate(order, start=1):
        running = max(running, (M - i + 1) * p[k])
        out[k] = min(1.0, running)
    return out


def holm_rejected(pvalues, alpha=ALPHA):
    """Spec: p_(j) rejected iff p_(i) <= alpha/(M-i+1) for every i <= j."""
    p = [float(v) for v in pvalues]
    M = len(p)
    order = sorted(range(M), key=lambda k: p[k])
    rej = [False] * M
    for i, k in enumerate(order, start=1):
        if p[k] <= alpha / (M - i + 1):
            rej[k] = True
        else:
            break
    return rej


def direction_pvalues(x, delta):
    """The spec's p-values of a direction part computed from the data (exact sign tests):
    rep = greater(x, +d), con = less(x, -d) and, for d > 0, pos, neg, eq."""
    x = np.asarray(x, float)
    n = len(x)

    def g(v):
        return sign_p_greater(int(np.sum(x <= v)), n)

    def l(v):
        return sign_p_less(int(np.sum(x < v)), n)

    out = {"rep": g(delta), "con": l(-delta)}
    if delta > 0:
        out.update(pos=g(0.0), neg=l(0.0), eq=max(g(-delta), l(delta)))
    return out
