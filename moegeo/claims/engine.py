"""Papers' claims as seed-swept statistical assertions: the engine (one module per paper).

A ``Claim`` quotes its paper, names the per-seed statistic, its kind of test, the smallest
meaningful effect and every threshold with its source, and declares its reading axes: the
*first* option of every axis, at the final training step, is the **primary reading** (with the
paper's sentence that makes it primary); every other combination, and every other checkpoint,
is a **sensitivity reading**. Claims read only the tidy results frames.

An axis option that is a tuple is a *joint* reading: the claim must hold under every one of
its options at once (intersection-union test), used where the paper itself says "both" or where
two of its sentences define the quantity differently.

``evaluate`` tests every reading and decides with ``moegeo.stats.decide`` under one Holm
family per paper over its primary readings and one per paper over its sensitivity readings,
declared here once (``family``; a paper registers all its claims with ``register`` and is only
ever evaluated whole): what is shown never changes what is corrected.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from .. import stats


# --------------------------------------------------------------------------- reading the frames
class Results:
    """The results frames of one claims run, indexed for fast per-seed lookups.

    ``frames``: name -> tidy frame of ``moegeo.experiment.run`` (e.g. "main", "hot").
    """

    KEYS = ["arm", "layer", "metric", "reading", "step", "index", "seed"]

    def __init__(self, frames: dict[str, pd.DataFrame]):
        self.frames = frames
        self._means = {name: df.groupby(self.KEYS, sort=True)["value"].mean() for name, df in frames.items()}
        self._checkpoints = {name: sorted(set(df.step[df.metric == "sigma1"]), reverse=True) for name, df in frames.items()}
        self._views = {}

    def view(self, frame: str, layer: int | str = "pooled") -> "Results":
        """The results of a multi-layer setting (e.g. ``"lm"``) as a one-layer ``main`` frame, so
        every claim of the MLP setting reads it unchanged: one MoE ``layer``, or ``"pooled"``:
        every layer's experts as one population (a per-seed expert mean becomes the mean over
        all experts of all layers; cosines stay within a layer and every layer's pairs pool)."""
        if (frame, layer) not in self._views:
            df = self.frames[frame]
            df = df[df.layer >= 0] if layer == "pooled" else df[df.layer == int(layer)]
            if df.empty:
                raise LookupError(f"frame {frame!r} has no rows for layer {layer!r}")
            self._views[frame, layer] = Results({"main": df.assign(layer=0)})
        return self._views[frame, layer]

    def final_step(self, frame: str = "main") -> int:
        return int(self.frames[frame].steps.iloc[0])

    def checkpoints(self, frame: str = "main") -> list[int]:
        """Steps with full probes (``sigma1`` rows), final first."""
        return self._checkpoints[frame]

    def per_seed(self, arm: str, metric: str, reading: str = "", step: int | None = None, index: int = -1,
                 layer: int = 0, frame: str = "main") -> pd.Series:
        """A metric of one arm per seed, averaged over experts, at ``step`` (default final)."""
        step = self.final_step(frame) if step is None else step
        try:
            return self._means[frame].loc[(arm, layer, metric, reading, step, index)]
        except KeyError:
            raise LookupError(f"no rows in frame {frame!r} for arm={arm} layer={layer} metric={metric} "
                              f"reading={reading!r} step={step} index={index}") from None

    def curve(self, arm: str, metric: str, reading: str, step: int, layer: int = 0, frame: str = "main") -> pd.DataFrame:
        """A per-seed curve (expert mean): rows seeds, columns the 1-based index."""
        s = self._means[frame].loc[(arm, layer, metric, reading, step)]
        return s.unstack("seed").T

    def cosines(self, arm: str, reading: str, step: int, layer: int = 0, frame: str = "main") -> pd.DataFrame:
        """Each unordered expert pair's cosine once: columns seed, expert, index, value."""
        return self.pairs(arm, "cosine", reading, step, layer, frame)

    def pairs(self, arm: str, metric: str, reading: str, step: int | None = None, layer: int = 0,
              frame: str = "main") -> pd.DataFrame:
        """Each unordered expert pair's value of a pairwise metric (``index`` the partner) once,
        at ``step`` (default final): columns seed, expert, index, value."""
        step = self.final_step(frame) if step is None else step
        df = self.frames[frame]
        c = df[(df.arm == arm) & (df.layer == layer) & (df.metric == metric) & (df.reading == reading) & (df.step == step)]
        return c[c.expert < c["index"]]


