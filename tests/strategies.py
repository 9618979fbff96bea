"""Hypothesis strategies shared by the tests: small random MLP experts, points, weights."""
import torch
from hypothesis import strategies as st

seeds = st.integers(0, 2**31 - 1)


@st.composite
def mlp_experts(draw, max_experts=4, max_dim=8, max_points=6):
    """(W1, b1, W2, x) for E random 2-layer GELU experts, float64."""
    E = draw(st.integers(1, max_experts))
    d = draw(st.integers(1, max_dim))
    d_out = draw(st.integers(1, max_dim))
    h = draw(st.integers(1, 2 * max_dim))
    N = draw(st.integers(1, max_points))
    g = torch.Generator().manual_seed(draw(seeds))
    W1 = torch.randn(E, h, d, generator=g, dtype=torch.float64)
    b1 = torch.randn(E, h, generator=g, dtype=torch.float64)
    W2 = torch.randn(E, d_out, h, generator=g, dtype=torch.float64)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    return W1, b1, W2, x


@st.composite
def matrices(draw, max_batch=4, min_dim=2, max_dim=12):
    """A batch of random Gaussian matrices (B, m, n), float64."""
    B, m, n = draw(st.integers(1, max_batch)), draw(st.integers(min_dim, max_dim)), draw(st.integers(min_dim, max_dim))
    g = torch.Generator().manual_seed(draw(seeds))
    return torch.randn(B, m, n, generator=g, dtype=torch.float64)


@st.composite
def weighted_samples(draw, max_points=40, max_dim=6):
    """(h, w): N points in D dims and positive weights, float64."""
    N, D = draw(st.integers(3, max_points)), draw(st.integers(1, max_dim))
    g = torch.Generator().manual_seed(draw(seeds))
    h = torch.randn(N, D, generator=g, dtype=torch.float64) * torch.rand(D, generator=g, dtype=torch.float64).add(0.1)
    w = torch.rand(N, generator=g, dtype=torch.float64) + 0.05
    return h, w
