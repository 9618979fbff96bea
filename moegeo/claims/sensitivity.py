"""Where each claim holds: the claims of the MLP setting's main arms over a declared grid of
configs around the paper's (the "sensitivity maps"). **Exploratory**: it says where a verdict
changes, it is not a verdict.

The grids (``GRIDS``; ``grid(name)``) are named dicts of ``ExperimentConfig`` built from the
claims' main configuration (``dual_jacobian_pca.main_config``, on the confirmatory seeds) with
``dataclasses.replace``, over the axes of ``AXES``: E (``n_experts``), k (``top_k``), the
learning rate, the router temperature (B.3's 1.0 halved and doubled; T = 10 is §4's failure arm,
outside the grid) and the expert width ``d_hidden``. A **grid point** is a config at one of its
checkpoints: the steps axis is read from the same runs, each read as if it had stopped there
(``at_step``; Adam has no schedule, so the first s steps of a longer run are the s-step run).
The axes that do not apply to an arm leave it as at the centre (the dense arm of expert width is
the same across E, k and T; the parameter-matched dense arm follows E).

* ``small``: fits the 2-core reference machine. E x k factorial over E in {4, 8} and k in {1, 2}
  (the heat map), one axis at a time around the centre (lr in {3e-4, 3e-3}, T in {0.5, 2},
  d_hidden 64), ``SMALL_STEPS`` steps (probes at 250 and 500) and ``SMALL_SEEDS`` seeds. **Its
  centre is not the main run's primary configuration**: 500 steps, not 1000 (the budget).
* ``full``: the whole grid, for a cluster or a GPU: E and k in {4, 8, 16} x {1, 2, 4}, lr, T and
  d_hidden one at a time, the main run's 24 seeds and 1000 steps (its centre is the main run's).

**The decision rule** (``IN_GRID`` claims; declared before any grid was run):

1. *Per point*: each claim's primary reading with its own statistic, test and smallest effect,
   decided by the main run's rule under its paper's primary family restricted to the in-grid
   claims (``verdict``), and on the point's init control (``control_init``).
2. *Across the grid, per claim*: Holm over every hypothesis of the claim at every point where it
   can be read (identical observations counted once, Tarone's rule first): ``grid_verdict``.
3. *The map*: a point **holds** where both give REPLICATED, **fails** where both give
   CONTRADICTED, DIFFERENT SIZE or NOT BORNE OUT, is **negligible** where both give NEGLIGIBLE;
   a hold or fail whose init control reaches the same call is **by construction**; anything else
   is undecided. A difference between points is claimed only where one holds and another fails
   (opposite significant calls): an undecided point is not evidence of a difference.
4. *Across the maps*: nothing corrects across claims; the section prints, beside every
   sentence, the union bound of every map's family-wise error under the global null (each map's
   hypotheses at their exact size at Holm's first step).
5. *Seeds*: a grid has at least ``min_seeds`` of its largest family (a unanimous sweep can pass
   Holm's first step there).

Plus **G6**, the asymmetry paper's "routing sparsity appears to be a key factor shaping this
geometry", on the grid: G4-mlp's and G5-mlp's statistics at k = 1 minus at k = 2 (E = 8, the
final step), paired by seed, in their own family (``sparsity_table``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass

import pandas as pd
import scipy.stats

from .. import executors, stats, sweeps
from ..config import ExperimentConfig
from . import dual_jacobian_pca as dual
from . import geometric_asymmetry, routers_geometry
from .engine import Claim, decide_families, evaluate
from .results import Observation, Results, pair

#: the axes of the issue, each with its values around the paper's configuration (the centre: B.1
#: E = 8, A.5 k = 2, B.6 lr = 1e-3, B.3 T = 1, B.1 d_hidden = 128)
AXES = {
    "n_experts": (4, 8, 16),
    "top_k": (1, 2, 4),
    "lr": (3e-4, 1e-3, 3e-3),
    "temperature": (0.5, 1.0, 2.0),
    "d_hidden": (64, 128, 256),
}
#: short names of the axes and of the checkpoint, as the report writes them
LABELS = {"n_experts": "E", "top_k": "k", "lr": "lr", "temperature": "T", "d_hidden": "d_hidden", "step": "step"}
#: the small grid's seeds: min_seeds of its largest family (rule 5; tests/test_sensitivity.py)
SMALL_SEEDS = 16
#: the small grid's steps: half the main run's, for the budget (module docstring)
SMALL_STEPS = 500
#: verdicts that count as evidence against the claim as stated ("fails for"; rule 3)
FAILS = (stats.Verdict.CONTRADICTED.value, stats.Verdict.DIFFERENT_SIZE.value, stats.Verdict.NOT_BORNE_OUT.value)

#: the claims that read only the MLP setting's main arms (frame "main") but also need runs outside
#: the grid, with the runs they need
NEEDS_OTHER_RUNS = {
    "C9a": "§4 soft routing at T = 10 (its own run)",
    "C9b": "§4 soft routing at T = 10 (its own run)",
    "C10": "§4 Top-k in a pre-LayerNorm residual block (its own arm)",
    "C11": "§4 two stacked Top-k layers (its own arm)",
}
IN_GRID = tuple(c for c in dual.MLP_CLAIMS if c.id not in NEEDS_OTHER_RUNS) + tuple(
    c for c in geometric_asymmetry.CLAIMS if c.frame == "main"
)
_RUNS = {
    "lm": "the language model's runs",
    "hf": "a pretrained Hugging Face checkpoint",
    routers_geometry.PAPER: "the routers paper's balancing routers on the language model",
}
#: every other claim of the three papers, with the runs it needs instead
NOT_IN_GRID = {
    c.id: NEEDS_OTHER_RUNS.get(c.id) or _RUNS[c.paper if c.paper == routers_geometry.PAPER else c.frame]
    for c in dual.CLAIMS + geometric_asymmetry.CLAIMS + routers_geometry.CLAIMS + geometric_asymmetry.PRETRAINED_CLAIMS
    if c.id not in {i.id for i in IN_GRID}
}


def min_seeds(M: int, alpha: float = stats.ALPHA) -> int:
    """The fewest seeds whose unanimous sweep passes Holm's first step in a family of M
    hypotheses: the smallest n with 2^-n <= alpha / M."""
    if M < 1:
        raise ValueError(f"a family has at least one hypothesis, got M = {M}")
    return math.ceil(math.log2(M / alpha) - 1e-12)


# --------------------------------------------------------------------------- the grids
@dataclass(frozen=True)
class Grid:
    """A declared grid: ``configs`` (name -> config; "centre" is the centre, every other name
    lists the fields that differ from it), what it is (``about``) and its cost (``budget``)."""

    name: str
    configs: dict[str, ExperimentConfig]
    about: str
    budget: str

    def points(self) -> list[tuple[str, int]]:
        """The grid points: (config name, checkpoint), every checkpoint of every config."""
        return [(name, s) for name, cfg in self.configs.items() for s in cfg.checkpoints()]


def design(centre: ExperimentConfig, factorial: dict, one_at_a_time: dict) -> dict[str, ExperimentConfig]:
    """Configs around ``centre``: every combination of the ``factorial`` axes (field -> values;
    the others at the centre) and each value of each ``one_at_a_time`` axis with everything else
    at the centre. Named by the fields that differ from the centre ("centre" for the centre);
    the same config is kept once; combinations with k > E are skipped. Ordered by decreasing
    expert size E x d_hidden (the longest runs start first)."""
    out = {}
    changes = [dict(zip(factorial, c)) for c in itertools.product(*factorial.values())]
    changes += [{field: v} for field, values in one_at_a_time.items() for v in values]
    for change in changes:
        diff = {k: v for k, v in change.items() if getattr(centre, k) != v}
        if change.get("top_k", centre.top_k) > change.get("n_experts", centre.n_experts):
            continue
        name = ",".join(f"{LABELS[k]}={v:g}" for k, v in diff.items()) or "centre"
        out.setdefault(name, dataclasses.replace(centre, **diff))
    return dict(sorted(out.items(), key=lambda kv: -kv[1].n_experts * kv[1].d_hidden))


def small_grid() -> Grid:
    centre = dual.main_config(SMALL_SEEDS, steps=SMALL_STEPS)
    configs = design(
        centre,
        {"n_experts": (4, 8), "top_k": (1, 2)},
        {"lr": (3e-4, 3e-3), "temperature": (0.5, 2.0), "d_hidden": (64,)},
    )
    return Grid(
        "small",
        configs,
        f"E x k factorial over E in {{4, 8}} and k in {{1, 2}}, and one axis at a time around the centre "
        f"(lr 3e-4 and 3e-3, T 0.5 and 2, d_hidden 64); {SMALL_SEEDS} seeds, {SMALL_STEPS} steps (probes at "
        f"250 and {SMALL_STEPS}), the paper's other sizes",
        "runs on the 2-core reference machine within 30 minutes (`--executor processes:2`)",
    )


def full_grid() -> Grid:
    centre = dual.main_config()
    configs = design(
        centre, {k: AXES[k] for k in ("n_experts", "top_k")}, {k: AXES[k] for k in ("lr", "temperature", "d_hidden")}
    )
    return Grid(
        "full",
        configs,
        f"E x k factorial over E in {{4, 8, 16}} and k in {{1, 2, 4}}, and one axis at a time around the "
        f"centre (lr 3e-4 and 3e-3, T 0.5 and 2, d_hidden 64 and 256); {dual.SEEDS} seeds, "
        f"{centre.steps} steps (probes at 250, 500 and {centre.steps}), the paper's sizes",
        "needs a cluster: about 5 CPU-hours (`--executor dask://host:port` or `slurm:PARTITION`)",
    )


#: the declared grids by name (built on demand: ``grid(name)``)
GRIDS = {"small": small_grid, "full": full_grid}


def grid(name: str) -> Grid:
    """The declared grid ``name``; ValueError naming the declared ones."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}: the declared grids are {', '.join(GRIDS)}")
    return GRIDS[name]()