@dataclass(frozen=True)
class Observation:
    """Per-seed values tested (``x``, indexed by seed) and the per-arm values behind them."""

    x: pd.Series
    arms: dict  # label -> per-seed values


def pair(a: pd.Series, b: pd.Series, la: str, lb: str, how: str = "diff") -> Observation:
    """Paired per-seed observation: a - b ("diff") or log(a / b) ("logratio") or a / b ("ratio")."""
    a, b = a.align(b, join="inner")
    x = {"diff": lambda: a - b, "ratio": lambda: a / b, "logratio": lambda: np.log(a / b)}[how]()
    return Observation(x, {la: a, lb: b})


def single(a: pd.Series, label: str) -> Observation:
    return Observation(a, {label: a})


# --------------------------------------------------------------------------- a claim
@dataclass(frozen=True)
class Claim:
    """One statement of a paper as a seed-swept test.

    ``kind``: "direction" (median x > 0), "equivalence" (median x inside ``interval``) or
    "magnitude" (median x inside the paper's ``interval`` widened by ``tolerance`` on each side,
    declared in the claim from the paper's wording). ``axes``: reading axis -> options, the
    first one primary (``primary_because`` quotes why). ``steps``: whether the checkpoints are a
    reading axis (else the claim reads the step it names). ``condition``: the claim's premise,
    checked for each reading; where it fails the verdict is CONDITION NOT MET (this only
    withholds verdicts, so it cannot raise the rate of false replications).
    """

    id: str
    title: str
    quote: str
    source: str
    statistic: str
    kind: str
    threshold: str
    axes: dict
    primary_because: str
    observe: Callable[[Results, dict], Observation]
    paper: str = "dual_jacobian_pca"
    interval: tuple[float, float] | None = None
    tolerance: float = 0.0
    smallest_effect: float = 0.0
    smallest_effect_source: str = "the threshold itself is the paper's"
    steps: bool = True
    min_step: int = 1
    condition: Callable[[Results, dict], tuple[bool, str]] | None = None
    note: str = ""
    hedged: bool = False  # the paper states it as an expectation (§4), not a result
    diagnostic: bool = True  # False: settled by construction in this setting (see note)
    #: the frame the claim reads: "main" (the MLP setting's main arms; the §4 claims name their
    #: own frames) or a multi-layer setting read through ``Results.view`` with the reading's
    #: ``layer`` (e.g. "lm": the language model)
    frame: str = "main"
    #: the id of the MLP-setting claim this one re-tests in another setting (a generalisation
    #: test, corrected in its own family); "" for the paper's own claims
    generalises: str = ""

    def results_for(self, results: Results, r: dict) -> Results:
        """What the claim reads under reading ``r``: the results, or the view of its setting."""
        return results if self.frame == "main" else results.view(self.frame, r.get("layer", "pooled"))

    def readings(self, results: Results) -> list[dict]:
        """Primary reading first, then every other combination of axes and checkpoints."""
        axes = dict(self.axes)
        if self.steps:
            axes["step"] = [s for s in self.results_for(results, {}).checkpoints() if s >= self.min_step]
        combos = [dict(zip(axes, c)) for c in itertools.product(*axes.values())]
        return combos

    @staticmethod
    def label(r: dict) -> str:
        return ";".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in r.items())

    @staticmethod
    def parts(r: dict) -> list[dict]:
        """The single readings a (possibly joint) reading is made of."""
        axes = {k: (v if isinstance(v, tuple) else (v,)) for k, v in r.items()}
        return [dict(zip(axes, c)) for c in itertools.product(*axes.values())]

    @property
    def bounds(self) -> tuple[float, float] | None:
        """The interval the test uses: the paper's, widened by the tolerance (magnitudes)."""
        if self.interval is None:
            return None
        return self.interval[0] - self.tolerance, self.interval[1] + self.tolerance

    def test(self, x) -> stats.TestResult:
        if self.kind == "direction":
            return stats.direction_test(x)
        return stats.equivalence_test(x, *self.bounds)

    def smallest_p(self, n: int) -> tuple[float, float]:
        """The smallest p-values n seeds can give this claim's primary reading: (claimed side,
        opposite side), each reached by a unanimous sweep. The claimed side is 2^-n for every kind
        (TOST and intersection-union take the largest part p). The opposite side multiplies 2^-n by
        2 for an interval (the two bounds, Bonferroni-doubled) and by the number of parts of a
        joint reading (intersection-union): up to 4 x 2^-n (``stats.equivalence_test``,
        ``stats.intersection_union``)."""
        parts = len(self.parts({k: v[0] for k, v in self.axes.items()}))
        return stats.min_p(n), min(1.0, parts * (1 if self.kind == "direction" else 2) * stats.min_p(n))

    def rule(self) -> str:
        """The decision rule in numbers."""
        if self.kind == "direction":
            s = "median > 0 (exact sign test)"
            if self.smallest_effect:
                s += f"; a significant |median| below {self.smallest_effect:.4g} is NEGLIGIBLE ({self.smallest_effect_source})"
            return s
        lo, hi = self.bounds
        what = "the paper's interval" if self.kind == "equivalence" else (
            f"the paper's [{self.interval[0]:g}, {self.interval[1]:g}] widened by {self.tolerance:g}")
        return f"median inside ({lo:.4g}, {hi:.4g}), {what} (exact two one-sided sign tests)"


