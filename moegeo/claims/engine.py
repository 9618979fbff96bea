"""The claims engine: a paper's claims as seed-swept statistical assertions over the tidy frames.

A ``Claim`` quotes its paper, names the per-seed statistic, its kind of test, the smallest
meaningful effect and every threshold with its source, and declares its reading axes: the
*first* option of every axis, at the final training step, is the **primary reading** (with the
paper's sentence that makes it primary); every other combination, and every other checkpoint,
is a **sensitivity reading**. An axis option that is a tuple is a *joint* reading: the claim
must hold under each of its options (its *parts*), used where the paper says "both" or where two
of its sentences define the quantity differently.

``evaluate`` tests every reading and decides with ``moegeo.stats.decide``: one Holm family per
paper over its primary readings (every part's every hypothesis), one per paper, setting and seed
count over its sensitivity readings (after Tarone's rule). Each primary reading is also tested
on the claim's declared **controls** (the arms at initialisation, the routing weights permuted
across inputs, the router at initialisation), each in its own family under the same rule; a
claim whose control reaches the same call is ``BY CONSTRUCTION``. What is shown never changes
what is corrected.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import stats
from .describe import message
from .results import CONTROLS, Observation, Results

#: why a claim on the experts' functions is not tested on the routing controls
FUNCTIONS = (
    "the routing controls are not declared: they keep the trained experts, whose functions the statistic "
    "compares, and change only which inputs weigh in (they are declared for statistics of the routed inputs: "
    "the weighted PCA, the subspaces, the router scores)"
)


# --------------------------------------------------------------------------- a claim
@dataclass(frozen=True)
class Claim:
    """One statement of a paper as a seed-swept test.

    ``kind``: "direction" (median x > 0; either way if ``two_sided``) or "magnitude" (the paper's
    single-seed value, in ``interval`` widened by ``tolerance``, on the ``scale`` of x: "log" for
    ratios). ``axes``: reading axis -> options, the first primary (``primary_because`` quotes
    why). ``steps``: whether the checkpoints are a reading axis. ``condition``: the claim's
    premise, checked on the trained runs; where it fails the verdict is CONDITION NOT MET.
    ``controls``: the declared controls it is also tested on (``CONTROLS``), ``control_note``
    why others do not apply. ``threshold_declared``: the threshold (or interval) is moegeo's, not
    the paper's, so its tipping point is reported; ``threshold_value`` and ``threshold_sign`` put
    it in the threshold's own units (x = sign * (statistic - threshold)). ``paper_effect``: the
    effect the paper reports, on x's scale, for the power (``power_reference``: the arm whose
    seed spread models the noise). ``measures``: what was measured, for the headline's grouping.
    ``revisions``: how the claim's declaration changed, and why.
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
    scale: str = "linear"
    two_sided: bool = False
    smallest_effect: float = 0.0
    smallest_effect_source: str = "the threshold itself is the paper's"
    steps: bool = True
    min_step: int = 1
    condition: Callable[[Results, dict], tuple[bool, str]] | None = None
    note: str = ""
    hedged: bool = False  # the paper states it as an expectation ("may"), not a result
    diagnostic: bool = True  # False: settled by construction in this setting (see note)
    frame: str = "main"
    generalises: str = ""
    controls: tuple[str, ...] = ("init",)
    control_note: str = FUNCTIONS
    threshold_declared: bool = False
    threshold_value: float | None = None
    threshold_sign: int = 1
    paper_effect: float | None = None
    paper_effect_source: str = ""
    power_reference: str = ""
    measures: str = ""
    revisions: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("direction", "magnitude"):
            raise ValueError(f"{self.id}: kind must be 'direction' or 'magnitude', got {self.kind!r}")
        unknown = set(self.controls) - set(CONTROLS)
        if unknown:
            raise ValueError(f"{self.id}: unknown controls {sorted(unknown)}")

    def results_for(self, results: Results, r: dict) -> Results:
        """What the claim reads under reading ``r``: the results, or the view of its setting."""
        if self.frame == "main":
            return results
        return results.view(self.frame, r.get("layer", "pooled"), r.get("router", "learned"))

    def readings(self, results: Results) -> list[dict]:
        """Primary reading first, then every other combination of axes and checkpoints."""
        axes = dict(self.axes)
        if self.steps:
            axes["step"] = [s for s in self.results_for(results, {}).checkpoints() if s >= self.min_step]
        return [dict(zip(axes, c)) for c in itertools.product(*axes.values())]

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
        """A magnitude's interval widened by the tolerance, on the scale of x."""
        if self.interval is None:
            return None
        lo, hi = self.interval[0] - self.tolerance, self.interval[1] + self.tolerance
        return (math.log(lo), math.log(hi)) if self.scale == "log" else (lo, hi)

    def values(self, obs: Observation) -> np.ndarray:
        """The per-seed values the test reads (log of a ratio on the log scale)."""
        x = obs.x.to_numpy(dtype=float)
        return np.log(x) if self.kind == "magnitude" and self.scale == "log" else x

    def part(self, x: np.ndarray) -> stats.Part:
        return stats.Part(x, self.kind, self.smallest_effect, self.bounds, self.two_sided, self.hedged)

    def rule(self) -> str:
        """The decision rule in numbers."""
        if self.kind == "magnitude":
            lo, hi = self.interval[0] - self.tolerance, self.interval[1] + self.tolerance
            return (
                f"CONSISTENT unless the paper's single-seed value, in [{lo:.4g}, {hi:.4g}], lies significantly outside "
                f"our seeds' normal prediction interval ({'log' if self.scale == 'log' else 'linear'} scale)"
            )
        d = self.smallest_effect
        side = "|median| > " if self.two_sided else "median > "
        if not d:
            return f"{side}0 (exact sign test)"
        return (
            f"{side}{d:.4g} (exact sign test against the smallest meaningful effect, {self.smallest_effect_source}); "
            f"NEGLIGIBLE if the median is significantly inside (-{d:.4g}, {d:.4g})"
        )


