"""The claims of "Routers Learn the Geometry of Their Experts: Geometric Coupling in Sparse
Mixture-of-Experts" (Ahrac, Hochwald, Geva; arXiv 2605.12476; "the routers paper"), tested on
moegeo's language model (``moegeo.config.LMConfig``) with four routers (``moegeo.config.Router``).

Only the abstract and a summary of the paper are available (``../shared/papers/routers_geometry.txt``),
so every metric is a *named reading* declared here and in ``moegeo.probes``, not the paper's own
definition:

* router scores vs activations: Spearman's rho, over the tokens routed to expert e, between e's
  router score and ||GELU(W1_e x + b1_e)|| (``probes.score_activation_correlation``);
* router-direction similarity: mean |cos| between distinct router vectors (the centroids of the
  K-Means router; ``probes.router_similarity``);
* load imbalance: the population standard deviation over experts of the fraction of token slots
  each receives (``probes.load_imbalance``);
* router-expert direction coupling: mean |cos(r_e, v_1(W1_e))| with the expert's own top right
  singular vector minus the mean over mismatched experts (``probes.router_expert_cosines``).

Primary readings: every FFN layer pooled (the paper speaks of the model), the final step; the
learned router ``topk`` is the "no balancing" reference ("than without it"). Smallest meaningful
effects and tolerances follow the rule of ``dual_jacobian_pca``: half a unit of the paper's
reporting precision (Std to three decimals: 0.0005; "2.2%": 0.0005; "three times": 0.5); where
the paper gives no number, a declared convention (rho: Cohen's small correlation 0.1; cosines:
half a unit of two decimals, 0.005; ratios: log 1.05). All are declared before the first run.
"""

from __future__ import annotations

import math

import pandas as pd

from .engine import Claim, grid, register
from .results import Observation, Results, pair, single

REVIEW = "2026-12-01, independent statistical review"
#: why a claim on the routers' own weights has no routing control
ROUTER_WEIGHTS = (
    "the routing controls do not apply: they change which tokens an expert sees, not the router "
    "weights or the load this statistic reads"
)

PAPER = "routers_geometry"
TITLE = "Routers Learn the Geometry of Their Experts (Ahrac, Hochwald, Geva; arXiv 2605.12476)"
SHORT = "the routers paper"
INTRO = (
    "moegeo's language model with four Top-2 routers: learned (the LM's topk arm), aux_loss (the Switch "
    "Transformer loss), loss_free (DeepSeek-V3 selection biases) and kmeans (parameter-free online K-Means). Only "
    "the abstract and a summary exist here: every metric is a named reading declared by moegeo, not the paper's."
)
#: seeds of the balancing routers' run, as many as the language model's (power >= 0.8 at the
#: paper's effects: REPORT's power table). The learned router is the language model's ``topk``
#: arm on the same seeds.
ROUTER_SEEDS = 24
LAYERS = ("pooled", 0, 1, 2)
ARMS = {"learned": "topk", "aux_loss": "topk_aux", "loss_free": "topk_loss_free", "kmeans": "kmeans"}
#: prefixes of this paper\'s figures in REPORT.md
FIGURES = ("routers_",)
SOURCE = "abstract"
RHO_SESOI, COS_SESOI, STD_SESOI, PPL_SESOI = 0.1, 0.005, 0.0005, 0.0005
LOG_RATIO_SESOI = math.log(1.05)
POOLED = "layer=pooled: the abstract speaks of the model, not of a layer (each layer alone is a sensitivity reading)"


def frame_of(router: str) -> str:
    """The learned router trains in the language model's run, the balancing routers in their own."""
    return "lm" if router == "learned" else "routers"


def per_seed(R: Results, router: str, metric: str, r: dict, reading: str = "") -> pd.Series:
    """A router's metric per seed at the final step, pooled over layers or at one layer."""
    v = R.view(frame_of(router), r.get("layer", "pooled"))
    return v.per_seed(ARMS[router], metric, reading)


def _rho(R: Results, r: dict) -> Observation:
    return single(per_seed(R, r["router"], "score_activation_rho", r), f"{r['router']} mean rho")


