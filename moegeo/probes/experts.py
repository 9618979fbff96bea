"""Expert-local Jacobians and the routing-weighted mean Jacobian (the Dual Jacobian-PCA paper,
§2.2 and Appendix A.2) as pure functions on tensors.

Shapes: ``x: (N, d)`` inputs, ``g: (N, E)`` routing weights, MLP experts stacked on a leading
expert dimension ``W1: (E, h, d)``, ``b1: (E, h)``, ``W2: (E, d_out, h)``; SwiGLU experts
``Wg, Wu: (E, h, d)``, ``Wd: (E, d_out, h)``. A probe never trains, caches or plots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..nn import gelu, gelu_grad, silu_grad
from ..validate import check_expert_mass, check_finite, check_positive_number, check_shape, check_weights
from .routing import expert_mass, weighted_mean

#: largest materialised Jacobian tensor, in bytes, before ``expert_jacobians`` refuses.
MAX_JACOBIAN_BYTES = 4 * 2**30


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


def expert_jacobians(W1, b1, W2, x, *, max_bytes: int = MAX_JACOBIAN_BYTES) -> torch.Tensor:
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


def _check_swiglu(Wg, Wu, Wd, x, bg=None, bu=None) -> None:
    check_finite(Wg=Wg, Wu=Wu, Wd=Wd, x=x, **{k: v for k, v in (("bg", bg), ("bu", bu)) if v is not None})
    check_shape("Wg", Wg, (None, None, None), " = (E, h, d)")
    E, h, d = Wg.shape
    check_shape("Wu", Wu, (E, h, d), f" = (E, h, d) = ({E}, {h}, {d}) from Wg")
    check_shape("Wd", Wd, (E, None, h), f" = (E, d_out, h) with E = {E}, h = {h} from Wg")
    check_shape("x", x, (None, d), f" = (N, d) with d = {d} from Wg")
    for name, b in (("bg", bg), ("bu", bu)):
        if b is not None:
            check_shape(name, b, (E, h), f" = (E, h) = ({E}, {h})")


def swiglu_hidden(Wg, Wu, x, *, bg=None, bu=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gate and up pre-activations and the hidden activation of SwiGLU experts,
    a = W_g x + b_g, u = W_u x + b_u and SiLU(a) ⊙ u (Shazeer, 2020, "GLU Variants Improve Transformer").

    ``Wg, Wu: (E, h, d)``, ``bg, bu: (E, h)`` or None, ``x: (N, d)`` -> three ``(E, N, h)``.
    """
    a = torch.matmul(x, Wg.transpose(-1, -2)) + (0 if bg is None else bg[:, None, :])
    u = torch.matmul(x, Wu.transpose(-1, -2)) + (0 if bu is None else bu[:, None, :])
    return a, u, torch.nn.functional.silu(a) * u


def swiglu_jacobians(Wg, Wu, Wd, x, *, bg=None, bu=None, max_bytes: int = MAX_JACOBIAN_BYTES) -> torch.Tensor:
    """Closed-form Jacobians of SwiGLU experts f_e(x) = W_d (SiLU(W_g x + b_g) ⊙ (W_u x + b_u)) + b_d,

    J_e(x_i) = W_d [diag(SiLU'(a) ⊙ u) W_g + diag(SiLU(a)) W_u],  a = W_g x_i + b_g, u = W_u x_i + b_u,

    the SwiGLU counterpart of ``expert_jacobians`` (A.2) for the experts of Mixtral, Qwen-MoE,
    OLMoE, DeepSeek and most ``transformers`` MoE models (``moegeo.hf``).

    Parameters
    ----------
    Wg, Wu : (E, h, d)
        Gate and up projections, stacked over experts.
    Wd : (E, d_out, h)
        Down projection (its bias does not enter the Jacobian).
    x : (N, d)
    bg, bu : (E, h), optional
        Gate and up biases (GPT-OSS has them; most models do not).
    max_bytes : refuse (``MemoryError``) to materialise a larger result.

    Returns
    -------
    J : (E, N, d_out, d)

    Notes
    -----
    GPT-OSS's gate differs (clamped gate and up, SiLU with a slope alpha, ``up + 1``); its
    Jacobians come from autograd through the model's own expert forward (``moegeo.hf``), which
    follows whatever activation a model defines rather than a re-implementation of each.
    """
    _check_swiglu(Wg, Wu, Wd, x, bg, bu)
    E, N, d_out, d = Wg.shape[0], x.shape[0], Wd.shape[1], x.shape[1]
    need = E * N * d_out * d * x.element_size()
    if need > max_bytes:
        raise MemoryError(
            f"the SwiGLU expert Jacobians would need {need / 2**30:.2f} GiB (E={E}, N={N}, {d_out}x{d}) "
            f"> max_bytes = {max_bytes / 2**30:.2f} GiB; use swiglu_jacobian_operator (matrix-free "
            "JVP/VJP) with lanczos_sigma1 instead, or fewer points"
        )
    a, u, _ = swiglu_hidden(Wg, Wu, x, bg=bg, bu=bu)
    return torch.einsum("eoh,enh,ehi->enoi", Wd, silu_grad(a) * u, Wg) + torch.einsum(
        "eoh,enh,ehi->enoi", Wd, torch.nn.functional.silu(a), Wu
    )