def grid(**axes) -> dict:
    """Reading axes in declaration order: the first option of each is the primary one."""
    return {k: list(v) for k, v in axes.items()}


# --------------------------------------------------------------------------- families
#: paper -> the ids of all its claims; a paper's Holm family is always all of them
REGISTRY: dict[str, tuple[str, ...]] = {}


def register(claims) -> tuple:
    """Declare a paper's claims (every claim of one paper): ``evaluate`` refuses a subset."""
    for paper in {c.paper for c in claims}:
        REGISTRY[paper] = tuple(c.id for c in claims if c.paper == paper)
    return tuple(claims)


def family(claim: Claim, primary: bool, n: int | None = None) -> str:
    """The Holm family of a test: one per paper over its primary readings (the same for its
    generalisation tests, a claim re-tested in a setting the paper did not make it for), and per
    paper, setting and seed count over its sensitivity readings."""
    base = f"{claim.paper}/{'generalisation-' if claim.generalises else ''}"
    return base + ("primary" if primary else f"sensitivity/{claim.frame}/n={n}")


def _sensitive(fam: str) -> bool:
    return "/sensitivity" in fam or fam.startswith("grid/")


# --------------------------------------------------------------------------- testing
def tested(results: Results, claims, primary_only: bool = False, trained: Results | None = None) -> pd.DataFrame:
    """Every reading of every claim, before any correction: one row per (claim, reading) with its
    parts (``parts``, ``stats.Part`` objects, and ``part_labels``), the per-arm medians, the
    family, the premise (checked on ``trained``, default ``results``) and the values' summary.
    ``primary_only``: only each claim's primary reading (a claim with no reading here gives no
    row)."""
    trained = results if trained is None else trained
    rows = []
    for c in claims:
        readings = c.readings(results)
        for i, r in enumerate(readings[:1] if primary_only else readings):
            labels = c.parts(r)
            obs = [c.observe(c.results_for(results, part), part) for part in labels]
            xs = [c.values(o) for o in obs]
            seeds = [o.x.index.to_numpy() for o in obs]
            ok, cond_text = c.condition(c.results_for(trained, r), r) if c.condition else (True, "")
            medians = "; ".join(f"{k} {np.median(v):.4g}" for o in obs for k, v in o.arms.items())
            ci = stats.median_ci(xs[0]) if len(xs[0]) else stats.Interval(np.nan, np.nan, 0)
            rows.append(
                dict(
                    claim=c.id,
                    paper=c.paper,
                    title=c.title,
                    reading=c.label(r),
                    primary=i == 0,
                    kind=c.kind,
                    family=family(c, i == 0, len(xs[0])),
                    n=len(xs[0]),
                    effect=float(np.median(xs[0])),
                    ci_low=ci.low,
                    ci_high=ci.high,
                    parts=[c.part(x) for x in xs],
                    part_labels=[c.label(p) for p in labels],
                    part_seeds=seeds,
                    part_arms=[o.arms for o in obs],
                    part_how=[o.how for o in obs],
                    condition_met=ok,
                    condition=cond_text,
                    medians=medians,
                )
            )
    return pd.DataFrame(rows)


