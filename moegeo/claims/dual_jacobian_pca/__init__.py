"""The claims of the Dual Jacobian-PCA paper (Liu, 2025) in the controlled MLP-MoE setting and on
the later version's language model.

Every threshold, smallest meaningful effect and primary reading below is declared in code with
its source: the paper's words (quoted with section) or a stated rule checked against chance.
Where the paper gives no threshold the claim is ``threshold_declared`` and REPORT.md prints the
threshold's tipping point (the value at which the verdict would change).

Primary readings, each from the paper's own words; a joint reading (``a+b``) must hold under
each of its parts:

* ``jacobian=mean+pointwise`` for spectra: the paper defines them twice, §2.2 "we compute
  Jacobian spectra at multiple input points and aggregate them using routing weights" and B.4
  "We analyze: singular-value spectra of J̄_e".
* ``jacobian=pointwise+effective`` for the MoE trajectory: §3.1 "Both the effective MoE
  Jacobian and individual expert-local Jacobians"; ``jacobian=pointwise`` for the dense one:
  A.2 "σ1(J_e(x)), which is also called the Jacobian norm".
* ``norm=spectral``: §3.1, "Figure 1A shows the evolution of the Jacobian spectral norm".
* ``dense=expert``: B.1, "identical hidden dimension ... to the MoE experts".
* ``moe=topk`` for MoE-vs-dense claims: A.5/B.1 "Top-k uses k=2 unless otherwise specified";
  ``moe=topk+soft`` where the paper says so: §3.4 "low cross-expert Jacobian alignment persists
  across routing regimes" and §5 "Across routing regimes and random seeds, we observed ...".
* ``pca_site=input``: §2.2/A.4/B.5, "weighted PCA on the hidden states entering the MoE layer".
* ``step`` = the final step: Fig. 1B-D "at the final training step", "at the end of training".

Smallest meaningful effects follow one rule: half a unit of the paper's reporting precision.
Ratios are reported to one decimal ("1.5-1.7x"): log 1.05; fractions to whole percent ("90%"):
0.005; component counts are integers ("three", "twenty"): 0.5; cosines to three decimals
("0.015"): 0.0005.

The declarations live in the package's modules: ``rules`` (constants, smallest effects and the
per-seed statistics), ``final_geometry`` and ``training_and_failures`` (the MLP setting's
claims) and ``language`` (the language model's).
"""

from __future__ import annotations

from ..engine import Claim, register
from .final_geometry import PCA_CLAIMS, SPECTRA_CLAIMS
from .language import GENERALISED, LM_CLAIMS, on_language
from .rules import (
    CHANCE_QUANTILE,
    CONFIRMATORY_OFFSET,
    COSINE_RANGE,
    COSINE_RULE,
    COSINE_SESOI,
    EXPLORATORY,
    FAILURE_STEP,
    HOT_TEMPERATURE,
    LM_SEEDS,
    SEEDS,
    chance_fraction,
    chance_upper,
    cos_to_chance,
    lower_topk_alignment,
    main_config,
    mean_abs_cos,
    null_moments,
)
from .training_and_failures import FAILURE_CLAIMS, TRAJECTORY_CLAIMS

__all__ = [
    "CHANCE_QUANTILE",
    "CLAIMS",
    "CONFIRMATORY_OFFSET",
    "COSINE_RANGE",
    "COSINE_RULE",
    "COSINE_SESOI",
    "EXPLORATORY",
    "FAILURE_STEP",
    "HOT_TEMPERATURE",
    "LM_CLAIMS",
    "LM_SEEDS",
    "MLP_CLAIMS",
    "SEEDS",
    "UNTESTED",
    "chance_fraction",
    "chance_upper",
    "cos_to_chance",
    "lower_topk_alignment",
    "main_config",
    "mean_abs_cos",
    "null_moments",
]

PAPER = "dual_jacobian_pca"
TITLE = "Mixture-of-Experts as Soft Clustering: A Dual Jacobian-PCA Spectral Geometry Perspective (Liu, 2025)"
SHORT = "the Dual Jacobian-PCA paper"
INTRO = (
    "The controlled MLP-MoE of Appendix B (E = 8 GELU experts 64 -> 128 -> 64, a linear router, x ~ N(0, I), "
    "full-batch MSE, Adam 1e-3, 1000 steps) with dense, parameter-matched dense, Top-2 and fully-soft arms and the "
    "§4 failure-mode arms; and the later version's 3-layer Transformer on WikiText-2, whose every FFN is that layer "
    "(C12, C13 and the generalisation tests C*-lm)."
)
#: prefixes of this paper's figures in REPORT.md
FIGURES = ("fig", "lm_")

MLP_CLAIMS: tuple[Claim, ...] = SPECTRA_CLAIMS + PCA_CLAIMS + TRAJECTORY_CLAIMS + FAILURE_CLAIMS
_by_id = {c.id: c for c in MLP_CLAIMS}
CLAIMS: tuple[Claim, ...] = register(MLP_CLAIMS + LM_CLAIMS + tuple(on_language(_by_id[i]) for i in GENERALISED))

#: statements of the paper that no claim tests, with the reason
UNTESTED: tuple[tuple[str, str], ...] = (
    (
        "§3.1 'this difference is consistent with flatter expert-local sensitivity profiles and reduced anisotropy'",
        "an interpretation of C1-C3, not a separate measurement",
    ),
    (
        "§3.2 'No small set of principal components dominates the spectrum to the same extent as in the dense baseline'",
        "the same statement as C6 (first explained-variance ratio)",
    ),
    (
        "§3.2 'MoE routing redistributes representation variance across directions rather than collapsing representations'",
        "an interpretation of C5/C6",
    ),
    (
        "§3.3 'Under Top-k routing, the explained-variance spectrum decays steeply ... Under fully-soft routing, the decay "
        "is noticeably flatter'",
        "tested through C7a (cum-var@10) and C7b (k@0.9), the paper's own summaries of Fig. 3",
    ),
    (
        "§3.4/abstract 'MoEs implement a form of soft partitioning of function space'",
        "an interpretation, not measurable",
    ),
    (
        "§4 failure mode 3, 'Task-driven specialization overriding routing effects'",
        "needs experts trained for predefined tasks; the controlled setting has none",
    ),
    (
        "§4 'attention mechanisms ... layer normalization can alter Jacobian spectra'",
        "no attention-free Transformer arm is trained to isolate it; the LM-setting generalisation tests (C*-lm) show "
        "which MLP-setting signatures survive attention and LayerNorm",
    ),
    (
        "Later version: the trajectory of Fig. 1A on language",
        "the LM run (200 steps) is shorter than the windows C8a-C8d "
        "need; the LM Jacobian norms over training are shown as a figure, not tested",
    ),
    (
        "B.1 'PCA spectra are stable across seeds'",
        "a design statement about the configuration; the seed spread is shown in every figure",
    ),
)
