"""The Dual Jacobian-PCA probes (Liu, 2025, §2.2 and Appendix A) as pure functions on tensors.

Shapes: ``x: (N, d)`` inputs, ``g: (N, E)`` routing weights, MLP experts stacked on a leading
expert dimension ``W1: (E, h, d)``, ``b1: (E, h)``, ``W2: (E, d_out, h)``. A probe never
trains, caches or plots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse.linalg
import scipy.stats
import torch

from .validate import check_expert_mass, check_finite, check_gates, check_shape, check_weights

#: largest materialised Jacobian tensor, in bytes, before ``expert_jacobians`` refuses.
MAX_JACOBIAN_BYTES = 4 * 2**30


# --------------------------------------------------------------------------- activations
def gelu(z: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, as ``torch.nn.functional.gelu``."""
    return torch.nn.functional.gelu(z)


def gelu_grad(z: torch.Tensor) -> torch.Tensor:
    """d GELU / dz = Phi(z) + z phi(z)."""
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _check_mlp(W1, b1, W2, x) -> None:
    check_finite(W1=W1, b1=b1, W2=W2, x=x)
    E, h, d = W1.shape if W1.dim() == 3 else (None, None, None)
    check_shape("W1", W1, (None, None, None), " = (E, h, d)")
    check_shape("b1", b1, (E, h), " = (E, h)")
    check_shape("W2", W2, (E, None, h), " = (E, d_out, h)")
    if x.dim() == 3:  # each expert its own inputs (e.g. experts of several seeds stacked)
        check_shape("x", x, (E, None, d), f" = (E, N, d) with E = {E}, d = {d} from W1")
    else:
        check_shape("x", x, (None, d), f" = (N, d) with d = {d} from W1")