# --------------------------------------------------------------------------- claims at each point
def at_step(frame: pd.DataFrame, step: int) -> pd.DataFrame:
    """The run of ``frame`` as if it had stopped at checkpoint ``step``: its rows up to that step,
    with ``steps`` (the final step) set to it."""
    if step not in set(frame.step):
        raise ValueError(f"step {step} is not a step of this run (its steps: {sorted(set(frame.step))[:8]} ...)")
    return frame[frame.step <= step].assign(steps=step)


def evaluate_point(frame: pd.DataFrame, step: int, claims=IN_GRID, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Every claim of ``claims`` at its primary reading on the run ``frame`` stopped at ``step``,
    decided by the main run's rule under its paper's primary family restricted to ``claims``, and
    on the point's init control (rule 1). A claim not readable at that step (it needs a later
    checkpoint) gives no row."""
    results = Results({"main": at_step(frame, step)})
    readable = []
    for c in claims:
        try:
            c.observe(c.results_for(results, c.readings(results)[0]), c.parts(c.readings(results)[0])[0])
        except (LookupError, IndexError):  # e.g. C8a's window in a run shorter than 500 steps
            continue
        readable.append(dataclasses.replace(c, controls=tuple(k for k in c.controls if k == "init")))
    out = evaluate(results, readable, alpha, whole=False)
    return out[out.primary].reset_index(drop=True)


def correct_across_grid(points: pd.DataFrame, claims=IN_GRID, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Rule 2 of the module docstring on per-point rows (``evaluate_point``'s, with any point
    columns): per claim, Holm over both one-sided p-values of its distinct tests across the grid,
    then ``decide``. Adds ``grid_p_adj``, ``grid_p_opposite_adj``, ``grid_m``, ``grid_verdict``
    and ``grid_message``; keeps the per-point columns as they are."""
    decided = decide_families(points.assign(family="grid/" + points.claim, condition_met=True), claims, alpha)
    new = ["p_adj", "M", "verdict", "message"]
    return points.join(decided[new].rename(columns={c: f"grid_{c}" for c in new}))


