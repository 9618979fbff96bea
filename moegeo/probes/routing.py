"""Routing-weighted quantities: the effective sample count N_e, routing-weighted means over
points (§2.2), the routing entropy (§4) and the routers paper's load statistics."""

from __future__ import annotations

import torch

from ..validate import check_expert_mass, check_weights


def expert_mass(g: torch.Tensor) -> torch.Tensor:
    """Effective sample count N_e = sum_i g_e(x_i) (A.2): ``(N, E) -> (E,)``."""
    return g.sum(0)


def weighted_mean(values: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Routing-weighted mean over points of per-point quantities (§2.2 aggregation).

    ``values: (E, N, *rest)``, ``g: (N, E)`` -> ``(E, *rest)``.
    """
    check_weights("g", g)
    mass = expert_mass(g)
    check_expert_mass(mass)
    w = (g / mass).T.reshape(*g.T.shape, *([1] * (values.dim() - 2)))
    return (w * values).sum(1)


def routing_entropy(g: torch.Tensor) -> torch.Tensor:
    """Per-input entropy of the routing weights, -sum_e g_e log g_e in nats (0 log 0 = 0):
    ``(N, E) -> (N,)``. log E is perfectly uniform routing (§4 failure mode 1)."""
    check_weights("g", g)
    return -torch.special.xlogy(g, g).sum(-1)


def load_fractions(g: torch.Tensor) -> torch.Tensor:
    """The fraction of token slots each expert receives: f_e = #{n: g_ne > 0} / #{(n, e): g_ne > 0}
    (N k slots for Top-k), ``(N, E) -> (E,)``, summing to 1. ``ValueError`` when ``g`` routes
    no token (every weight 0): the fractions are undefined."""
    check_weights("g", g)
    routed = (g > 0).to(g.dtype)
    total = routed.sum()
    if total == 0:
        raise ValueError(
            f"g routes no token (every routing weight of its {g.shape[0]} row(s) is 0): the load "
            "fractions are undefined; expected some g_ne > 0"
        )
    return routed.sum(0) / total


def load_imbalance(g: torch.Tensor) -> torch.Tensor:
    """Load imbalance: the population standard deviation over the E experts of
    ``load_fractions(g)`` (0 for perfectly balanced routing; the routers paper's "Std")."""
    return load_fractions(g).std(correction=0)
