"""The claims of "Geometric Asymmetry in MoE Specialization: Functional Decorrelation and
Representational Overlap" (arXiv 2605.16349; "the asymmetry paper"), tested on moegeo's two
trained settings.

Only the paper's abstract is available (``../shared/papers/geometric_asymmetry.txt``), so every
definition below is a **named reading declared by moegeo**, not the paper's:

* cross-expert Jacobian alignment: mean |cos| of vec(J̄_e) over a layer's expert pairs (the dual
  Jacobian-PCA paper's A.3 quantity, ``moegeo.probes.cosine_matrix``); "near-zero" is read as the
  dual paper's C4n: at most the chance level of two independent isotropic d x d matrices
  (``moegeo.probes.cosine_null``) plus two of its standard errors over the seed's pairs
  (``dual_jacobian_pca.chance_upper``), or of the same model at initialisation (``null=init``);
* an expert's subspace: the top 10 principal directions of its routing-weighted PCA
  (``subspace=r10``; the dual paper's own count of leading directions, cum-var@10) or its own
  k@0.9 directions (``subspace=k90``), at the layer input (``pca_site=input``: "routed
  representations", the hidden states routed to the expert) or at the expert output;
* "partially overlapping": the overlap index mean cos^2 theta over principal angles above its
  exact mean for independent uniformly random subspaces of the same dimensions
  (``moegeo.grassmann``); the geodesic distance below its Monte Carlo null mean is the other
  reading of the same sentence;
* "distinct": for most expert pairs the overlap index is below 1/2 (most of a subspace's energy
  lies outside the other);
* the asymmetry, "coexist rather than coincide": both at once in the same runs, functional
  alignment at chance (G1's statistic) and representational overlap above it (G2's), an
  intersection-union test of the two.

Controls: a randomly initialised model already shows alignment at chance and overlap above
the random-subspace level (every expert reads the same anisotropic hidden states), so every
claim is also tested on the model at initialisation, on the routing permuted across inputs (the
same-sample null: each expert's weights kept, its inputs drawn at random) and on the router at
initialisation; a claim that holds there too is BY CONSTRUCTION (``moegeo.claims.engine``). The
readings' history is in docs/decisions.md.

Setting: the paper's measurements are on Transformers (pretrained Mistral and Qwen; "controlled
routing experiments" of unstated architecture), so the primary setting is moegeo's language model
(every FFN layer pooled, Top-2 routing as in those models, the final step); the same claims on
the controlled MLP-MoE are generalisation tests in their own family. Claims on a user's pretrained
checkpoint (``pytest claims/ --hf-model DIR``) are not part of the default run: without a local
checkpoint they are reported as "not run", never as a verdict. Smallest meaningful effects follow
the rule of ``dual_jacobian_pca``: half a unit of the reporting precision (ratios: log 1.05;
fractions: 0.005). All are declared before the first run of these claims.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from .dual_jacobian_pca import (
    COSINE_RULE,
    COSINE_SESOI,
    chance_upper,
    cos_to_chance,
    lower_topk_alignment,
    mean_abs_cos,
    null_moments,
)
from .engine import Claim, grid, register
from .results import ROUTED, Observation, Results, pair, single

PAPER = "geometric_asymmetry"
TITLE = "Geometric Asymmetry in MoE Specialization (arXiv 2605.16349)"
SHORT = "the asymmetry paper"
INTRO = (
    "Jacobian-PCA-Grassmann geometry on moegeo's language model (every FFN layer pooled, Top-2, the final "
    "step) and, as generalisation tests, on the controlled MLP-MoE. Only the abstract exists here: every "
    "definition is a named reading declared by moegeo, not the paper's."
)
#: prefixes of this paper\'s figures in REPORT.md
FIGURES = ("asymmetry_",)
SOURCE = "abstract"
LAYERS = ("pooled", 0, 1, 2)
MOE = ("topk", "soft")
SITES = ("input", "output")
SUBSPACES = ("r10", "k90")
#: "distinct": a pair's overlap index below 1/2, for most pairs
DISTINCT_OVERLAP = 0.5
MOST = 0.5
LOG_RATIO_SESOI, FRACTION_SESOI = math.log(1.05), 0.005
RATIO_RULE = "half a unit of one-decimal ratios, log 1.05 (the rule of dual_jacobian_pca)"
FRACTION_RULE = "half a unit of whole percents, 0.005 (the rule of dual_jacobian_pca)"
WHY = {
    "layer": "layer=pooled: the abstract speaks of MoE layers in general (every FFN layer's pairs pooled; each layer "
    "alone is a sensitivity reading)",
    "moe": "moe=topk: the pretrained models the abstract measures (Mistral/Mixtral, Qwen MoE) route Top-k",
    "site": 'pca_site=input: "routed representations", the hidden states routed to each expert',
    "subspace": "subspace=r10: the top 10 principal directions, the dual paper's own count of leading directions "
    "(cum-var@10)",
}


def because(*keys: str) -> str:
    return "; ".join(WHY[k] for k in keys)


def _rd(r: dict) -> str:
    return f"pca_site={r['pca_site']};subspace={r['subspace']}"


def mean_over_pairs(R: Results, arm: str, metric: str, reading: str, r: dict) -> pd.Series:
    """Per seed: the mean of a pairwise metric over every expert pair (of every pooled layer)."""
    c = R.pairs(arm, metric, reading, r.get("step"))
    return c.value.groupby(c.seed).mean()


def alignment(R: Results, arm: str, r: dict) -> pd.Series:
    """Per seed: mean |cos| of the experts' mean Jacobians over expert pairs."""
    return mean_abs_cos(R, arm, r.get("step"))


