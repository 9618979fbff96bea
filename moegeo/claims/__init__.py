"""Papers' claims as seed-swept statistical assertions over the tidy results frames: the engine
(``engine``), one module per paper (``dual_jacobian_pca``, ``routers_geometry``,
``geometric_asymmetry``) and the sensitivity grid (``sensitivity``). Adding a paper is adding a
module that declares its claims and ``register``s them."""
from .engine import (REGISTRY, Claim, Observation, Results, decide_families, evaluate, family, grid,
                     paper_value_in_prediction_interval, pair, register, single, tested)

__all__ = ["REGISTRY", "Claim", "Observation", "Results", "decide_families", "evaluate", "family", "grid",
           "paper_value_in_prediction_interval", "pair", "register", "single", "tested"]
