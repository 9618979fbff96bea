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


#: regimes of planted principal angles: where arccos alone (small) or arcsin alone (near pi/2)
#: would lose digits, and "mixed", both in one pair.
ANGLE_REGIMES = ("generic", "nearly_identical", "nearly_orthogonal", "mixed")


def _planted_angles(regime, m, g):
    tiny = 10.0 ** torch.empty(m, dtype=torch.float64).uniform_(-10, -3, generator=g)
    theta = {
        "generic": torch.rand(m, generator=g, dtype=torch.float64) * torch.pi / 2,
        "nearly_identical": tiny,
        "nearly_orthogonal": torch.pi / 2 - tiny,
        "mixed": torch.where(torch.arange(m) % 2 == 0, tiny, torch.pi / 2 - tiny),
    }[regime]
    return theta.sort().values


def _haar(D, r, g):
    Q, R = torch.linalg.qr(torch.randn(D, r, generator=g, dtype=torch.float64))
    return Q * torch.where(R.diagonal() < 0, -1.0, 1.0)


@st.composite
def subspace_pairs(draw, max_dim=10, regimes=ANGLE_REGIMES):
    """(U, V, theta): orthonormal bases (D, r), (D, s) with planted ascending principal angles
    theta (min(r, s),), in random position and with random bases of each span; D >= r + s."""
    D = draw(st.integers(2, max_dim))
    r = draw(st.integers(1, D - 1))
    s = draw(st.integers(1, D - r))
    m, regime = min(r, s), draw(st.sampled_from(regimes))
    g = torch.Generator().manual_seed(draw(seeds))
    theta = _planted_angles(regime, m, g)
    Q = _haar(D, D, g)  # U's axes Q[:, :r]; V tilts m of them towards Q[:, r:r+m], the rest lie outside U
    V = torch.cat([Q[:, :m] * theta.cos() + Q[:, r : r + m] * theta.sin(), Q[:, r + m : r + s]], 1)
    return Q[:, :r] @ _haar(r, r, g), V @ _haar(s, s, g), theta