def alignment_chance(R: Results) -> float:
    """E|cos| of vec of two independent isotropic d x d matrices (d the model width)."""
    return null_moments(int(R.frames["main"].d_model.iloc[0]))[0]


def overlap_excess(R: Results, arm: str, r: dict) -> pd.Series:
    """Per seed: log(observed / chance) of the representational overlap: the overlap index
    (``measure=overlap``) or the null's geodesic distance over the observed one
    (``measure=geodesic``, closer than chance is more overlap)."""
    if r.get("measure", "overlap") == "overlap":
        obs, null = (mean_over_pairs(R, arm, m, _rd(r), r) for m in ("overlap", "overlap_null"))
    else:
        null, obs = (mean_over_pairs(R, arm, m, _rd(r), r) for m in ("geodesic", "geodesic_null"))
    return np.log(obs / null)


# --------------------------------------------------------------------------- observations
def _near_zero(R: Results, r: dict) -> Observation:
    return cos_to_chance(R, r)


def _above_chance(R: Results, r: dict) -> Observation:
    x = overlap_excess(R, r["moe"], r)
    return single(x, f"{r['moe']} log({r['measure']} relative to random subspaces)")


def _distinct(R: Results, r: dict) -> Observation:
    c = R.pairs(r["moe"], "overlap", _rd(r), r.get("step"))
    frac = (c.value < DISTINCT_OVERLAP).groupby(c.seed).mean()
    return Observation(frac - MOST, {f"{r['moe']} fraction of pairs with overlap index < 1/2": frac})


def _coexist(R: Results, r: dict) -> Observation:
    """G3's two parts: functional alignment at chance (G1) and overlap above chance (G2)."""
    if r["part"] == "functional":
        return cos_to_chance(R, r | {"null": "random"})
    return _above_chance(R, r | {"measure": "overlap"})


def _larger_divergence(R: Results, r: dict) -> Observation:
    t, s = (mean_over_pairs(R, arm, "geodesic", _rd(r), r) for arm in ("topk", "soft"))
    return pair(t, s, "topk mean geodesic distance", "soft mean geodesic distance", "logratio")