def grid(**axes) -> dict:
    """Reading axes in declaration order: the first option of each is the primary one."""
    return {k: list(v) for k, v in axes.items()}


# --------------------------------------------------------------------------- the verdict
#: paper -> the ids of all its claims; a paper's Holm family is always all of them
REGISTRY: dict[str, tuple[str, ...]] = {}


def register(claims) -> tuple:
    """Declare a paper's claims (every claim of one paper): ``evaluate`` refuses a subset."""
    for paper in {c.paper for c in claims}:
        REGISTRY[paper] = tuple(c.id for c in claims if c.paper == paper)
    return tuple(claims)


def family(claim: Claim, primary: bool) -> str:
    """The Holm family a test belongs to: one per paper over its primary readings, one per
    paper over its sensitivity readings, and the same two for its generalisation tests (a claim
    re-tested in a setting the paper did not make it for)."""
    return f"{claim.paper}/{'generalisation-' if claim.generalises else ''}{'primary' if primary else 'sensitivity'}"


def evaluate(results: Results, claims, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Test every claim under every reading and decide each under its Holm family.

    Returns one row per (claim, reading): the test, per-arm medians, effect with its exact CI,
    the across-seed prediction interval, seeds in the claimed direction, raw and adjusted p,
    the family and its size, the verdict, and a message stating the rule in numbers.
    """
    names = [c.id for c in claims]
    if len(set(names)) != len(names):
        raise ValueError(f"claim ids must be unique, got duplicates {sorted({i for i in names if names.count(i) > 1})}")
    for paper, registered in REGISTRY.items():
        given = {c.id for c in claims if c.paper == paper}
        if given and given != set(registered):
            raise ValueError(f"paper {paper!r} must be evaluated whole (its Holm family is all its claims); "
                             f"missing {sorted(set(registered) - given)}")
    return decide_families(tested(results, claims), claims, alpha)


def tested(results: Results, claims, primary_only: bool = False) -> pd.DataFrame:
    """Every reading of every claim tested, before any correction: ``evaluate``'s rows without
    ``p_adj``, ``p_opposite_adj``, ``m``, ``verdict`` and ``message`` (``decide_families`` adds
    them). ``primary_only``: only each claim's primary reading (a claim with no reading here,
    e.g. one that needs a later checkpoint than the run has, gives no row)."""
    rows = []
    for c in claims:
        readings = c.readings(results)
        for i, r in enumerate(readings[:1] if primary_only else readings):
            obs = [c.observe(c.results_for(results, part), part) for part in c.parts(r)]
            xs = [o.x.to_numpy(dtype=float) for o in obs]
            t = stats.intersection_union([c.test(x) for x in xs])
            pi = stats.prediction_interval(xs[0])
            ok, cond_text = c.condition(c.results_for(results, r), r) if c.condition else (True, "")
            key = hashlib.sha1(b"".join(x.tobytes() for x in xs) + repr((c.kind, c.bounds)).encode()).hexdigest()
            medians = "; ".join(f"{k} {np.median(v):.4g}" for o in obs for k, v in o.arms.items())
            if len(obs) > 1:  # a joint reading: each part's median effect, by its reading
                medians += "; effect by part: " + ", ".join(f"{c.label(part)} {np.median(x):.4g}"
                                                            for part, x in zip(c.parts(r), xs))
            rows.append(dict(
                claim=c.id, paper=c.paper, title=c.title, reading=c.label(r), primary=i == 0, kind=c.kind,
                family=family(c, i == 0), n=t.n, n_claimed=t.n_claimed, effect=t.effect, ci_low=t.ci.low,
                ci_high=t.ci.high, ci_coverage=t.ci.coverage, pi_low=pi.low, pi_high=pi.high,
                pi_coverage=pi.coverage, p=t.pvalue, p_opposite=t.pvalue_opposite, condition_met=ok,
                condition=cond_text, key=key, medians=medians))
    return pd.DataFrame(rows)


def decide_families(rows: pd.DataFrame, claims, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """The decision rule on tested rows (``tested``): within each ``family``, Holm over both
    one-sided p-values of its distinct hypotheses (rows with the same ``key`` are one, counted
    once), then each row's verdict (``moegeo.stats.decide``) and message. Returns a copy with
    ``p_adj``, ``p_opposite_adj``, ``m`` (distinct hypotheses of the family), ``verdict`` and
    ``message``. Whatever grouping the ``family`` column holds is the family: ``evaluate``'s per
    paper, or ``moegeo.sensitivity``'s per claim across a grid."""
    out = rows.copy()
    out["p_adj"], out["p_opposite_adj"], out["m"] = np.nan, np.nan, 0
    for fam, g in out.groupby("family"):
        both = stats.holm_unique(np.concatenate([g.p, g.p_opposite]),
                                 [(k, "claimed") for k in g.key] + [(k, "opposite") for k in g.key])
        out.loc[g.index, "p_adj"], out.loc[g.index, "p_opposite_adj"] = both[: len(g)], both[len(g):]
        out.loc[g.index, "m"] = g.key.nunique()
    by_id = {c.id: c for c in claims}
    out["verdict"] = [_verdict(row, by_id[row.claim], alpha) for row in out.itertuples()]
    out["message"] = [_message(row, by_id[row.claim], alpha) for row in out.itertuples()]
    return out