def swiglu_jacobian_operator(Wg, Wu, Wd, x, *, bg=None, bu=None) -> JacobianOperator:
    """The E x N SwiGLU expert Jacobians of ``swiglu_jacobians`` as a matrix-free operator,
    batch ``(E, N)``: J v = W_d (p ⊙ W_g v + q ⊙ W_u v) and J^T w = W_g^T (p ⊙ W_d^T w) +
    W_u^T (q ⊙ W_d^T w) with p = SiLU'(a) ⊙ u, q = SiLU(a). Memory O(E N (h + d)) plus one copy
    of the gate and up weights, stacked as [W_g; W_u] so that each product is one GEMM of
    width 2h. It broadcasts (``JacobianOperator.broadcasts``): vectors ``(..., E, N, d)`` with
    leading dims (e.g. several Lanczos starts) go into the same GEMMs, as more rows."""
    _check_swiglu(Wg, Wu, Wd, x, bg, bu)
    a, u, _ = swiglu_hidden(Wg, Wu, x, bg=bg, bu=bu)
    pq = torch.cat([silu_grad(a) * u, torch.nn.functional.silu(a)], -1)  # (E, N, 2h): [p, q]
    Wgu, h = torch.cat([Wg, Wu], 1), Wg.shape[1]  # (E, 2h, d)
    E, N = Wg.shape[0], x.shape[0]

    def rows(v, f):
        """f on (E, L N, k) rows, for v: (..., E, N, k) with L the product of the leading dims."""
        lead = v.shape[:-3]
        flat = v.reshape(-1, E, N, v.shape[-1]).transpose(0, 1).reshape(E, -1, v.shape[-1])
        out = f(flat)
        return out.reshape(E, -1, N, out.shape[-1]).transpose(0, 1).reshape(*lead, E, N, out.shape[-1])

    def matvec(v):
        def f(r):
            z = torch.bmm(r, Wgu.transpose(1, 2)).view(E, -1, N, 2 * h).mul_(pq[:, None])
            return torch.bmm((z[..., :h] + z[..., h:]).reshape(E, -1, h), Wd.transpose(1, 2))

        return rows(v, f)

    def rmatvec(w):
        def f(r):
            t = torch.bmm(r, Wd).view(E, -1, N, h)
            return torch.bmm((torch.cat([t, t], -1) * pq[:, None]).reshape(E, -1, 2 * h), Wgu)

        return rows(w, f)

    return JacobianOperator(matvec, rmatvec, batch_shape=(E, N), d_in=Wg.shape[2], d_out=Wd.shape[1], broadcasts=True)


def swiglu_mean_jacobian(Wg, Wu, Wd, x, g, *, bg=None, bu=None) -> torch.Tensor:
    """Routing-weighted average Jacobian J̄_e (A.2, B.4) of SwiGLU experts without any per-point
    Jacobian: J is linear in (SiLU'(a) ⊙ u, SiLU(a)), so J̄_e = W_d [diag(p̄_e) W_g + diag(q̄_e) W_u]
    with p̄_e, q̄_e their routing-weighted means. ``g: (N, E)`` non-negative routing weights with a
    positive total per expert (any scale: each expert is normalised by its own N_e; the rule of
    ``mean_jacobian``). Returns ``(E, d_out, d)``: one (d_out x h) @ (h x d) product per expert."""
    _check_swiglu(Wg, Wu, Wd, x, bg, bu)
    check_shape("g", g, (x.shape[0], Wg.shape[0]), " = (N, E)")
    a, u, _ = swiglu_hidden(Wg, Wu, x, bg=bg, bu=bu)
    p_bar = weighted_mean(silu_grad(a) * u, g)  # (E, h)
    q_bar = weighted_mean(torch.nn.functional.silu(a), g)
    return torch.bmm(Wd, p_bar[..., None] * Wg + q_bar[..., None] * Wu)