def _similarity(how: str):
    def observe(R: Results, r: dict) -> Observation:
        aux, ref = per_seed(R, "aux_loss", "router_similarity", r), per_seed(R, r["versus"], "router_similarity", r)
        return pair(aux, ref, "aux_loss mean |cos|", f"{r['versus']} mean |cos|", how)

    return observe


def _lower_imbalance(low: str):
    def observe(R: Results, r: dict) -> Observation:
        hi, lo = per_seed(R, r["versus"], "load_imbalance", r), per_seed(R, low, "load_imbalance", r)
        return pair(hi, lo, f"{r['versus']} load std", f"{low} load std")

    return observe


def _perplexity_increase(R: Results, r: dict) -> Observation:
    ppl = {k: R.frames[frame_of(k)] for k in ("kmeans", r["versus"])}
    s = {
        k: df[(df.arm == ARMS[k]) & (df.metric == "perplexity") & (df.step == df.steps)].groupby("seed").value.mean()
        for k, df in ppl.items()
    }
    o = pair(s["kmeans"], s[r["versus"]], "kmeans perplexity", f"{r['versus']} perplexity", "ratio")
    return Observation(o.x - 1, o.arms)


def coupling_gap(R: Results, router: str, r: dict) -> pd.Series:
    """Per seed: mean |cos(r_e, v_1(W1_e))| minus the mean over mismatched pairs."""
    return per_seed(R, router, "router_expert_cos", r, "pair=matched") - per_seed(
        R, router, "router_expert_cos", r, "pair=mismatched"
    )


def _strongest_coupling(R: Results, r: dict) -> Observation:
    if r["measure"] == "cos":
        ours, theirs = (per_seed(R, k, "router_expert_cos", r, "pair=matched") for k in ("kmeans", r["versus"]))
        return pair(ours, theirs, "kmeans router-expert |cos|", f"{r['versus']} router-expert |cos|")
    return pair(
        coupling_gap(R, "kmeans", r),
        coupling_gap(R, r["versus"], r),
        "kmeans coupling gap",
        f"{r['versus']} coupling gap",
    )


def _broken_coupling(R: Results, r: dict) -> Observation:
    return pair(
        coupling_gap(R, r["versus"], r),
        coupling_gap(R, "aux_loss", r),
        f"{r['versus']} coupling gap",
        "aux_loss coupling gap",
    )


def _shared_history(R: Results, r: dict) -> Observation:
    """Per seed: mean |cos| of each router's update since initialisation with its own expert's
    input-weight update direction, minus with the other experts'."""
    m, o = (per_seed(R, r["router"], "router_update_cos", r, f"pair={k}") for k in ("matched", "mismatched"))
    return pair(m, o, f"{r['router']} matched update |cos|", "mismatched")


OTHERS = (("learned", "aux_loss", "loss_free"), "learned", "aux_loss", "loss_free")

