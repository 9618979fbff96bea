"""Benchmark problems: random 2-layer GELU experts of a given size, and the exact reference."""

from dataclasses import dataclass
from functools import cached_property

import torch

from moegeo import probes


@dataclass
class Problem:
    E: int
    d: int
    h: int
    N: int
    seed: int = 0
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        g = torch.Generator().manual_seed(self.seed)
        # nn.Linear-like scales, so spectra look like those of the trained layers
        self.W1 = (torch.rand(self.E, self.h, self.d, generator=g, dtype=torch.float64) * 2 - 1) / self.d**0.5
        self.b1 = (torch.rand(self.E, self.h, generator=g, dtype=torch.float64) * 2 - 1) / self.d**0.5
        self.W2 = (torch.rand(self.E, self.d, self.h, generator=g, dtype=torch.float64) * 2 - 1) / self.h**0.5
        self.x = torch.randn(self.N, self.d, generator=g, dtype=torch.float64)
        self.args = tuple(t.to(self.dtype) for t in (self.W1, self.b1, self.W2, self.x))

    @cached_property
    def exact_sigma1(self) -> torch.Tensor:
        """sigma_1 of every J_e(x_i) in float64 by LAPACK SVD, point by point: (E, N)."""
        out = torch.empty(self.E, self.N, dtype=torch.float64)
        for e in range(self.E):
            out[e] = probes.singular_values(
                probes.expert_jacobians(self.W1[e : e + 1], self.b1[e : e + 1], self.W2[e : e + 1], self.x)
            )[0, :, 0]
        return out

    def rel_error(self, sigma1: torch.Tensor) -> float:
        return float(((sigma1.double() - self.exact_sigma1).abs() / self.exact_sigma1).max())

    @property
    def label(self) -> str:
        return f"E={self.E} d={self.d} h={self.h} N={self.N}"


PAPER = dict(E=8, d=64, h=128, N=512)  # B.1


def expert_apply(W1e, b1e, W2e, xi):
    """One expert at one point, for torch.func transforms."""
    return W2e @ torch.nn.functional.gelu(W1e @ xi + b1e)


def vmap_jacobians(mode, W1, b1, W2, x):
    """vmap over experts and points of jacrev/jacfwd: (E, N, d, d)."""
    jac = {"rev": torch.func.jacrev, "fwd": torch.func.jacfwd}[mode](expert_apply, argnums=3)
    per_point = torch.func.vmap(jac, in_dims=(None, None, None, 0))
    return torch.func.vmap(per_point, in_dims=(0, 0, 0, None))(W1, b1, W2, x)


def loop_jacobians(W1, b1, W2, x):
    """The naive reference: one autograd backward pass per output row, per point, per expert."""
    E, d = W1.shape[0], x.shape[1]
    out = torch.empty(E, x.shape[0], d, d, dtype=x.dtype)
    for e in range(E):
        for i in range(x.shape[0]):
            xi = x[i].clone().requires_grad_()
            y = expert_apply(W1[e], b1[e], W2[e], xi)
            for r in range(d):
                (out[e, i, r],) = torch.autograd.grad(y[r], xi, retain_graph=True)
    return out