def _verdict(row, c: Claim, alpha: float) -> str:
    if not row.condition_met:
        return stats.Verdict.CONDITION_NOT_MET.value
    t = stats.TestResult(row.p, row.p_opposite, row.effect, stats.Interval(row.ci_low, row.ci_high, row.ci_coverage),
                         row.n, row.n_claimed)
    return stats.decide(t, row.p_adj, row.p_opposite_adj, c.kind, row.m, alpha, c.smallest_effect).value


def paper_value_in_prediction_interval(row, c: Claim) -> bool | None:
    """Magnitude claims: whether the paper's single-seed value could be one of our seeds, i.e.
    its interval meets our across-seed prediction interval (the paper: "results are shown for a
    single random seed", §3)."""
    if c.kind != "magnitude":
        return None
    return bool(row.pi_high >= c.interval[0] and row.pi_low <= c.interval[1])


def _message(row, c: Claim, alpha: float) -> str:
    text = (f"{c.id} {c.title} ({row.reading}): {row.verdict}. {c.statistic}: median {row.effect:.4g}, "
            f"exact {100 * row.ci_coverage:.1f}% CI [{row.ci_low:.4g}, {row.ci_high:.4g}]; "
            f"{row.n_claimed}/{row.n} seeds {'in the claimed direction' if c.kind == 'direction' else 'inside the interval'}; "
            f"per-arm medians: {row.medians}. Rule: {c.rule()}; one-sided p = {row.p:.3g} (claimed), "
            f"{row.p_opposite:.3g} (opposite), Holm-adjusted {row.p_adj:.3g} and {row.p_opposite_adj:.3g} over the "
            f"2 x {row.m} one-sided tests of family {row.family} at alpha = {alpha:g}")
    inside = paper_value_in_prediction_interval(row, c)
    if inside is not None:
        text += (f"; our {100 * row.pi_coverage:.1f}% prediction interval for one seed [{row.pi_low:.4g}, {row.pi_high:.4g}] "
                 f"{'meets' if inside else 'excludes'} the paper's single-seed value")
    if row.verdict == stats.Verdict.TOO_FEW_SEEDS.value:
        text += (f"; with {row.n} seeds the smallest possible p is 2^-{row.n} = {stats.min_p(row.n):.3g} "
                 f"> alpha/2m = {alpha / (2 * row.m):.3g}")
    opposite, undecided = c.smallest_p(row.n)[1], (stats.Verdict.NOT_REPLICATED.value, stats.Verdict.INCONCLUSIVE.value)
    if row.verdict in undecided and opposite > alpha / (2 * row.m):
        text += (f"; with {row.n} seeds the opposite side's smallest possible p is {opposite:.3g} > alpha/2m = "
                 f"{alpha / (2 * row.m):.3g}, so this test could not have found the claim "
                 f"{'contradicted' if c.kind != 'magnitude' else 'of a different size'}")
    if row.verdict == stats.Verdict.CONDITION_NOT_MET.value:
        text += f"; premise not met: {row.condition}"
    elif row.condition:
        text += f"; premise: {row.condition}"
    return text
