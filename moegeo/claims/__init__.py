"""Papers' claims as seed-swept statistical assertions over the tidy results frames: the engine
(``engine``; the frames it reads, ``results``; a decision in words, ``describe``), one module
per paper (``dual_jacobian_pca``, ``routers_geometry``, ``geometric_asymmetry``) and the
sensitivity grid (``sensitivity``). Adding a paper is adding a
module that declares its claims and ``register``s them."""

from .describe import part_summary
from .engine import (
    REGISTRY,
    Claim,
    claim_power,
    decide_families,
    evaluate,
    family,
    grid,
    register,
    tested,
    tipping_shift,
)
from .results import CONTROLS, Observation, Results, pair, single

__all__ = [
    "CONTROLS",
    "PAPERS",
    "REGISTRY",
    "all_claims",
    "Claim",
    "Observation",
    "Results",
    "claim_power",
    "decide_families",
    "evaluate",
    "family",
    "grid",
    "pair",
    "part_summary",
    "register",
    "single",
    "tested",
    "tipping_shift",
]

from . import dual_jacobian_pca, geometric_asymmetry, routers_geometry  # noqa: E402

#: the papers' claims modules, in the order of the report
PAPERS = (dual_jacobian_pca, routers_geometry, geometric_asymmetry)


def all_claims() -> tuple:
    """Every claim of every paper (the default run's; the pretrained-checkpoint claims are apart)."""
    return tuple(c for m in PAPERS for c in m.CLAIMS)