def decide_families(rows: pd.DataFrame, claims, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """The decision rule on tested rows (``tested``): within each ``family``, ``stats.decide`` over
    every part of every row (Holm over their distinct hypotheses; Tarone's rule first in a
    sensitivity family), then each row's verdict, part verdicts and message. Returns a copy with
    ``M`` (the family's hypotheses tested), ``verdict``, ``decision`` (the ``stats.Decision``),
    ``p_adj`` (the adjusted p of the hypothesis behind the verdict, or the smallest) and
    ``message``. Whatever grouping ``family`` holds is the family."""
    out = rows.copy()
    out["decision"], out["M"] = None, 0
    for fam, g in out.groupby("family", sort=False):
        decisions = stats.decide(list(g.parts), alpha, drop_untestable=_sensitive(fam))
        out.loc[g.index, "decision"] = pd.Series(decisions, index=g.index, dtype=object)
        out.loc[g.index, "M"] = decisions[0].M if decisions else 0
    by_id = {c.id: c for c in claims}
    out["verdict"] = [
        stats.Verdict.CONDITION_NOT_MET.value if not row.condition_met else row.decision.verdict.value
        for row in out.itertuples()
    ]
    out["p_adj"] = [_deciding_p(row.decision) for row in out.itertuples()]
    out["message"] = [message(row, by_id[row.claim], alpha) for row in out.itertuples()]
    return out


def _deciding_p(d: stats.Decision) -> float:
    """The adjusted p-value behind a decision: the largest over parts of each part's smallest."""
    return max(min(p.p_adj.values()) for p in d.parts)


# --------------------------------------------------------------------------- evaluate
def evaluate(
    results: Results, claims, alpha: float = stats.ALPHA, controls: bool = True, whole: bool = True
) -> pd.DataFrame:
    """Test every claim under every reading, decide each under its Holm family, and test every
    primary reading on its declared controls (``controls=False`` skips them, e.g. for frames
    without control rows). Returns one row per (claim, reading); primary rows also carry, per
    control, ``control_<name>`` (its verdict) and ``delta_<name>`` (the trained-minus-control
    median and exact CI of each part, paired by seed), and ``raw_verdict`` (the verdict before a
    control made it BY CONSTRUCTION). ``whole=False`` allows a subset of a paper's claims (a
    sensitivity grid's point), whose family is then that subset."""
    names = [c.id for c in claims]
    if len(set(names)) != len(names):
        raise ValueError(f"claim ids must be unique, got duplicates {sorted({i for i in names if names.count(i) > 1})}")
    for paper, registered in REGISTRY.items() if whole else ():
        given = {c.id for c in claims if c.paper == paper}
        if given and given != set(registered):
            raise ValueError(
                f"paper {paper!r} must be evaluated whole (its Holm family is all its claims); "
                f"missing {sorted(set(registered) - given)}"
            )
    out = decide_families(tested(results, claims), claims, alpha)
    out["raw_verdict"] = out.verdict
    for name in CONTROLS:
        out[f"control_{name}"], out[f"delta_{name}"] = None, None
    if not controls:
        return out
    prim = out[out.primary]
    for name in CONTROLS:
        with_it = [c for c in claims if name in c.controls]
        if not with_it:
            continue
        view = results.control(name)
        rows = []
        for c in with_it:
            try:
                rows.append(tested(view, [c], primary_only=True, trained=results))
            except (LookupError, KeyError):  # the frames this claim reads have no such control
                continue
        if not rows:
            continue
        ctrl = pd.concat(rows, ignore_index=True)
        ctrl = ctrl.assign(family=ctrl.family + f"@{name}")
        ctrl = decide_families(ctrl, with_it, alpha).set_index("claim")
        for i, row in prim.iterrows():
            if row.claim not in ctrl.index:
                continue
            crow = ctrl.loc[row.claim]
            out.at[i, f"control_{name}"] = crow.verdict
            out.at[i, f"delta_{name}"] = _paired_deltas(row, crow)
    for i, row in out[out.primary].iterrows():
        same = [n for n in CONTROLS if _same_call(row, n)]
        if same:
            out.at[i, "verdict"] = stats.Verdict.BY_CONSTRUCTION.value
            out.at[i, "message"] = (
                f"{row.claim}: BY CONSTRUCTION ({row.verdict.lower()} under the trained runs and "
                f"equally under the {', '.join(same)} control(s)). " + row.message
            )
    return out


#: calls a control reaching equally makes BY CONSTRUCTION; a NEGLIGIBLE effect is not constructed
CONSTRUCTED = {v.value for v in stats.CALLS} - {stats.Verdict.NEGLIGIBLE.value}


def _same_call(row, control: str) -> bool:
    """Whether the ``control`` reaches the row's call: the same verdict, among ``CONSTRUCTED``
    and, for a magnitude the paper's value misses, on the same side of it."""
    if row[f"control_{control}"] != row.verdict or row.verdict not in CONSTRUCTED:
        return False
    if row.verdict != stats.Verdict.DIFFERENT_SIZE.value:
        return True

    def side(median: float, interval) -> int:
        return 1 if median > interval[1] else -1 if median < interval[0] else 0

    return all(
        side(float(np.median(p.x)), p.interval) == side(d["control_effect"], p.interval)
        for d, p in zip(row[f"delta_{control}"], row.parts)
    )


def _paired_deltas(row, crow) -> list[dict]:
    """Per part, trained minus control per seed (paired on the seeds both have): median and exact CI."""
    out = []
    for x, s, cx, cs in zip((p.x for p in row.parts), row.part_seeds, (p.x for p in crow.parts), crow.part_seeds):
        a, b = pd.Series(x, index=s), pd.Series(cx, index=cs)
        a, b = a.align(b, join="inner")
        d = (a - b).to_numpy()
        ci = stats.median_ci(d) if len(d) else stats.Interval(np.nan, np.nan, 0)
        out.append(
            dict(
                effect=float(np.median(d)) if len(d) else np.nan,
                ci_low=ci.low,
                ci_high=ci.high,
                n=len(d),
                control_effect=float(np.median(cx)),
            )
        )
    return out


# --------------------------------------------------------------------------- tipping points and power
def tipping_shift(rows: pd.DataFrame, index, alpha: float = stats.ALPHA) -> tuple[float, str] | None:
    """The smallest shift c of a declared threshold, in the statistic's units (every part's x
    moved by +c), at which the verdict of row ``index`` of its family changes, the rest of the
    family held as it is; and the verdict it changes to. None if no shift within the range of
    the data changes it."""
    fam = rows[rows.family == rows.at[index, "family"]]
    pos = list(fam.index).index(index)
    readings = list(fam.parts)
    base = stats.decide(readings, alpha, drop_untestable=_sensitive(rows.at[index, "family"]))[pos].verdict
    parts = readings[pos]
    xs = np.concatenate([p.x for p in parts])
    d = parts[0].delta
    edges = np.unique(np.concatenate([-xs, d - xs, -d - xs]))
    if parts[0].kind == "magnitude":
        lo, hi = parts[0].interval
        edges = np.unique(np.concatenate([edges, lo - xs, hi - xs]))
    span = float(np.ptp(xs)) + 2 * d + 1e-12
    eps = 1e-9 * span
    candidates = sorted(
        {c + s for c in edges for s in (-eps, eps)} | {c for c in np.linspace(-span, span, 41)}, key=abs
    )
    for c in candidates:
        shifted = [
            stats.Part(p.x + c, p.kind, p.delta, None if p.interval is None else p.interval, p.two_sided, p.hedged)
            for p in parts
        ]
        trial = readings[:pos] + [shifted] + readings[pos + 1 :]
        v = stats.decide(trial, alpha, drop_untestable=_sensitive(rows.at[index, "family"]))[pos].verdict
        if v is not base:
            return float(c), v.value
    return None


def claim_power(row, c: Claim, alpha: float = stats.ALPHA) -> tuple[float, str]:
    """The power of a primary test, at Holm's worst case for its family (every other hypothesis
    null): at the paper's effect (``paper_effect``) under a normal seed noise whose sd is sqrt(2)
    times the robust seed spread of the claim's ``power_reference`` arm (not of the effect itself),
    where the claim has both; else when 90% of the seeds point the claimed way beyond the smallest
    effect (distribution-free). Returns (power, how it was computed)."""
    n, M = row.n, max(int(row.M), 1)
    if c.paper_effect is not None and c.power_reference:
        arms = row.part_arms[0]
        ref = arms.get(c.power_reference)
        if ref is not None and len(ref) > 2:
            v = ref.to_numpy(dtype=float)
            v = np.log(v) if row.part_how[0] in ("logratio", "ratio") else v
            sd = math.sqrt(2) * 1.4826 * float(np.median(np.abs(v - np.median(v))))
            if sd > 0:
                return (
                    stats.normal_power(c.paper_effect, sd, c.smallest_effect, n, M, alpha),
                    f"at the paper's effect {c.paper_effect:.3g} ({c.paper_effect_source}), noise sd {sd:.3g} from the "
                    f"seed spread of {c.power_reference}",
                )
    return stats.power(0.9, n, M, alpha), "if 90% of seeds point the claimed way beyond the smallest effect"


# --------------------------------------------------------------------------- the frozen declarations
#: the declarations digest recorded when they were frozen, before the confirmatory run
FROZEN = Path(__file__).with_name("frozen.json")


def declarations_digest() -> str:
    """sha256 over what declares the verdicts: every claims module (claims, readings, thresholds,
    controls, the grid; every module of ``moegeo/claims/`` and its packages) and the statistics
    engine (``moegeo/stats.py``), each under its path relative to ``moegeo/``."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")) + [root.parent / "stats.py"]:
        h.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def frozen() -> dict | None:
    """The frozen declarations' record (digest, date, confirmatory seeds), or None if never frozen."""
    return json.loads(FROZEN.read_text()) if FROZEN.exists() else None


def freeze(date: str, exploratory: str, confirmatory_offset: int, path: Path = FROZEN) -> dict:
    """Record the declarations as frozen: their digest (``declarations_digest``), the ``date``,
    the ``exploratory`` seeds looked at while they were written, and the first confirmatory seed.
    Run once, before the confirmatory run; a test then fails on any later change."""
    record = dict(
        digest=declarations_digest(), date=date, exploratory=exploratory, confirmatory_offset=confirmatory_offset
    )
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record