#: the per-point table's columns, in order (``table``)
POINT_COLUMNS = ["config", *AXES, "step", "steps", "n_seeds"]


def table(
    frames: dict[str, pd.DataFrame], configs: dict[str, ExperimentConfig], claims=IN_GRID, alpha: float = stats.ALPHA
) -> pd.DataFrame:
    """The tidy per-point verdict table: one row per (grid point, claim) where the claim can be
    read, with the point's axes (``POINT_COLUMNS``), the claim's primary test (``effect`` its
    statistic's median with the exact CI), the per-point verdict under the main run's rule
    (``verdict``, family size ``M``, ``raw_verdict`` before the control), its init control
    (``control_init``) and the verdict corrected across the grid (``grid_verdict``, ``grid_M``)."""
    parts = []
    for name, cfg in configs.items():
        for step in cfg.checkpoints():
            rows = evaluate_point(frames[name], step, claims, alpha)
            point = dict(
                config=name, **{k: getattr(cfg, k) for k in AXES}, step=step, steps=cfg.steps, n_seeds=len(cfg.seeds)
            )
            parts.append(rows.assign(**point))
    out = pd.concat(parts, ignore_index=True)
    out = correct_across_grid(out, claims, alpha)
    return out[POINT_COLUMNS + [c for c in out.columns if c not in POINT_COLUMNS]]