COMMON = dict(paper=PAPER, frame="lm")
LM_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "G1",
        "Functional decorrelation: cross-expert Jacobian alignment at the level of chance",
        "experts exhibit strong functional decorrelation (consistently low, near-zero cross-expert Jacobian alignment)",
        SOURCE,
        "upper bound of chance minus (mean |cos| over expert pairs / its expectation under the null)",
        "direction",
        "direction: > 0; 'near-zero' read as the dual paper's C4n: within the null's one-sided "
        "95% range of the chance level (moegeo.claims.dual_jacobian_pca.chance_upper)",
        grid(layer=LAYERS, moe=MOE, null=("random", "init")),
        because("layer", "moe") + "; null=random: 'near-zero' is a level, the chance level of unrelated matrices",
        _near_zero,
        threshold_declared=True,
        threshold_value=chance_upper(64, 28),
        threshold_sign=-1,
        measures="cross-expert Jacobian alignment",
        **COMMON,
    ),
    Claim(
        "G2",
        "Representational overlap: expert subspaces overlap more than random subspaces",
        "their routed representations occupy distinct but partially overlapping subspaces",
        SOURCE,
        "log(mean overlap index over expert pairs / its exact mean for random subspaces of the same dimensions)",
        "direction",
        "direction: > 0 ('partially overlapping' read as above the random-subspace level: the Grassmann "
        "distance below the random-subspace null)",
        grid(layer=LAYERS, moe=MOE, pca_site=SITES, subspace=SUBSPACES, measure=("overlap", "geodesic")),
        because("layer", "moe", "site", "subspace") + "; measure=overlap: its chance level is exact",
        _above_chance,
        smallest_effect=LOG_RATIO_SESOI,
        smallest_effect_source=RATIO_RULE,
        controls=ROUTED,
        control_note="",
        measures="expert subspaces",
        **COMMON,
    ),
    Claim(
        "G2d",
        "... distinct subspaces",
        "their routed representations occupy distinct but partially overlapping subspaces",
        SOURCE,
        "fraction of expert pairs whose overlap index is below 1/2, minus 1/2",
        "direction",
        "direction: > 0 ('distinct' read as: for most pairs, most of one subspace's energy lies outside the other)",
        grid(layer=LAYERS, moe=MOE, pca_site=SITES, subspace=SUBSPACES),
        because("layer", "moe", "site", "subspace"),
        _distinct,
        smallest_effect=FRACTION_SESOI,
        smallest_effect_source=FRACTION_RULE,
        threshold_declared=True,
        threshold_value=MOST,
        controls=ROUTED,
        control_note="",
        measures="expert subspaces",
        **COMMON,
    ),
    Claim(
        "G3",
        "The asymmetry: functional alignment at chance while representations overlap beyond it",
        "functional decorrelation and representation overlap coexist rather than coincide in MoE specialization",
        SOURCE,
        "G1's statistic (part=functional) and G2's (part=representational), in the same runs",
        "direction",
        "direction: > 0 for both parts at once (intersection-union; each part's smallest effect is in G1/G2)",
        grid(part=[("functional", "representational")], layer=LAYERS, moe=MOE, pca_site=SITES, subspace=SUBSPACES),
        "part=functional+representational: 'coexist' is both at once; " + because("layer", "moe", "site", "subspace"),
        _coexist,
        controls=ROUTED,
        control_note="",
        measures="both: alignment and subspaces",
        **COMMON,
    ),
    Claim(
        "G4",
        "Top-k gives sharper functional separation than soft routing",
        "top-k routing induces sharper functional separation and larger subspace divergence, whereas fully soft "
        "routing yields more entangled expert structure",
        SOURCE,
        "soft mean |cos| - Top-k mean |cos| of the experts' mean Jacobians",
        "direction",
        "direction: > 0",
        grid(layer=LAYERS),
        because("layer"),
        lower_topk_alignment,
        smallest_effect=COSINE_SESOI,
        smallest_effect_source=COSINE_RULE,
        note="the same statistic and data as the dual paper's C13: not independent evidence",
        measures="cross-expert Jacobian alignment",
        **COMMON,
    ),
    Claim(
        "G5",
        "Top-k gives larger subspace divergence than soft routing",
        "top-k routing induces sharper functional separation and larger subspace divergence",
        SOURCE,
        "log(Top-k mean geodesic distance / soft mean geodesic distance) between expert subspaces",
        "direction",
        "direction: > 0",
        grid(layer=LAYERS, pca_site=SITES, subspace=SUBSPACES),
        because("layer", "site", "subspace"),
        _larger_divergence,
        smallest_effect=LOG_RATIO_SESOI,
        smallest_effect_source=RATIO_RULE,
        controls=ROUTED,
        control_note="",
        measures="expert subspaces",
        **COMMON,
    ),
)