CLAIMS: tuple[Claim, ...] = register(
    (
        Claim(
            "R1",
            "Router scores predict expert activations",
            "higher router scores predict stronger expert neuron activations, showing that routing decisions are mirrored "
            "inside the selected expert",
            SOURCE,
            "mean over experts of Spearman's rho between an expert's router score and its hidden-activation norm over "
            "the tokens routed to it",
            "direction",
            "direction: rho > 0",
            grid(layer=LAYERS, router=("learned", "aux_loss", "loss_free", "kmeans")),
            POOLED + "; router=learned: the plain router of the paper's derivation",
            _rho,
            paper=PAPER,
            steps=False,
            smallest_effect=RHO_SESOI,
            smallest_effect_source="Cohen's small correlation, 0.1 (the paper gives no number)",
            controls=("init", "permuted"),
            control_note="router_init does not apply: the scores are the trained router's",
            measures="router scores against expert activations",
        ),
        Claim(
            "R2",
            "The auxiliary loss makes router directions more similar",
            "such losses break this structure by spreading input-directed gradients across router weights, making "
            "distinct router directions nearly three times more similar to each other",
            SOURCE,
            "log(aux-loss router similarity / reference router similarity)",
            "direction",
            "direction: > 0",
            grid(layer=LAYERS, versus=("learned", "loss_free")),
            POOLED + '; versus=learned: "than without it", the router without any balancing',
            _similarity("logratio"),
            paper=PAPER,
            steps=False,
            smallest_effect=LOG_RATIO_SESOI,
            smallest_effect_source="half a unit of one-decimal ratios, log 1.05 (the rule of dual_jacobian_pca)",
            paper_effect=math.log(3),
            paper_effect_source='"nearly three times": log 3',
            power_reference="learned mean |cos|",
            controls=("init",),
            control_note=ROUTER_WEIGHTS,
            measures="router-direction similarity",
        ),
        Claim(
            "R2m",
            "... nearly three times more similar",
            "making distinct router directions nearly three times more similar",
            SOURCE,
            "aux-loss router similarity / reference router similarity",
            "magnitude",
            "the paper's 3, widened by 0.5 each side (half a unit of an integer)",
            grid(layer=LAYERS, versus=("learned", "loss_free")),
            POOLED + '; versus=learned: "than without it"',
            _similarity("ratio"),
            paper=PAPER,
            steps=False,
            interval=(3.0, 3.0),
            tolerance=0.5,
            scale="log",
            controls=("init",),
            control_note=ROUTER_WEIGHTS,
            measures="router-direction similarity",
        ),
        Claim(
            "R3",
            "K-Means has the lowest load imbalance",
            "Compared with auxiliary-loss and loss-free balancing, this router achieves the lowest load imbalance",
            SOURCE,
            "balancing router's load std - K-Means load std",
            "direction",
            "direction: > 0 against both (joint)",
            grid(layer=LAYERS, versus=(("aux_loss", "loss_free"), "aux_loss", "loss_free")),
            POOLED + "; versus=aux_loss+loss_free: the sentence compares with both",
            _lower_imbalance("kmeans"),
            paper=PAPER,
            steps=False,
            smallest_effect=STD_SESOI,
            smallest_effect_source="half a unit of the paper's three-decimal Std (0.008, 0.015, 0.018): 0.0005",
            paper_effect=0.007,
            paper_effect_source="Std 0.015 (aux-loss) - 0.008 (K-Means)",
            power_reference="aux_loss load std",
            controls=("init",),
            control_note=ROUTER_WEIGHTS,
            measures="load imbalance",
        ),
        Claim(
            "R3b",
            "The auxiliary loss balances better than loss-free",
            "Std=0.008 vs. 0.015 for auxiliary-loss and 0.018 for loss-free",
            "summary of results",
            "loss-free load std - aux-loss load std",
            "direction",
            "direction: > 0",
            grid(layer=LAYERS, versus=("loss_free",)),
            POOLED,
            _lower_imbalance("aux_loss"),
            paper=PAPER,
            steps=False,
            smallest_effect=STD_SESOI,
            smallest_effect_source="half a unit of the paper's three-decimal Std: 0.0005",
            paper_effect=0.003,
            paper_effect_source="Std 0.018 (loss-free) - 0.015 (aux-loss)",
            power_reference="loss_free load std",
            controls=("init",),
            control_note=ROUTER_WEIGHTS,
            measures="load imbalance",
        ),
        Claim(
            "R4",
            "K-Means costs a modest perplexity increase over loss-free",
            "with only a 2.2% perplexity increase over the loss-free router",
            "summary of results",
            "K-Means held-out perplexity / loss-free held-out perplexity - 1",
            "magnitude",
            "the paper's 0.022, widened by 0.0005 each side (half a unit of its one-decimal percent)",
            grid(versus=("loss_free",)),
            "the paper's comparison",
            _perplexity_increase,
            paper=PAPER,
            steps=False,
            interval=(0.022, 0.022),
            tolerance=PPL_SESOI,
            controls=("init",),
            control_note=ROUTER_WEIGHTS,
            threshold_declared=True,
            measures="perplexity",
            revisions=(
                f"{REVIEW}: a sign-test equivalence against 2.2% +- 0.05 percentage points (replicable with "
                "probability about 1e-25) replaced by consistency of the paper's value with our seeds",
            ),
        ),
        Claim(
            "R5",
            "K-Means shows the strongest router-expert coupling",
            "The centroid router shows natural coupling: its cosine similarity between router direction and expert "
            "activation direction is highest",
            "summary of results",
            "K-Means |cos(router direction, its expert's input direction)| - another router's (measure=cos; measure=gap: "
            "each minus the same with the other experts' input directions)",
            "direction",
            "direction: > 0 against every other router (joint)",
            grid(layer=LAYERS, versus=OTHERS, measure=("cos", "gap")),
            POOLED
            + "; versus=all three: 'highest'; measure=cos: the quoted statistic, its cosine itself (the gap is a "
            "stricter reading)",
            _strongest_coupling,
            paper=PAPER,
            steps=False,
            smallest_effect=COS_SESOI,
            smallest_effect_source="half a unit of a two-decimal cosine, 0.005 (the paper gives no number)",
            controls=("init",),
            control_note=ROUTER_WEIGHTS,
            measures="router-expert coupling",
            revisions=(
                f"{REVIEW}: primary statistic the coupling gap -> the matched cosine the quote names ('its cosine "
                "similarity ... is highest'); the gap kept as a stricter reading",
            ),
        ),
        Claim(
            "R6",
            "The auxiliary loss breaks the router-expert coupling",
            "we analyze the effects of auxiliary load balancing on the router-expert geometric coupling, showing that "
            "such losses break this structure",
            SOURCE,
            "a router's coupling gap (mean |cos| of its directions with their own experts' input directions minus with "
            "the other experts') minus the aux-loss router's",
            "direction",
            "direction: > 0",
            grid(layer=LAYERS, versus=("learned",)),
            POOLED + "; versus=learned: the router without balancing",
            _broken_coupling,
            paper=PAPER,
            steps=False,
            smallest_effect=COS_SESOI,
            smallest_effect_source="half a unit of a two-decimal cosine, 0.005 (the paper gives no number)",
            controls=("init",),
            control_note=ROUTER_WEIGHTS,
            measures="router-expert coupling",
            revisions=(f"{REVIEW}: added (listed as untested)",),
        ),
        Claim(
            "R7",
            "Matched router and expert directions accumulate the same token history",
            "Thus, matched router-expert directions accumulate the same routed token history",
            SOURCE,
            "mean |cos| of each router direction's change since initialisation with its own expert's input-weight change "
            "(top right singular vector of W1_e(T) - W1_e(0)) minus with the other experts'",
            "direction",
            "direction: > 0 (named reading: the accumulated updates of a matched pair share their direction)",
            grid(layer=LAYERS, router=("learned", "loss_free")),
            POOLED + "; router=learned: the derivation's plain router",
            _shared_history,
            paper=PAPER,
            steps=False,
            smallest_effect=COS_SESOI,
            smallest_effect_source="half a unit of a two-decimal cosine, 0.005 (the paper gives no number)",
            controls=(),
            control_note=(
                "no control applies: the statistic is what training accumulated since step 0, and "
                "its mismatched pairs are its own null"
            ),
            measures="router-expert coupling",
            revisions=(f"{REVIEW}: added (listed as untested)",),
        ),
    )
)

#: statements of the routers paper that no claim tests, with the reason
UNTESTED: tuple[tuple[str, str], ...] = (
    (
        "'the router weights for the selected expert and the expert weights processing it receive gradients along the "
        "same input direction'",
        "a derivation, not a measurement: tests/test_routers.py checks it as a property test "
        "(and its failure under the auxiliary loss); its consequence over training is R7",
    ),
    (
        "Std values 0.008 / 0.015 / 0.018 themselves",
        "absolute load std depends on E and the model; R3 and R3b test their order",
    ),
    ("'competitive with the auxiliary-loss router'", "no number to test against"),
    (
        "'a 1B SMoE trained from scratch (~50B tokens)'",
        "far beyond a 2-core CPU; every claim is tested on moegeo's 3-layer language model instead",
    ),
)
