"""The later version's 3-layer Transformer language model: its own claims (C12, C13) and the MLP
setting's claims re-tested on language (the generalisation tests)."""

from __future__ import annotations

import dataclasses

from ..engine import Claim, grid
from .rules import (
    COSINE_RULE,
    COSINE_SESOI,
    DENSE,
    JACOBIAN_SPECTRA,
    LOG_RATIO_SESOI,
    MOE,
    PAPER_RATIO,
    RATIO_RULE,
    _spectrum_pair,
    because,
    lower_topk_alignment,
)

LAYERS = ("pooled", 0, 1, 2)
#: the LM's MoE arm read as trained with a balancing router instead (the routers paper's
#: aux-loss Top-k arm, on the same seeds): the LM's own Top-k arm leaves many experts dead
ROUTER_READING = ("learned", "aux_loss")
LATER = "later version, abstract"
ON_LANGUAGE = "the paper claims this for the MLP setting; here tested on language (a generalisation test)"
POOLED = (
    "layer=pooled: the abstract states it of the model, not of one layer (every expert of every FFN layer "
    "pooled as one population; each layer alone is a sensitivity reading)"
)
BALANCED = (
    "router=learned: the paper's router; router=aux_loss, the same Top-k arm trained with a load-balancing "
    "loss (fewer dead experts), is a sensitivity reading"
)

LM_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "C12",
        "Curvature reduction on natural language",
        "Experiments on a 3-layer transformer with WikiText confirm curvature reduction on natural language",
        LATER,
        "log(dense sigma_1 / MoE expert-mean sigma_1), every expert of every layer pooled",
        "direction",
        "direction: > 0; 'curvature reduction' read as the abstract's own 'reduces local sensitivity: expert-local "
        "Jacobians show smaller leading singular values' (C1), a named reading",
        grid(layer=LAYERS, jacobian=JACOBIAN_SPECTRA, dense=DENSE, moe=MOE, router=ROUTER_READING),
        POOLED + "; " + because("jacobian=mean+pointwise", "dense=expert", "moe=topk", "step=final") + "; " + BALANCED,
        _spectrum_pair("sigma1", "logratio", False),
        frame="lm",
        smallest_effect=LOG_RATIO_SESOI,
        smallest_effect_source=RATIO_RULE,
        paper_effect=PAPER_RATIO,
        paper_effect_source='C1\'s §3.1 "approximately 1.5-1.7x lower": log 1.5',
        power_reference="dense",
        measures="the language model's Jacobian spectra",
    ),
    Claim(
        "C13",
        "Lower cross-expert alignment for Top-k on natural language",
        "show lower cross-expert alignment for Top-k routing",
        LATER,
        "soft mean |cos| - Top-k mean |cos| of the experts' mean Jacobians (pairs within a layer, every layer's "
        "pairs pooled)",
        "direction",
        "direction: > 0; 'lower' read as lower than fully-soft routing, the paper's other routing regime (a named "
        "reading)",
        grid(layer=LAYERS, router=ROUTER_READING),
        POOLED + "; " + because("step=final") + "; " + BALANCED,
        lower_topk_alignment,
        frame="lm",
        smallest_effect=COSINE_SESOI,
        smallest_effect_source=COSINE_RULE,
        measures="the language model's cross-expert cosines",
    ),
)

#: the MLP-setting claims re-tested on language: every claim read at the final probes of the
#: main arms (C1 is C12 itself). The trajectory claims (C8*) need windows from step 250 to 500
#: or more, longer than the LM run; the §4 claims need their own arms.
GENERALISED = (
    "C1s",
    "C2",
    "C3a",
    "C3b",
    "C3c",
    "C4",
    "C4n",
    "C5",
    "C5b",
    "C5c",
    "C6",
    "C6b",
    "C7a",
    "C7b",
    "C7c",
    "C7d",
)


def on_language(c: Claim) -> Claim:
    """Claim ``c`` of the MLP setting as a generalisation test on the language model: the same
    statistic, rule and readings, with the layer as an extra axis (primary: pooled). On language
    the FFN input is not isotropic, so the MLP setting's non-diagnostic notes do not carry over."""
    return dataclasses.replace(
        c,
        id=f"{c.id}-lm",
        frame="lm",
        generalises=c.id,
        axes={"layer": list(LAYERS), **c.axes},
        primary_because=f"{POOLED}; {c.primary_because}",
        diagnostic=True,
        note=ON_LANGUAGE,
    )
