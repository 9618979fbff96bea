"""Numerical primitives every other module builds on: activations, LayerNorm, the optimizer and
per-seed random streams. No moegeo imports (floor 1)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .validate import check_finite, check_shape


def gelu(z: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, as ``torch.nn.functional.gelu``."""
    return torch.nn.functional.gelu(z)


def gelu_grad(z: torch.Tensor) -> torch.Tensor:
    """d GELU / dz = Phi(z) + z phi(z)."""
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def silu_grad(z: torch.Tensor) -> torch.Tensor:
    """d SiLU / dz = s (1 + z (1 - s)) with s = sigmoid(z)."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


LN_EPS = 1e-5  # torch.nn.LayerNorm's default


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = LN_EPS) -> torch.Tensor:
    """LayerNorm over the last axis with the biased variance, as ``torch.nn.LayerNorm``:
    ``weight * (x - mean) / sqrt(var + eps) + bias``; ``weight, bias`` broadcast against ``x``."""
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).square().mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def layer_norm_jacobian(x: torch.Tensor, weight: torch.Tensor, eps: float = LN_EPS) -> torch.Tensor:
    """Closed-form Jacobian of ``layer_norm`` at every point: with s = sqrt(var + eps) and
    x̂ = (x - mean) / s, d LN / dx = diag(weight) / s (I - 11^T / d - x̂ x̂^T / d).
    ``x: (N, d)``, ``weight: (d,)`` -> ``(N, d, d)``."""
    check_finite(x=x, weight=weight)
    check_shape("weight", weight, (x.shape[-1],), f" = (d,) with d = {x.shape[-1]} from x")
    d = x.shape[-1]
    mu = x.mean(-1, keepdim=True)
    s = torch.sqrt((x - mu).square().mean(-1, keepdim=True) + eps)  # (N, 1)
    xh = (x - mu) / s
    centre = torch.eye(d, dtype=x.dtype) - 1.0 / d
    return weight[None, :, None] / s[..., None] * (centre - xh[:, :, None] * xh[:, None, :] / d)


def adam(params, lr: float) -> torch.optim.Adam:
    """The training runs' optimizer: Adam with torch's defaults (betas 0.9, 0.999; eps 1e-8) as
    one fused kernel per parameter (``fused=True``: the same update as the per-operation loop up
    to float rounding, elementwise, hence deterministic and per seed; measured 3x faster per step
    on the language model)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def seed_generator(seed: int, stream: str) -> torch.Generator:
    """A torch generator for one seed and one named stream ("data", "init/topk", ...).

    Streams are independent of each other and of which other seeds run alongside.
    """
    tag = int.from_bytes(stream.encode(), "little") % 2**63
    state = np.random.SeedSequence([int(seed), tag]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] % 2**63))