def jacobians(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, mode: str = "rev") -> torch.Tensor:
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
    ``broadcasts``: both also take extra leading dims, ``(..., *batch, d)``, in one call.
    """

    matvec: Callable[[torch.Tensor], torch.Tensor]
    rmatvec: Callable[[torch.Tensor], torch.Tensor]
    batch_shape: tuple
    d_in: int
    d_out: int
    broadcasts: bool = False


def matrix_operator(J: torch.Tensor) -> JacobianOperator:
    """A materialised batch of matrices ``J: (*batch, m, n)`` as a ``JacobianOperator`` (J v and
    J^T u by batched matrix products; it ``broadcasts``), e.g. for ``spectra.block_lanczos_top``
    on a routing-weighted mean Jacobian."""
    batch = tuple(J.shape[:-2])

    def apply(A, v):
        """A v for v: (..., *batch, n), the leading dims as the columns of one GEMM per matrix."""
        lead = v.shape[: v.dim() - len(batch) - 1]
        cols = v.reshape(-1, *batch, v.shape[-1]).movedim(0, -1)  # (*batch, n, L)
        return (A @ cols).movedim(-1, 0).reshape(*lead, *batch, A.shape[-2])

    return JacobianOperator(
        lambda v: apply(J, v), lambda u: apply(J.transpose(-1, -2), u), batch, J.shape[-1], J.shape[-2], broadcasts=True
    )


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


def mean_jacobian(W1, b1, W2, x, g) -> torch.Tensor:
    """Routing-weighted average Jacobian J̄_e = sum_i g_e(x_i) J_e(x_i) / N_e (A.2, B.4).

    For MLP experts it is W2_e diag(ā_e) W1_e with ā_e the weighted mean of GELU'.
    ``g: (N, E)`` non-negative routing weights with a positive total per expert (any scale: each
    expert is normalised by its own N_e; the one rule of every J̄_e, as in ``swiglu_mean_jacobian``
    and ``moegeo.hf.tokenwise_jacobians``). Returns ``(E, d_out, d)``.
    """
    _check_mlp(W1, b1, W2, x)
    check_shape("g", g, (x.shape[0], W1.shape[0]), " = (N, E)")
    check_weights("g", g)
    mass = expert_mass(g)
    check_expert_mass(mass)
    a_bar = torch.einsum("ne,enh->eh", g, gelu_grad(expert_preactivations(W1, b1, x))) / mass[:, None]
    return torch.einsum("eoh,eh,ehi->eoi", W2, a_bar, W1)


def moe_jacobian(W1, b1, W2, b2, x, g, Wr, *, temperature: float = 1.0) -> torch.Tensor:
    """The effective Jacobian of the whole MoE layer, routing term included (A.2):
    J_MoE(x) = sum_e g_e(x) J_e(x) + sum_e f_e(x) (d g_e / dx)^T.

    For softmax routing renormalised over the selected set S(x) (Top-k; S = all experts for
    fully-soft), g_e = softmax_S(z / T)_e with z = Wr x + br, so d g_e / dx = g_e (Wr_e -
    sum_j g_j Wr_j) / T, zero off S (the selection is piecewise constant). ``g: (N, E)`` the
    layer's routing weights at ``x: (N, d)``, ``Wr: (E, d)``; ``b2: (E, d_out)``; ``temperature``
    a finite number > 0. Returns ``(N, d_out, d)``.
    """
    check_positive_number("temperature", temperature)
    J = expert_jacobians(W1, b1, W2, x)  # checks the expert tensors and x
    check_finite(b2=b2, g=g, Wr=Wr)
    check_shape("g", g, (x.shape[0], W1.shape[0]), " = (N, E)")
    check_shape("Wr", Wr, (W1.shape[0], x.shape[-1]), " = (E, d)")
    f = torch.einsum("eoh,enh->eno", W2, gelu(expert_preactivations(W1, b1, x))) + b2[:, None]
    grad_g = g[..., None] * (Wr[None] - (g @ Wr)[:, None, :]) / temperature  # (N, E, d)
    return torch.einsum("ne,enoi->noi", g, J) + torch.einsum("eno,nei->noi", f, grad_g)
