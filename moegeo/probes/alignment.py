"""Alignment between experts and routers: the cross-expert cosine of mean Jacobians (A.3) with its
chance level, and the routers paper's router-direction similarity, router-expert coupling and
score-activation correlation."""

from __future__ import annotations

import scipy.stats
import torch

from ..nn import gelu
from ..validate import check_finite, check_shape
from .experts import expert_preactivations


def cosine_matrix(M: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine of vec(M_e) (A.3): ``(E, *) -> (E, E)``."""
    check_finite(M=M)
    v = M.reshape(M.shape[0], -1)
    n = v.norm(dim=1)
    if (n == 0).any():
        raise ValueError(f"cosine of a zero matrix is undefined (experts {torch.nonzero(n == 0).flatten().tolist()})")
    v = v / n[:, None]
    return (v @ v.T).clamp(-1, 1)


def cosine_null(dim: int) -> scipy.stats.rv_continuous:
    """Null distribution of the cosine between two independent isotropic random vectors in R^dim
    (e.g. vec of two independent Gaussian d x d matrices, dim = d^2): (cos + 1)/2 ~ Beta(a, a),
    a = (dim - 1)/2. Mean 0, standard deviation 1/sqrt(dim). What "near zero" means by chance."""
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    a = (dim - 1) / 2
    return scipy.stats.beta(a, a, loc=-1, scale=2)


def router_similarity(R: torch.Tensor) -> torch.Tensor:
    """Mean |cos| between the distinct router vectors (rows of R, ``(E, d)``; the centroids of a
    K-Means router): the routers paper's "router direction similarity". ``ValueError`` for
    fewer than two routers (E = 1 has no pair)."""
    check_finite(R=R)
    if R.dim() != 2 or R.shape[0] < 2:
        raise ValueError(
            f"R must hold at least two router vectors, shape (E >= 2, d), got {tuple(R.shape)}: "
            "the similarity between distinct routers is undefined for E = 1"
        )
    c = cosine_matrix(R)
    return c[~torch.eye(len(c), dtype=torch.bool, device=c.device)].abs().mean()


def expert_input_directions(W1: torch.Tensor) -> torch.Tensor:
    """Each expert's input-weight direction: the top right singular vector of W1_e, ``(E, h, d)
    -> (E, d)`` (sign arbitrary). Every row of W1_e is updated along the routed inputs (the
    routers paper's coupling), and v_1 is the input direction W1_e responds to most."""
    check_finite(W1=W1)
    return torch.linalg.svd(W1, full_matrices=False).Vh[:, 0]


def router_expert_cosines(R: torch.Tensor, W1: torch.Tensor) -> torch.Tensor:
    """|cos(r_e, v_1(W1_e'))| for every router e and expert e', ``(E, E)``: the diagonal is each
    router's coupling with its own expert, the off-diagonal the mismatched pairs."""
    check_shape("R", R, (W1.shape[0], W1.shape[-1]), " = (E, d)")
    V = expert_input_directions(W1)
    return (torch.nn.functional.normalize(R, dim=-1) @ V.T).abs()


def score_activation_correlation(
    scores: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor, x: torch.Tensor, g: torch.Tensor, *, min_tokens: int = 3
) -> torch.Tensor:
    """Per expert e, Spearman's rank correlation over the tokens routed to e (g_ne > 0) between
    e's router score s_e(x) and the magnitude of e's hidden activation ||GELU(W1_e x + b1_e)||_2
    (the routers paper: "higher router scores predict stronger expert neuron activations").
    ``scores, g: (N, E)``; ``(E,)``, NaN for an expert with fewer than ``min_tokens`` tokens or a
    constant score or activation."""
    check_shape("scores", scores, tuple(g.shape), " = (N, E)")
    act = gelu(expert_preactivations(W1, b1, x)).norm(dim=-1)  # (E, N)
    out = torch.full((g.shape[1],), float("nan"), dtype=torch.float64)
    for e in range(g.shape[1]):
        m = g[:, e] > 0
        if int(m.sum()) >= min_tokens:
            rho = scipy.stats.spearmanr(scores[m, e].cpu().numpy(), act[e, m].cpu().numpy()).statistic
            out[e] = float(rho)
    return out