def expert_preactivations(W1: torch.Tensor, b1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``W1_e x_i + b1_e`` for every expert and point: ``x: (N, d)`` or ``(E, N, d)`` -> ``(E, N, h)``."""
    return torch.matmul(x, W1.transpose(-1, -2)) + b1[:, None, :]


# --------------------------------------------------------------------------- Jacobians
def expert_jacobians(W1, b1, W2, x, max_bytes: int = MAX_JACOBIAN_BYTES) -> torch.Tensor:
    """Closed-form expert-local Jacobians J_e(x_i) = W2_e diag(GELU'(W1_e x_i + b1_e)) W1_e (A.2).

    Parameters
    ----------
    W1 : (E, h, d), b1 : (E, h), W2 : (E, d_out, h)
        Stacked 2-layer GELU experts (the second bias does not enter the Jacobian).
    x : (N, d)
    max_bytes : refuse (``MemoryError``) to materialise a larger result.

    Returns
    -------
    J : (E, N, d_out, d)
    """
    _check_mlp(W1, b1, W2, x)
    E, N, d_out, d = W1.shape[0], x.shape[-2], W2.shape[1], x.shape[-1]
    need = E * N * d_out * d * x.element_size()
    if need > max_bytes:
        raise MemoryError(
            f"the expert Jacobians would need {need / 2**30:.2f} GiB (E={E}, N={N}, {d_out}x{d}) "
            f"> max_bytes = {max_bytes / 2**30:.2f} GiB; use mlp_jacobian_operator (matrix-free "
            "JVP/VJP) with power_iteration_sigma1 instead, or fewer points"
        )
    a = gelu_grad(expert_preactivations(W1, b1, x))
    return torch.einsum("eoh,enh,ehi->enoi", W2, a, W1)


def jacobians(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str = "rev") -> torch.Tensor:
    """Generic per-point Jacobians of any callable ``fn: (d,) -> (d_out,)`` with torch.func.

    ``mode`` is "rev" (vmap(jacrev)) or "fwd" (vmap(jacfwd)). Returns ``(N, d_out, d)``.
    """
    check_finite(x=x)
    jac = {"rev": torch.func.jacrev, "fwd": torch.func.jacfwd}
    if mode not in jac:
        raise ValueError(f"mode must be 'rev' or 'fwd', got {mode!r}")
    return torch.func.vmap(jac[mode](fn))(x)


@dataclass(frozen=True)
class JacobianOperator:
    """A batch of Jacobians as a matrix-free operator (never materialised).

    ``matvec(v)``: ``(*batch, d_in) -> (*batch, d_out)`` computes J v (a JVP);
    ``rmatvec(u)``: ``(*batch, d_out) -> (*batch, d_in)`` computes J^T u (a VJP).
    """

    matvec: Callable[[torch.Tensor], torch.Tensor]
    rmatvec: Callable[[torch.Tensor], torch.Tensor]
    batch_shape: tuple
    d_in: int
    d_out: int


def mlp_jacobian_operator(W1, b1, W2, x) -> JacobianOperator:
    """The E x N expert Jacobians of MLP experts as a matrix-free operator, batch ``(E, N)``.

    Memory is O(E N (h + d)): only GELU'(W1 x + b1) is stored.
    """
    _check_mlp(W1, b1, W2, x)
    a = gelu_grad(expert_preactivations(W1, b1, x))  # (E, N, h)
    return JacobianOperator(
        matvec=lambda v: torch.einsum("eoh,enh->eno", W2, a * torch.einsum("ehi,eni->enh", W1, v)),
        rmatvec=lambda u: torch.einsum("ehi,enh->eni", W1, a * torch.einsum("eoh,eno->enh", W2, u)),
        batch_shape=(W1.shape[0], x.shape[-2]),
        d_in=W1.shape[2],
        d_out=W2.shape[1],
    )


def autograd_jacobian_operator(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> JacobianOperator:
    """Per-point Jacobians of any callable ``fn: (d,) -> (d_out,)`` as JVP/VJP, batch ``(N,)``."""
    check_finite(x=x)
    d_out = fn(x[0]).shape[-1]

    def jvp(xi, vi):
        return torch.func.jvp(fn, (xi,), (vi,))[1]

    def vjp(xi, ui):
        return torch.func.vjp(fn, xi)[1](ui)[0]

    return JacobianOperator(
        matvec=lambda v: torch.func.vmap(jvp)(x, v),
        rmatvec=lambda u: torch.func.vmap(vjp)(x, u),
        batch_shape=(x.shape[0],),
        d_in=x.shape[1],
        d_out=d_out,
    )


# --------------------------------------------------------------------------- spectra
@dataclass(frozen=True)
class SpectralResult:
    """Leading singular values of a batch of operators and how they were obtained."""

    values: torch.Tensor  # (*batch,) sigma_1 estimates
    iterations: int  # iterations (power) or operator applications (Lanczos) used
    converged: bool  # every batch element met the tolerance
    vectors: torch.Tensor | None = None  # (*batch, d_in) right singular vectors, for warm starts


def singular_values(J: torch.Tensor, method: str = "svd") -> torch.Tensor:
    """Exact singular values, descending: ``(*, m, n) -> (*, min(m, n))`` (A.5 "exact SVD").

    ``method="svd"``: LAPACK SVD. ``method="gram"``: sqrt of the eigenvalues of the Gram
    matrix J^T J (or J J^T), about twice as fast; a singular value sigma then carries an
    absolute error of order eps * sigma_1^2 / sigma, negligible in float64 for the
    spectra here but not for ill-conditioned float32 matrices.
    """
    check_finite(J=J)
    if method == "svd":
        return torch.linalg.svdvals(J)
    if method == "gram":
        G = J.transpose(-1, -2) @ J if J.shape[-1] <= J.shape[-2] else J @ J.transpose(-1, -2)
        return torch.linalg.eigvalsh(G).flip(-1).clamp_min(0).sqrt()
    raise ValueError(f"method must be 'svd' or 'gram', got {method!r}")


def power_iteration_sigma1(
    op: JacobianOperator,
    tol: float = 1e-6,
    max_iter: int = 1000,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> SpectralResult:
    """sigma_1 of every Jacobian in ``op`` by power iteration on J^T J (A.5).

    Stops when, for every batch element, the estimate sigma = ||J v|| changed by at most a
    relative ``tol`` in the last iteration. With a spectral gap r = (sigma_2/sigma_1)^2 the
    remaining error is about ``tol * r / (1 - r)``; near-degenerate leading values converge
    slowly in v but not in sigma (the estimate is a Rayleigh quotient). The accuracy reached is
    checked against exact SVD in the tests and benchmarks. Pass ``v0`` (e.g. the ``vectors`` of
    an earlier call) to warm-start.
    """
    if v0 is None:
        v0 = torch.randn(*op.batch_shape, op.d_in, generator=generator, dtype=dtype)
    v = v0 / v0.norm(dim=-1, keepdim=True)
    sigma = torch.zeros(op.batch_shape, dtype=v.dtype)
    tiny = torch.finfo(v.dtype).tiny
    for it in range(1, max_iter + 1):
        w = op.rmatvec(op.matvec(v))
        new = (v * w).sum(-1).clamp_min(0).sqrt()  # ||J v|| for unit v
        v = w / w.norm(dim=-1, keepdim=True).clamp_min(tiny)
        done = bool(((new - sigma).abs() <= tol * new).all())
        sigma = new
        if done:
            return SpectralResult(sigma, it, True, v)
    return SpectralResult(sigma, max_iter, False, v)


def lanczos_sigma1(
    op: JacobianOperator,
    tol: float = 1e-10,
    max_iter: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> SpectralResult:
    """sigma_1 of every Jacobian in ``op`` by Lanczos on J^T J, batched over the operator's batch.

    Full reorthogonalisation. A batch element stops when the residual of its largest Ritz pair,
    beta_j |y_j| = ||J^T J u - theta u||, is at most ``tol * theta``: theta is then within a
    relative ``tol`` of an eigenvalue of J^T J (so sigma within about ``tol / 2``), and in
    practice far closer (the error is quadratic in the residual). ``max_iter`` defaults to
    ``d_in``, where the Krylov space is the whole space. Krylov convergence at the extreme
    eigenvalue is far faster than power iteration's. Memory: the basis, O(batch x iters x d_in).
    """
    k_max = min(max_iter or op.d_in, op.d_in)
    B = math.prod(op.batch_shape)
    q = torch.randn(B, op.d_in, generator=generator, dtype=dtype)
    basis = [q / q.norm(dim=-1, keepdim=True)]
    alphas, betas = [], []
    theta = torch.zeros(B, dtype=dtype)
    active = torch.ones(B, dtype=torch.bool)  # Ritz value not yet converged
    eps = torch.finfo(dtype).eps
    for j in range(k_max):
        v = basis[-1]
        w = op.rmatvec(op.matvec(v.reshape(*op.batch_shape, -1))).reshape(B, -1)
        alphas.append((v * w).sum(-1))
        Q = torch.stack(basis, 1)  # (B, j+1, n)
        for _ in range(2):  # full reorthogonalisation; twice is enough
            w = w - torch.bmm(torch.bmm(Q, w[:, :, None]).transpose(1, 2), Q)[:, 0]
        beta = w.norm(dim=-1)
        T = torch.diag_embed(torch.stack(alphas, -1)[active])
        if betas:
            off = torch.diag_embed(torch.stack(betas, -1)[active], offset=1)
            T = T + off + off.transpose(-1, -2)
        evals, evecs = torch.linalg.eigh(T)  # only the unconverged: one LAPACK call each
        new = evals[..., -1]
        resid = beta[active] * evecs[..., -1, -1].abs()  # ||J^T J y - theta y|| of the Ritz pair
        done = resid <= (tol + 10 * eps) * new.abs()
        theta[active] = new
        active[active.clone()] = ~done
        if not bool(active.any()) or j + 1 == k_max:
            converged = not bool(active.any()) or j + 1 == op.d_in
            return SpectralResult(theta.clamp_min(0).sqrt().reshape(op.batch_shape), j + 1, converged)
        betas.append(beta)
        basis.append(w / beta.clamp_min(torch.finfo(dtype).tiny)[:, None])
    raise AssertionError("unreachable")


def arpack_sigma1(op: JacobianOperator, tol: float = 1e-10) -> SpectralResult:
    """sigma_1 of a single matrix-free Jacobian by ARPACK's implicitly restarted Lanczos
    (``scipy.sparse.linalg.svds``): the independent reference for ``lanczos_sigma1``.
    ``op`` must hold exactly one matrix (batch of size 1)."""
    if math.prod(op.batch_shape) != 1:
        raise ValueError(f"arpack_sigma1 takes one matrix; op has batch shape {op.batch_shape}")
    calls = [0]
    shape = (*op.batch_shape, -1)

    def apply(f):
        def g(v):
            calls[0] += 1
            return f(torch.as_tensor(np.asarray(v, dtype=np.float64)).reshape(shape)).reshape(-1).numpy()
        return g

    lin = scipy.sparse.linalg.LinearOperator(
        (op.d_out, op.d_in), matvec=apply(op.matvec), rmatvec=apply(op.rmatvec), dtype=np.float64
    )
    s = scipy.sparse.linalg.svds(lin, k=1, tol=tol, return_singular_vectors=False, solver="arpack")
    return SpectralResult(torch.tensor(float(s[0])).reshape(op.batch_shape), calls[0], True)


def energy_curve(s: torch.Tensor) -> torch.Tensor:
    """Normalised cumulative spectral energy E_k = sum_{j<=k} s_j^2 / sum_j s_j^2 (Fig. 1D).

    Energy is the squared singular value (the Frobenius energy). ``s: (*, n) -> (*, n)``.
    """
    e = s.square().cumsum(-1)
    return e / e[..., -1:]


def k_at(curve: torch.Tensor, tau: float) -> torch.Tensor:
    """Components needed to reach ``tau`` on a cumulative curve (k@tau, A.4).

    scikit-learn's rule: ``searchsorted(curve, tau, side="right") + 1``, capped at the length.
    ``curve: (*, n) -> (*,)`` integer.
    """
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    tau_t = torch.full((*curve.shape[:-1], 1), tau, dtype=curve.dtype)
    k = torch.searchsorted(curve.contiguous(), tau_t, right=True).squeeze(-1) + 1
    return k.clamp_max(curve.shape[-1])


def value_at(curve: torch.Tensor, k: int) -> torch.Tensor:
    """The cumulative curve at k components (cum-var@k, B.5): ``curve[..., k-1]``."""
    if not 1 <= k <= curve.shape[-1]:
        raise ValueError(f"k must be in [1, {curve.shape[-1]}], got {k}")
    return curve[..., k - 1]


# --------------------------------------------------------------------------- routing-weighted averages
def expert_mass(g: torch.Tensor) -> torch.Tensor:
    """Effective sample count N_e = sum_i g_e(x_i) (A.2): ``(N, E) -> (E,)``."""
    return g.sum(0)


def mean_jacobian(W1, b1, W2, x, g) -> torch.Tensor:
    """Routing-weighted average Jacobian J̄_e = sum_i g_e(x_i) J_e(x_i) / N_e (A.2, B.4).

    For MLP experts it is W2_e diag(ā_e) W1_e with ā_e the weighted mean of GELU'.
    ``g: (N, E)`` gates on the simplex. Returns ``(E, d_out, d)``.
    """
    _check_mlp(W1, b1, W2, x)
    check_shape("g", g, (x.shape[0], W1.shape[0]), " = (N, E)")
    check_gates(g)
    mass = expert_mass(g)
    check_expert_mass(mass)
    a_bar = torch.einsum("ne,enh->eh", g, gelu_grad(expert_preactivations(W1, b1, x))) / mass[:, None]
    return torch.einsum("eoh,eh,ehi->eoi", W2, a_bar, W1)


def weighted_mean(values: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Routing-weighted mean over points of per-point quantities (§2.2 aggregation).

    ``values: (E, N, *rest)``, ``g: (N, E)`` -> ``(E, *rest)``.
    """
    check_weights("g", g)
    mass = expert_mass(g)
    check_expert_mass(mass)
    w = (g / mass).T.reshape(*g.T.shape, *([1] * (values.dim() - 2)))
    return (w * values).sum(1)


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


# --------------------------------------------------------------------------- weighted PCA
@dataclass(frozen=True)
class PCAResult:
    """Weighted PCA of one or more experts (A.4/B.5); leading dims are the experts'."""

    mean: torch.Tensor  # (*, D) weighted mean mu_e
    eigenvalues: torch.Tensor  # (*, D) lambda_1 >= ... >= lambda_D of C_e

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        """e_i = lambda_i / sum_j lambda_j (A.4)."""
        lam = self.eigenvalues.clamp_min(0)
        return lam / lam.sum(-1, keepdim=True)

    @property
    def cumulative(self) -> torch.Tensor:
        """E_k = sum_{i<=k} e_i (A.4)."""
        return self.explained_variance_ratio.cumsum(-1)

    def k_at(self, tau: float = 0.9) -> torch.Tensor:
        """Components to reach ``tau`` cumulative variance (k@0.9, the paper's effective rank)."""
        return k_at(self.cumulative, tau)

    def cumvar_at(self, k: int = 10) -> torch.Tensor:
        """Cumulative explained variance at k components (cum-var@10, B.5)."""
        return value_at(self.cumulative, k)


def weighted_pca(h: torch.Tensor, w: torch.Tensor) -> PCAResult:
    """Weighted PCA with weighted mean and covariance normalised by N_e = sum w (A.4/B.5).

    ``h: (*, N, D)`` hidden states, ``w: (*, N)`` non-negative sample weights (leading dims
    broadcast, e.g. ``h: (N, D)`` shared with ``w: (E, N)``). Computed in float64.
    Scaling all weights leaves the result unchanged.
    """
    check_finite(h=h)
    check_weights("w", w)
    if h.shape[-2] != w.shape[-1]:
        raise ValueError(f"h has {h.shape[-2]} samples (shape {tuple(h.shape)}) but w has {w.shape[-1]} (shape {tuple(w.shape)})")
    h, w = h.double(), w.double()
    mass = w.sum(-1)
    check_expert_mass(mass.reshape(-1))
    p = w / mass[..., None]
    mu = torch.einsum("...n,...nd->...d", p, h)
    c = h - mu[..., None, :]
    cov = torch.einsum("...n,...nd,...nk->...dk", p, c, c)
    eig = torch.linalg.eigvalsh(cov).flip(-1)
    return PCAResult(mean=mu, eigenvalues=eig)