ON_MLP = "the paper measures Transformers; here re-tested on the controlled MLP-MoE (a generalisation test)"


def on_mlp(c: Claim) -> Claim:
    """Claim ``c`` on the controlled MLP-MoE: the same statistic and rule, its single layer read
    at every checkpoint (the final one primary), in the paper's generalisation family."""
    axes = {k: v for k, v in c.axes.items() if k != "layer"}
    why = "; ".join(p for p in c.primary_because.split("; ") if not p.startswith("layer="))
    return dataclasses.replace(
        c,
        id=f"{c.id}-mlp",
        frame="main",
        generalises=c.id,
        axes=axes,
        primary_because=why + "; step=final",
        note=ON_MLP,
    )


CLAIMS: tuple[Claim, ...] = register(LM_CLAIMS + tuple(on_mlp(c) for c in LM_CLAIMS))

#: what a pretrained checkpoint would add (``--hf-model``); not part of the default verdict
PRETRAINED = (
    "G1, G2, G2d and G3 on a pretrained MoE Transformer (the abstract: 'Across pretrained MoE Transformers "
    "(Mistral, Qwen)')"
)

#: statements of the abstract that no claim tests, with the reason
UNTESTED: tuple[tuple[str, str], ...] = (
    (
        "'routing sparsity appears to be a key factor shaping this geometry'",
        "an interpretation of G4/G5 (two routing regimes, not a sweep of sparsity)",
    ),
    (
        "'MoE layers may be viewed as implementing locally decorrelated operators over overlapping submanifolds'",
        "an interpretation, not a measurement",
    ),
    (
        "'Across pretrained MoE Transformers (Mistral, Qwen)'",
        "needs a local checkpoint (pytest claims/ --hf-model DIR); nothing is downloaded at run time",
    ),
)

# --------------------------------------------------------------------------- a user's pretrained checkpoint
#: the pretrained-model claims are their own "paper" (own registry entry and Holm family): they
#: run only with ``pytest claims/ --hf-model DIR`` and never change the default run's families
PRETRAINED_PAPER = f"{PAPER}-pretrained"
PRETRAINED_IDS = ("G1", "G2", "G2d", "G3")
LAYERS_AS_UNITS = (
    "unit of analysis: the MoE layer (one checkpoint has no seeds; the abstract's 'consistently' read as "
    "across layers), each layer's statistic over its expert pairs. Layers of one model share its data, "
    "training and initialisation and are not independent replications: a verdict here is consistency "
    "across the layers of this one checkpoint, not evidence about MoE training in general"
)


def layers_as_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """A pretrained model's probe frame (``moegeo.hf.probe_model``) in the shape the claims read:
    each MoE layer becomes one unit (``seed``), its routing ``topk``; shared experts dropped
    (they are not routed experts); ``d_model`` the width of the layer input."""
    df = df[(df.expert != -2) & (df.layer >= 0)]
    if df.empty:
        raise ValueError("the probe frame has no routed-expert rows of any MoE layer")
    d = int(df[(df.metric == "explained_variance") & (df.reading == "pca_site=input")]["index"].max())
    return df.assign(seed=df.layer, layer=0, arm="topk", steps=int(df.step.max()), d_model=d)


def on_pretrained(c: Claim) -> Claim:
    """Claim ``c`` on a pretrained checkpoint, layers as units, Top-k as routed."""
    axes = {
        k: (["topk"] if k == "moe" else ["random"] if k == "null" else v) for k, v in c.axes.items() if k != "layer"
    }
    why = "; ".join(p for p in c.primary_because.split("; ") if not p.startswith(("layer=", "moe=")))
    return dataclasses.replace(
        c,
        id=f"{c.id}-hf",
        paper=PRETRAINED_PAPER,
        frame="hf",
        axes=axes,
        steps=False,
        primary_because=f"{LAYERS_AS_UNITS}; {why}",
        note="on the checkpoint given by --hf-model",
        controls=(),
        control_note="the checkpoint's own controls come from `moegeo claims --baseline`",
    )


PRETRAINED_CLAIMS: tuple[Claim, ...] = register(tuple(on_pretrained(c) for c in LM_CLAIMS if c.id in PRETRAINED_IDS))