#: the calls of rule 3, each with the verdicts that make it (grid-corrected and per point alike)
CALLS = {"holds": (stats.Verdict.REPLICATED.value,), "fails": FAILS, "negligible": (stats.Verdict.NEGLIGIBLE.value,)}
OUTCOMES = (*CALLS, "by construction", "undecided")


def outcome(grid_verdict: str, verdict: str, control: str | None = None) -> str:
    """What rule 3 makes of a point: "holds", "fails" or "negligible" where the grid-corrected
    and the per-point verdict (before its control) agree on it, "by construction" where the
    point's init ``control`` reaches that call too, else "undecided"."""
    call = next((call for call, kinds in CALLS.items() if grid_verdict in kinds and verdict in kinds), "undecided")
    return "by construction" if call != "undecided" and control == verdict else call


def where(tab: pd.DataFrame) -> dict[str, dict[str, list[tuple[str, int]]]]:
    """Per claim, the points (config name, step) of each outcome of rule 3 (``outcome``: holds,
    fails, negligible, undecided); points where the claim cannot be read are not listed."""
    out = {}
    for claim, g in tab.groupby("claim", sort=False):
        w = {call: [] for call in OUTCOMES}
        for c, s, gv, v, ctrl in zip(g.config, g.step, g.grid_verdict, g.raw_verdict, g.control_init):
            w[outcome(gv, v, ctrl)].append((c, s))
        out[claim] = w
    return out


def across_maps_error(tab: pd.DataFrame, alpha: float = stats.ALPHA) -> float:
    """Rule 4: an upper bound, under the global null, of the chance of any false call on any
    claim's map: the sum over maps of their hypotheses' exact size at Holm's first step
    (a sign test of n seeds reaches alpha / M with probability P(Bin(n, 1/2) >= k*))."""
    total = 0.0
    for _, g in tab.groupby("claim"):
        M, n = int(g.grid_M.iloc[0]), int(g.n.min())
        if M == 0:  # nothing on this map could be tested
            continue
        k = next((k for k in range(n + 1) if scipy.stats.binom.sf(k - 1, n, 0.5) <= alpha / M), None)
        total += 0.0 if k is None else M * float(scipy.stats.binom.sf(k - 1, n, 0.5))
    return min(1.0, total)


