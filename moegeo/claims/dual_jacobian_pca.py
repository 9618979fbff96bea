"""The claims of the Dual Jacobian-PCA paper (Liu, 2025) in the controlled MLP-MoE setting.

Every threshold, tolerance, smallest meaningful effect and primary reading below was fixed from
the paper's words (quoted with section) or from a stated rule before the run that produced
REPORT.md; none was moved after seeing our numbers.

Primary readings, each from the paper's own words:

* ``jacobian=mean`` for spectra: B.4, "We analyze: singular-value spectra of J̄_e; largest
  singular values (curvature); spectral decay".
* ``jacobian=pointwise`` for the training trajectory: A.2, "The largest singular value
  σ1(J_e(x)), which is also called the Jacobian norm".
* ``norm=spectral``: §3.1, "Figure 1A shows the evolution of the Jacobian spectral norm".
* ``dense=expert``: B.1, "identical hidden dimension ... to the MoE experts"; "Expert hidden
  dimension (same as dense FFN): d_hidden=128".
* ``moe=topk``: A.5/B.1, "Top-k uses k=2 unless otherwise specified"; Fig. 2, "Top-2 routing".
* ``pca_site=input``: §2.2/A.4/B.5, "weighted PCA on the hidden states entering the MoE layer".
* ``step`` = the final step: Fig. 1B-D "at the final training step", "at the end of training".

Smallest meaningful effects (direction claims), by the paper's reporting precision: ratios of
positive scales are reported to one decimal ("1.5-1.7x"), so a log ratio below log 1.05 (a
ratio that rounds to 1.0) is not meaningful; fractions are read to whole percent ("90%"), so
0.01; component counts are integers ("three", "twenty"), so 1 component; cosines are judged
against chance (A.3), so one null standard deviation of a single cosine, 1/sqrt(d²) = 1/d.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.stats

from ..config import DENSE_ARM, DenseWidth
from ..experiment import reading
from ..probes import cosine_null
from . import Claim, Observation, Results, grid, pair, single

PAPER = "dual_jacobian_pca"
#: Fig. 1A: MoE norms "plateau after approximately 250 iterations".
PLATEAU_STEP = 250
#: the step at which the §4 failure-mode arms (trained this long) meet the main arms' checkpoint.
FAILURE_STEP = 500
#: §4 failure mode 1: soft routing at this temperature is the "nearly uniform" arm ...
HOT_TEMPERATURE = 10.0
#: ... and counts as nearly uniform only if its mean per-input routing entropy reaches this
#: fraction of log E (declared rule; a router trained at T = 10 can scale its logits back).
UNIFORM_ENTROPY = 0.95
#: C4 "values typically ranging between": "typically" read as the central 80% of pairs (the
#: 10th-90th percentile), i.e. at least 80% of a seed's pairs inside the range.
TYPICALLY = 0.8
#: C8d plateau: a log growth within +-log 1.1 after step 250 is "flat" (a 10% change is below
#: what a log-scale figure like Fig. 1A shows as growth; declared rule).
PLATEAU_MARGIN = math.log(1.1)
#: C8a "steady growth": Kendall's tau of norm against step at least 0.5 (3 of 4 step pairs rising).
STEADY_TAU = 0.5

LOG_RATIO_SESOI = math.log(1.05)
FRACTION_SESOI = 0.01
COMPONENT_SESOI = 1.0

JACOBIAN_SPECTRA = ("mean", "pointwise")
JACOBIAN_NORMS = ("pointwise", "mean")
DENSE = ("expert", "matched")
MOE = ("topk", "soft")
PCA_SITES = ("input", "pre_activation", "hidden", "output")
NORMS = ("spectral", "frobenius")

WHY = {
    "jacobian=mean": 'B.4 "We analyze: singular-value spectra of J̄_e; largest singular values"',
    "jacobian=pointwise": 'A.2 "σ1(J_e(x)), which is also called the Jacobian norm"',
    "norm=spectral": '§3.1 "the evolution of the Jacobian spectral norm"',
    "dense=expert": 'B.1 "identical hidden dimension ... to the MoE experts"',
    "moe=topk": 'A.5 "Top-k uses k=2 unless otherwise specified"',
    "pca_site=input": 'B.5 "weighted PCA on the hidden states entering the MoE layer"',
    "step=final": 'Fig. 1 "at the final training step"',
}


def because(*keys: str) -> str:
    return "; ".join(WHY[k] for k in keys)


def dense(r: dict) -> str:
    return DENSE_ARM[DenseWidth(r["dense"])].value


def _step(r: dict) -> int | None:
    return r.get("step")


def _null_sd(R: Results) -> float:
    """One null standard deviation of a single cosine of vec(J̄), 1/sqrt(d²) (A.3 null)."""
    return 1.0 / float(R.frames["main"].d_model.iloc[0])


def mean_abs_cos(R: Results, arm: str, step: int, rd: str = "jacobian=mean", layer: int = 0, frame: str = "main") -> pd.Series:
    c = R.cosines(arm, rd, step, layer, frame)
    return c.value.abs().groupby(c.seed).mean()


# --------------------------------------------------------------------------- Jacobian spectra (§3.1)
def _spectrum_pair(metric: str, how: str, moe_first: bool):
    def observe(R: Results, r: dict) -> Observation:
        rd = reading(jacobian=r["jacobian"])
        d, m = R.per_seed(dense(r), metric, rd, _step(r)), R.per_seed(r["moe"], metric, rd, _step(r))
        return pair(m, d, r["moe"], dense(r), how) if moe_first else pair(d, m, dense(r), r["moe"], how)
    return observe


def _spectrum_above(R: Results, r: dict) -> Observation:
    rd = reading(jacobian=r["jacobian"])
    d, m = R.curve(dense(r), "sigma", rd, _step(r)), R.curve(r["moe"], "sigma", rd, _step(r))
    frac = (d > m).mean(axis=1)
    return Observation(frac - 0.5, {f"fraction of j with {dense(r)} sigma_j > {r['moe']} sigma_j": frac})


def _topk_vs_soft(metric: str, rd_key: str, topk_higher: bool):
    def observe(R: Results, r: dict) -> Observation:
        rd = reading(**{rd_key: r[rd_key]})
        t, s = R.per_seed("topk", metric, rd, _step(r)), R.per_seed("soft", metric, rd, _step(r))
        return pair(t, s, "topk", "soft") if topk_higher else pair(s, t, "soft", "topk")
    return observe


# --------------------------------------------------------------------------- cosines (§3.1 Fig. 1B, A.3)
def _cos_in_range(R: Results, r: dict) -> Observation:
    c = R.cosines(r["moe"], "jacobian=mean", _step(r))
    frac = c.value.between(-0.01, 0.015).groupby(c.seed).mean()
    return Observation(frac - TYPICALLY, {f"{r['moe']} fraction of pairs in [-0.01, 0.015]": frac})


def _cos_to_chance(R: Results, r: dict) -> Observation:
    ours = mean_abs_cos(R, r["moe"], _step(r))
    if r["null"] == "random":
        d = float(R.frames["main"].d_model.iloc[0])
        chance = pd.Series(cosine_null(int(d * d)).expect(abs), index=ours.index)
    else:  # the same model at initialisation (trajectory record at step 0)
        chance = R.per_seed(r["moe"], "cosine_abs_mean", "jacobian=mean", 0)
    return pair(ours, chance, f"{r['moe']} mean |cos|", f"chance ({r['null']})", "ratio")


def chance_band(d: int, n_experts: int) -> tuple[float, float]:
    """C4n's equivalence range for (mean |cos| over pairs) / (its expectation under the random
    null): 1 +- 2 coefficients of variation of that mean under the null, treating the
    E(E-1)/2 pairs as independent (A.3 null, moegeo.probes.cosine_null)."""
    null = cosine_null(d * d)
    m1, m2 = null.expect(abs), null.moment(2)
    pairs = n_experts * (n_experts - 1) / 2
    cv = math.sqrt(m2 - m1 * m1) / m1 / math.sqrt(pairs)
    return 1 - 2 * cv, 1 + 2 * cv


# --------------------------------------------------------------------------- PCA (§3.2, §3.3)
def _pca_pair(metric: str, moe_higher: bool, index: int = -1):
    def observe(R: Results, r: dict) -> Observation:
        rd = reading(pca_site=r["pca_site"])
        m = R.per_seed(r["moe"], metric, rd, _step(r), index=index)
        d = R.per_seed(dense(r), metric, rd, _step(r), index=index)
        return pair(m, d, r["moe"], dense(r)) if moe_higher else pair(d, m, dense(r), r["moe"])
    return observe


def _experts_over_20(R: Results, r: dict) -> Observation:
    return single(R.per_seed(r["moe"], "k@0.9", reading(pca_site=r["pca_site"]), _step(r)) - 20, f"{r['moe']} k@0.9 - 20")


def _dense_k(R: Results, r: dict) -> Observation:
    return single(R.per_seed(dense(r), "k@0.9", reading(pca_site=r["pca_site"]), _step(r)), f"{dense(r)} k@0.9")


# --------------------------------------------------------------------------- trajectory (§3.1 Fig. 1A)
def _norm(R: Results, arm: str, r: dict, step: int) -> pd.Series:
    return R.per_seed(arm, "jacobian_norm", reading(jacobian=r["jacobian"], norm=r["norm"]), step)


def _steady(R: Results, r: dict) -> Observation:
    df = R.frames["main"]
    rd = reading(jacobian=r["jacobian"], norm=r["norm"])
    t = df[(df.arm == dense(r)) & (df.metric == "jacobian_norm") & (df.reading == rd) & (df.step <= r["step"])]
    t = t.groupby(["seed", "step"]).value.mean().reset_index()
    tau = t.groupby("seed").apply(lambda s: scipy.stats.kendalltau(s.step, s.value).statistic, include_groups=False)
    return single(tau, f"{dense(r)} Kendall tau(norm, step)")


def _tenfold(R: Results, r: dict) -> Observation:
    a, b = _norm(R, dense(r), r, r["step"]), _norm(R, dense(r), r, 0)
    o = pair(a, b, f"{dense(r)} final", f"{dense(r)} initial", "logratio")
    return Observation(o.x - math.log(10), o.arms)


def _initial(R: Results, r: dict) -> Observation:
    return single(_norm(R, dense(r), r, 0), f"{dense(r)} initial norm")


def _moe_growth(start: int | None, end: int | None):
    def observe(R: Results, r: dict) -> Observation:
        a, b = (r["step"] if end is None else end), (r["step"] if start is None else start)
        return pair(_norm(R, r["moe"], r, a), _norm(R, r["moe"], r, b), f"{r['moe']} @{a}", f"{r['moe']} @{b}", "logratio")
    return observe


# --------------------------------------------------------------------------- §4 expected failure modes
def _uniform_routing(R: Results, r: dict) -> tuple[bool, str]:
    h = R.per_seed("soft", "routing_entropy", "", FAILURE_STEP, frame="hot")
    E = int(R.frames["hot"].n_experts.iloc[0])
    share = float(np.median(h)) / math.log(E)
    return share >= UNIFORM_ENTROPY, (f"soft routing at T={HOT_TEMPERATURE:g} has median per-input entropy "
                                      f"{share:.3f} log E (needs >= {UNIFORM_ENTROPY} log E to count as nearly uniform)")


def _hot_alignment(R: Results, r: dict) -> Observation:
    return pair(mean_abs_cos(R, "soft", FAILURE_STEP, frame="hot"), mean_abs_cos(R, "soft", FAILURE_STEP),
                f"soft T={HOT_TEMPERATURE:g} mean |cos|", "soft T=1 mean |cos|")


def _hot_pca_gap(R: Results, r: dict) -> Observation:
    rd = reading(pca_site=r["pca_site"])
    d = R.per_seed(dense(r), "k@0.9", rd, FAILURE_STEP)
    gaps = {name: (R.per_seed("soft", "k@0.9", rd, FAILURE_STEP, frame=name) - d).abs() for name in ("main", "hot")}
    return pair(gaps["main"], gaps["hot"], "|soft - dense| k@0.9 at T=1", f"at T={HOT_TEMPERATURE:g}")


def _coupled_alignment(R: Results, r: dict) -> Observation:
    rd = "jacobian=mean" + ("" if r["chart"] == "input" else f";chart={r['chart']}")
    return pair(mean_abs_cos(R, "topk_coupled", FAILURE_STEP, rd, frame="failure"), mean_abs_cos(R, "topk", FAILURE_STEP),
                f"topk_coupled ({r['chart']}) mean |cos|", "topk mean |cos|")


def _deep_alignment(R: Results, r: dict) -> Observation:
    return pair(mean_abs_cos(R, "topk_deep", FAILURE_STEP, layer=r["layer"], frame="failure"),
                mean_abs_cos(R, "topk", FAILURE_STEP), f"topk_deep layer {r['layer']} mean |cos|", "topk mean |cos|")


# --------------------------------------------------------------------------- the claims
SPECTRA = grid(jacobian=JACOBIAN_SPECTRA, dense=DENSE, moe=MOE)
PCA = grid(pca_site=PCA_SITES, dense=DENSE, moe=MOE)
TRAJ_DENSE = grid(jacobian=JACOBIAN_NORMS, norm=NORMS, dense=DENSE)
TRAJ_MOE = grid(jacobian=("pointwise", "effective", "mean"), norm=NORMS, moe=MOE)
HEDGED = "§4 states this as an expected failure mode (a hedged expectation), not as a result"

CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "Lower local sensitivity", "MoE experts, by contrast, show smaller leading singular values",
          "§3.1 (Fig. 1C), §5, abstract", "log(dense sigma_1 / MoE expert-mean sigma_1)", "direction",
          "direction: > 0", SPECTRA, because("jacobian=mean", "dense=expert", "moe=topk", "step=final"),
          _spectrum_pair("sigma1", "logratio", False), smallest_effect=LOG_RATIO_SESOI,
          smallest_effect_source="log 1.05: ratios are reported to one decimal"),
    Claim("C1s", "Larger dense singular values across the spectrum",
          "Dense models exhibit larger singular values across much of the spectrum", "§3.1 (Fig. 1C)",
          "fraction of j with dense sigma_j > MoE expert-mean sigma_j, minus 1/2", "direction",
          "'much of' read as more than half of the d singular values", SPECTRA,
          because("jacobian=mean", "dense=expert", "moe=topk", "step=final"), _spectrum_above),
    Claim("C2", "Magnitude of the lower sensitivity", "approximately 1.5-1.7x lower than the dense baseline",
          "§3.1 (Fig. 1C)", "dense sigma_1 / MoE expert-mean sigma_1", "magnitude",
          "the paper's [1.5, 1.7], widened by 0.05 each side: half a unit of its last reported digit", SPECTRA,
          because("jacobian=mean", "dense=expert", "moe=topk", "step=final"), _spectrum_pair("sigma1", "ratio", False),
          interval=(1.5, 1.7), tolerance=0.05, null=1.0),
    Claim("C3a", "More concentrated Jacobian energy",
          "MoE experts accumulate a large fraction of their total spectral energy in fewer directions than the dense baseline",
          "§3.1 (Fig. 1D)", "MoE energy@10 - dense energy@10", "direction",
          "direction; 10 directions as the paper's cum-var@10 (B.5)", SPECTRA,
          because("jacobian=mean", "dense=expert", "moe=topk", "step=final"), _spectrum_pair("energy@10", "diff", True),
          smallest_effect=FRACTION_SESOI, smallest_effect_source="fractions are read to whole percent"),
    Claim("C3b", "Faster spectral decay", "a more rapidly decaying spectrum", "§3.1 (Fig. 1C), §5, abstract",
          "dense sigma_10/sigma_1 - MoE sigma_10/sigma_1", "direction", "direction; index 10 as cum-var@10 (B.5)",
          SPECTRA, because("jacobian=mean", "dense=expert", "moe=topk", "step=final"),
          _spectrum_pair("sigma_ratio@10", "diff", False), smallest_effect=FRACTION_SESOI,
          smallest_effect_source="fractions are read to whole percent"),
    Claim("C3c", "Top-k more sharply structured Jacobian energy than soft",
          "This is associated with concentrated PCA spectra and more sharply structured Jacobian energy",
          "§3.4", "Top-k energy@10 - soft energy@10", "direction", "direction; 10 directions as cum-var@10 (B.5)",
          grid(jacobian=JACOBIAN_SPECTRA), because("jacobian=mean", "step=final"),
          _topk_vs_soft("energy@10", "jacobian", True), smallest_effect=FRACTION_SESOI,
          smallest_effect_source="fractions are read to whole percent"),
    Claim("C4", "Cross-expert cosines typically in [-0.01, 0.015]",
          "pairwise similarities are tightly concentrated near zero, with values typically ranging between -0.01 and 0.015",
          "§3.1 (Fig. 1B); §3.4 (both routing regimes)",
          f"fraction of a seed's expert pairs with cos in [-0.01, 0.015], minus {TYPICALLY}", "direction",
          f"'typically' read as at least {TYPICALLY:.0%} of pairs (the 10th-90th percentile inside the range)",
          grid(moe=MOE), because("moe=topk", "step=final"), _cos_in_range),
    Claim("C4n", "Cross-expert cosines at the level of chance",
          "Near-zero similarity indicates that experts implement distinct transformation subspaces", "A.3, §3.1",
          "mean |cos| over expert pairs / its expectation under the null", "equivalence",
          "ratio inside 1 +- 2 null coefficients of variation of a mean over E(E-1)/2 pairs (null: independent "
          "random d x d matrices, moegeo.probes.cosine_null; reading null=init: the same model at step 0)",
          grid(moe=MOE, null=("random", "init")), because("moe=topk", "step=final") + '; the null of A.3 "near zero"',
          _cos_to_chance, interval=chance_band(64, 8)),
    Claim("C5", "Higher effective rank than dense",
          "expert-local representations showed higher effective rank under weighted PCA than dense representations",
          "§5, §3.2 (Fig. 2B), abstract", "MoE expert k@0.9 - dense k@0.9", "direction", "direction", PCA,
          because("pca_site=input", "dense=expert", "moe=topk", "step=final"), _pca_pair("k@0.9", True),
          smallest_effect=COMPONENT_SESOI, smallest_effect_source="component counts are integers"),
    Claim("C5b", "Experts need more than twenty components",
          "MoE experts typically require more than twenty components", "§3.2 (Fig. 2B)", "MoE expert k@0.9 - 20",
          "direction", "the paper's 20", grid(pca_site=PCA_SITES, moe=MOE),
          because("pca_site=input", "moe=topk", "step=final"), _experts_over_20,
          note="non-diagnostic: at the literal site the input is isotropic N(0, I), whose PCA needs about 50 of 64 "
               "components whatever the routing, so this passing is not evidence for §3.2 (see C5, C5c, C6)"),
    Claim("C5c", "Dense reaches 90% with about three components",
          "the dense model reaches 90% cumulative variance with approximately three components", "§3.2 (Fig. 2B)",
          "dense k@0.9", "magnitude", "the paper's 3, widened by 0.5 each side (half a unit of an integer count)",
          grid(pca_site=PCA_SITES, dense=DENSE), because("pca_site=input", "dense=expert", "step=final"), _dense_k,
          interval=(3.0, 3.0), tolerance=0.5),
    Claim("C6", "Slower explained-variance decay for experts",
          "MoE experts show slower eigenvalue decay, with variance distributed more evenly across components",
          "§3.2 (Fig. 2A)", "dense e_1 - MoE expert e_1 (first explained-variance ratio)", "direction", "direction",
          PCA, because("pca_site=input", "dense=expert", "moe=topk", "step=final"),
          _pca_pair("explained_variance", False, index=1), smallest_effect=FRACTION_SESOI,
          smallest_effect_source="fractions are read to whole percent"),
    Claim("C7a", "Top-k more concentrated than soft (cum-var@10)",
          "cum-var@10 consistently higher than in the fully-soft case", "§3.3 (Fig. 3)",
          "Top-k cum-var@10 - soft cum-var@10 (expert means)", "direction", "direction", grid(pca_site=PCA_SITES),
          because("pca_site=input", "step=final"), _topk_vs_soft("cumvar@10", "pca_site", True),
          smallest_effect=FRACTION_SESOI, smallest_effect_source="fractions are read to whole percent"),
    Claim("C7b", "Top-k lower effective rank than soft (k@0.9)",
          "sharper routing produces more concentrated, lower effective-rank expert-local representations",
          "§3.3 (Fig. 3), abstract", "soft k@0.9 - Top-k k@0.9 (expert means)", "direction", "direction",
          grid(pca_site=PCA_SITES), because("pca_site=input", "step=final"), _topk_vs_soft("k@0.9", "pca_site", False),
          smallest_effect=COMPONENT_SESOI, smallest_effect_source="component counts are integers"),
    Claim("C8a", "Dense Jacobian norm grows steadily",
          "The dense model exhibits steady growth in the Jacobian norm throughout training", "§3.1 (Fig. 1A)",
          "Kendall's tau between dense norm and step over every recorded step up to the end", "direction",
          f"trend test: tau > 0; 'steady' needs tau >= {STEADY_TAU}", TRAJ_DENSE,
          because("jacobian=pointwise", "norm=spectral", "dense=expert", "step=final"), _steady, min_step=PLATEAU_STEP,
          smallest_effect=STEADY_TAU, smallest_effect_source="'steady': at least 3 of 4 step pairs rising"),
    Claim("C8b", "Dense Jacobian norm grows tenfold", "increasing from approximately 5 to over 50", "§3.1 (Fig. 1A)",
          "log(dense norm at the end / at step 0) - log 10", "direction",
          "the paper's scale-free part: final / initial > 50 / 5 = 10", TRAJ_DENSE,
          because("jacobian=pointwise", "norm=spectral", "dense=expert", "step=final"), _tenfold, min_step=PLATEAU_STEP),
    Claim("C8b0", "Dense Jacobian norm starts at about 5", "increasing from approximately 5", "§3.1 (Fig. 1A)",
          "dense norm at step 0", "magnitude", "the paper's 5, widened by 0.5 each side (half a unit of its last digit)",
          TRAJ_DENSE, because("jacobian=pointwise", "norm=spectral", "dense=expert"), _initial, interval=(5.0, 5.0),
          tolerance=0.5, steps=False),
    Claim("C8c", "MoE norms grow early in training",
          "Both the effective MoE Jacobian and individual expert-local Jacobians increase during early training",
          "§3.1 (Fig. 1A)", f"log(MoE norm at step {PLATEAU_STEP} / at step 0)", "direction", "direction", TRAJ_MOE,
          because("jacobian=pointwise", "norm=spectral", "moe=topk") + "; jacobian=effective (the whole layer, A.2) "
          "is the paper's other subject and is reported as its own reading",
          _moe_growth(0, PLATEAU_STEP), steps=False, smallest_effect=LOG_RATIO_SESOI,
          smallest_effect_source="log 1.05: ratios are reported to one decimal"),
    Claim("C8d", "MoE norms plateau after ~250 iterations", "but plateau after approximately 250 iterations",
          "§3.1 (Fig. 1A)", f"log(MoE norm at the end / at step {PLATEAU_STEP})", "equivalence",
          f"inside +-log 1.1 (declared: a change under 10% is flat on a log-scale figure)", TRAJ_MOE,
          because("jacobian=pointwise", "norm=spectral", "moe=topk", "step=final"), _moe_growth(PLATEAU_STEP, None),
          interval=(-PLATEAU_MARGIN, PLATEAU_MARGIN), min_step=2 * PLATEAU_STEP),
    Claim("C9a", "Uniform routing weakens functional decomposition",
          "If routing weights are nearly uniform across experts for most inputs, expert-local specialization may be "
          "weak, reducing both Jacobian decomposition and PCA differences", "§4 (expected failure mode 1)",
          f"soft mean |cos| at T={HOT_TEMPERATURE:g} - at T=1 (step {FAILURE_STEP})", "direction",
          f"direction; 'Jacobian decomposition' is low cross-expert alignment (§2.2, A.3); T={HOT_TEMPERATURE:g} "
          f"counts only if routing entropy >= {UNIFORM_ENTROPY} log E", {},
          "the one comparison §4 describes", _hot_alignment, steps=False, condition=_uniform_routing,
          smallest_effect=1 / 64, smallest_effect_source="one null sd of a single cosine, 1/d", hedged=True, note=HEDGED),
    Claim("C9b", "Uniform routing shrinks the PCA gap", "reducing both Jacobian decomposition and PCA differences",
          "§4 (expected failure mode 1)", f"|soft k@0.9 - dense k@0.9| at T=1 minus at T={HOT_TEMPERATURE:g} (step {FAILURE_STEP})",
          "direction", f"direction; T={HOT_TEMPERATURE:g} counts only if routing entropy >= {UNIFORM_ENTROPY} log E",
          grid(pca_site=PCA_SITES, dense=DENSE), because("pca_site=input", "dense=expert"), _hot_pca_gap, steps=False,
          condition=_uniform_routing, smallest_effect=COMPONENT_SESOI,
          smallest_effect_source="component counts are integers", hedged=True, note=HEDGED),
    Claim("C10", "Residual + shared LayerNorm raise expert alignment",
          "In architectures with heavy cross-expert interaction, residual connections, or shared normalization layers, "
          "expert-local geometry may be dominated by shared components rather than expert-specific transformations",
          "§4 (expected failure mode 2)",
          f"mean |cos| of expert charts in a pre-LN residual Top-k block - plain Top-k (step {FAILURE_STEP})", "direction",
          "direction: shared components show up as alignment between experts' mean Jacobians",
          grid(chart=("ln", "residual", "input")),
          "the expert chart seen from the block input through the shared LayerNorm (chart=ln) is the expert-local "
          "map the sentence is about; chart=residual adds the residual identity, chart=input is the MoE's own input",
          _coupled_alignment, steps=False, smallest_effect=1 / 64,
          smallest_effect_source="one null sd of a single cosine, 1/d", hedged=True, note=HEDGED),
    Claim("C11", "A second stacked MoE layer raises expert alignment",
          "In deeper MoE stacks, routing effects may compound, interfere, or average out across layers, potentially "
          "obscuring the clear geometric signatures observed in a single-layer setting", "§4 (expected failure mode 4)",
          f"mean |cos| of a two-layer Top-k stack's layer - single Top-k layer (step {FAILURE_STEP})", "direction",
          "direction: an obscured functional-decomposition signature is higher cross-expert alignment",
          grid(layer=(1, 0)), "layer 1 (the second) is where stacking can compound or average out",
          _deep_alignment, steps=False, smallest_effect=1 / 64,
          smallest_effect_source="one null sd of a single cosine, 1/d", hedged=True, note=HEDGED),
)

#: statements of the paper that no claim tests, with the reason
UNTESTED: tuple[tuple[str, str], ...] = (
    ("§3.1 'this difference is consistent with flatter expert-local sensitivity profiles and reduced anisotropy'",
     "an interpretation of C1-C3, not a separate measurement"),
    ("§3.2 'No small set of principal components dominates the spectrum to the same extent as in the dense baseline'",
     "the same statement as C6 (first explained-variance ratio)"),
    ("§3.2 'MoE routing redistributes representation variance across directions rather than collapsing representations'",
     "an interpretation of C5/C6"),
    ("§3.3 'Under Top-k routing, the explained-variance spectrum decays steeply ... Under fully-soft routing, the decay "
     "is noticeably flatter'", "tested through C7a (cum-var@10) and C7b (k@0.9), the paper's own summaries of Fig. 3"),
    ("§3.4 'low cross-expert Jacobian alignment persists across routing regimes'",
     "tested as C4 and C4n under moe=topk and moe=soft"),
    ("§3.4/abstract 'MoEs implement a form of soft partitioning of function space'", "an interpretation, not measurable"),
    ("§4 failure mode 3, 'Task-driven specialization overriding routing effects'",
     "needs experts trained for predefined tasks; the controlled setting has none"),
    ("§4 'attention mechanisms ... layer normalization can alter Jacobian spectra'",
     "the transformer setting (the later version's WikiText experiment) is not built yet"),
    ("Later version: 'confirm curvature reduction on natural language and show lower cross-expert alignment for Top-k routing'",
     "needs the language-model setting, not built yet"),
    ("B.1 'PCA spectra are stable across seeds'", "a design statement about the configuration; the seed spread is shown in every figure"),
)
