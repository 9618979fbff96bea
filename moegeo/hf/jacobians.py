"""Jacobians through a model's own modules, token by token: the per-token Jacobians by ``d_out``
backward passes and their matrix-free operator by plain autograd, for experts without a closed
form (GPT-OSS, custom gates) and for shared experts."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import probes
from ..validate import check_expert_mass, check_shape, check_weights


def tokenwise_jacobians(
    fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, *, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token Jacobians of a token-wise batch function ``fn: (N, d) -> (N, d_out)`` (row n of
    the output depends on row n of the input only, as in every MoE block) by ``d_out`` backward
    passes: the gradient of ``sum_n fn(X)[n, k]`` holds row k of every J_n at once. Works through
    code that ``torch.func.vmap`` cannot batch (the eager experts loop's data-dependent indexing).

    ``weights: (N,)``, optional: return the weighted mean ``sum_n w_n J_n / sum_n w_n``, ``(d_out,
    d)``, without storing the per-token Jacobians; non-negative with a positive total (the rule
    of ``probes.mean_jacobian``). Otherwise ``(N, d_out, d)``.
    """
    if weights is not None:
        check_shape("weights", weights, (X.shape[0],), " = (N,)")
        check_weights("weights", weights)
        check_expert_mass(weights.sum()[None])
    w = None if weights is None else weights.to(torch.promote_types(weights.dtype, X.dtype))
    X = X.detach().requires_grad_(True)
    with torch.enable_grad():
        Y = fn(X)
        rows = []
        for k in range(Y.shape[1]):
            (grad,) = torch.autograd.grad(Y[:, k].sum(), X, retain_graph=k + 1 < Y.shape[1])
            rows.append(grad if weights is None else (w @ grad.to(w.dtype) / w.sum()).to(grad.dtype))
    return torch.stack(rows, -2).detach()


def tokenwise_operator(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor) -> probes.JacobianOperator:
    """The per-token Jacobians of a token-wise ``fn: (N, d) -> (N, d_out)`` as a matrix-free
    operator, batch ``(N,)``: one VJP gives J_n^T u_n for every token, and J_n v_n is the gradient
    of that VJP with respect to u (double backward), computed in X's dtype (the model's) and
    returned in the dtype of the vector applied. Plain autograd, not ``torch.func``: the module's
    own hooks (``accelerate``'s offload) then run as in any forward pass."""
    X = X.detach()
    d_out = fn(X[:1]).shape[-1]

    def vjp(u, create_graph=False):
        Xg = X.detach().requires_grad_(True)
        Y = fn(Xg)
        return torch.autograd.grad(Y, Xg, u, create_graph=create_graph)[0]

    def matvec(v):  # J v as the gradient of u -> J^T u (the double-backward trick): plain autograd only
        with torch.enable_grad():
            u = torch.zeros(X.shape[0], d_out, dtype=X.dtype, device=X.device, requires_grad=True)
            (jv,) = torch.autograd.grad(vjp(u, create_graph=True), u, v.to(X.dtype))
        return jv.detach().to(v.dtype)

    def rmatvec(u):
        with torch.enable_grad():
            return vjp(u.to(X.dtype)).detach().to(u.dtype)

    return probes.JacobianOperator(matvec, rmatvec, batch_shape=(X.shape[0],), d_in=X.shape[1], d_out=d_out)