# --------------------------------------------------------------------------- G6: routing sparsity
def _sparsity_observe(stat):
    def observe(R: Results, r: dict) -> Observation:
        dense_k, sparse_k = (Results({"main": R.frames[name]}) for name in ("main", "sparse"))
        return pair(stat(sparse_k), stat(dense_k), "k=1", "k=2")

    return observe


SPARSITY = (
    Claim(
        "G6a",
        "Sparser routing, sharper functional separation",
        "routing sparsity appears to be a key factor shaping this geometry",
        geometric_asymmetry.SOURCE,
        "G4-mlp's statistic (soft - Top-k mean |cos|) at k = 1 minus at k = 2 (E = 8, final step)",
        "direction",
        "direction: > 0",
        {},
        "the grid's sparsest and the paper's Top-k at E = 8",
        _sparsity_observe(lambda R: dual.lower_topk_alignment(R, {"step": R.final_step()}).x),
        paper="grid-sparsity",
        steps=False,
        controls=(),
        smallest_effect=dual.COSINE_SESOI,
        smallest_effect_source=dual.COSINE_RULE,
    ),
    Claim(
        "G6b",
        "Sparser routing, larger subspace divergence",
        "routing sparsity appears to be a key factor shaping this geometry",
        geometric_asymmetry.SOURCE,
        "G5-mlp's statistic (log Top-k / soft mean geodesic distance) at k = 1 minus at k = 2 (E = 8, final step)",
        "direction",
        "direction: > 0",
        {},
        "the grid's sparsest and the paper's Top-k at E = 8",
        _sparsity_observe(
            lambda R: (
                geometric_asymmetry._larger_divergence(
                    R, {"pca_site": "input", "subspace": "r10", "step": R.final_step()}
                ).x
            )
        ),
        paper="grid-sparsity",
        steps=False,
        controls=(),
        smallest_effect=geometric_asymmetry.LOG_RATIO_SESOI,
        smallest_effect_source=geometric_asymmetry.RATIO_RULE,
    ),
)


def sparsity_table(frames: dict[str, pd.DataFrame], configs: dict, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """G6 on a grid that has the centre (k = 2) and ``k=1`` at E = 8: empty otherwise."""
    if "k=1" not in configs or "centre" not in configs:
        return pd.DataFrame()
    results = Results({"main": frames["centre"], "sparse": frames["k=1"]})
    return evaluate(results, list(SPARSITY), alpha, controls=False, whole=False)


@dataclass
class SensitivityResult:
    """What ``run`` returns: the grid, its per-point ``table``, G6's ``sparsity`` rows, the sweep
    behind it and the seconds the whole run took."""

    grid: Grid
    table: pd.DataFrame
    sparsity: pd.DataFrame
    sweep: sweeps.SweepResult
    seconds: float


def run(
    g: Grid, *, executor=executors.DEFAULT_EXECUTOR, cache: bool = True, progress: bool | None = None, claims=IN_GRID
) -> SensitivityResult:
    """Train (or read from the cache) every config of grid ``g`` through ``moegeo.sweeps`` on
    ``executor`` (one task per config, all its seeds: exactly ``run(cfg)``, so the verdicts do not
    depend on the executor), then evaluate every point (``table``)."""
    t0 = time.perf_counter()
    res = sweeps.sweep(g.configs, executor=executor, cache=cache, progress=progress)
    tab = table(res.frames, g.configs, claims)
    return SensitivityResult(g, tab, sparsity_table(res.frames, g.configs), res, time.perf_counter() - t0)
