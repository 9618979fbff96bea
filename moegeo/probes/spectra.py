"""Singular spectra of (batches of) Jacobians: exact, by power iteration, by Lanczos (batched in
torch, or ARPACK) and the cumulative-energy summaries of Fig. 1C-D (A.5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse.linalg
import torch

from ..validate import check_count, check_finite, check_positive_number, check_shape
from .experts import JacobianOperator


@dataclass(frozen=True)
class SpectralResult:
    """Leading singular values of a batch of operators and how they were obtained."""

    values: torch.Tensor  # (*batch,) sigma_1 estimates
    iterations: int  # iterations (power) or operator applications (Lanczos) used
    converged: bool  # every batch element met the tolerance
    vectors: torch.Tensor | None = None  # (*batch, d_in) right singular vectors, for warm starts
    #: operator products in units of one over the whole batch, where a method drops finished
    #: elements (``mlp_lanczos_sigma1``); None where every step covers the whole batch
    products: float | None = None


def singular_values(J: torch.Tensor, *, method: str = "svd") -> torch.Tensor:
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


def _start_vectors(
    op: JacobianOperator, starts: int, v0: torch.Tensor | None, generator, dtype, device=None
) -> torch.Tensor:
    """``starts`` unit start vectors per batch element, ``(starts, *batch, d_in)``: Gaussian, so
    uniformly distributed in direction, with ``v0: (*batch, d_in)`` (if given) as the first.
    Drawn on the generator's device, then moved to ``device`` (``v0``'s when given): the same
    starts on every device."""
    if starts < 1:
        raise ValueError(f"starts must be >= 1, got {starts}")
    if v0 is not None:
        check_finite(v0=v0)
        check_shape("v0", v0, (*op.batch_shape, op.d_in), " = (*batch, d_in) of the operator")
        dtype, device = v0.dtype, v0.device
    gen_device = generator.device if generator is not None else device
    V = torch.randn(starts, *op.batch_shape, op.d_in, generator=generator, dtype=dtype, device=gen_device)
    V = V.to(device) if device is not None else V
    if v0 is not None:
        V[0] = v0
    return V / V.norm(dim=-1, keepdim=True)


def _check_stopping(tol: float, max_iter, *, optional: bool = False) -> None:
    """``tol`` a finite number > 0 and ``max_iter`` an integer >= 1 (or None where ``optional``)."""
    check_positive_number("tol", tol)
    if not (optional and max_iter is None):
        check_count("max_iter", max_iter)


def _gram_apply(op: JacobianOperator, V: torch.Tensor) -> torch.Tensor:
    """J^T J applied to every start: ``(starts, *batch, d_in)`` -> same: one call for all starts
    when the operator ``broadcasts``, else one call per start (not per batch element)."""
    if op.broadcasts:
        return op.rmatvec(op.matvec(V))
    return torch.stack([op.rmatvec(op.matvec(v)) for v in V])


def power_iteration_sigma1(
    op: JacobianOperator,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    starts: int = 2,
    device=None,
) -> SpectralResult:
    """sigma_1 of every Jacobian in ``op`` by power iteration on J^T J (A.5).

    Parameters
    ----------
    op : the batch of Jacobians, ``batch_shape`` leading dims.
    tol : relative change of the estimate that counts as converged (see below); a finite number > 0.
    max_iter : iterations before giving up (``converged=False``); an integer >= 1.
    v0 : (*batch, d_in), optional
        Start of the first chain (e.g. the ``vectors`` of an earlier call); the others are random.
    generator, dtype : for the random starts (``dtype`` is ignored when ``v0`` is given).
    starts : independent chains per matrix; the result is the largest of their estimates.
    device : where the operator computes (default: torch's default device; ``v0``'s when given).

    Returns
    -------
    SpectralResult
        ``values: (*batch,)``, ``vectors: (*batch, d_in)`` of the chain that gave the value,
        ``iterations`` (each applies J^T J once per chain), ``converged``.

    Notes
    -----
    ``converged`` means only that every chain's estimate sigma = ||J v|| changed by at most a
    relative ``tol`` in the last iteration. The estimate is a Rayleigh quotient, so never above
    sigma_1. Once the iterate is dominated by v_1 (the top right singular vector) the remaining
    error is about ``tol * r / (1 - r)``, r = (sigma_2/sigma_1)^2, which is large for
    near-degenerate leading values. Before that, a start carrying little weight on v_1 stalls near
    sigma_2, where the estimate barely changes, and can pass the test there: a Gaussian start
    has weight below w on v_1 with probability about w sqrt(2 d_in / pi). Every estimate is a
    lower bound, so taking the largest over ``starts`` independent chains only helps, and the
    stall then needs every chain to stall: for random starts the probability is raised to the
    power ``starts``.
    Each chain costs one J^T J application per iteration.
    """
    _check_stopping(tol, max_iter)
    V = _start_vectors(op, starts, v0, generator, dtype, device)
    sigma = torch.zeros(V.shape[:-1], dtype=V.dtype, device=V.device)
    tiny = torch.finfo(V.dtype).tiny
    it, done = 0, False
    for it in range(1, max_iter + 1):  # noqa: B007 (the iteration count is returned)
        W = _gram_apply(op, V)
        new = (V * W).sum(-1).clamp_min(0).sqrt()  # ||J v|| for unit v
        V = W / W.norm(dim=-1, keepdim=True).clamp_min(tiny)
        done = bool(((new - sigma).abs() <= tol * new).all())
        sigma = new
        if done:
            break
    values, best = sigma.max(0)
    return SpectralResult(values, it, done, torch.take_along_dim(V, best[None, ..., None], 0)[0])


def lanczos_sigma1(
    op: JacobianOperator,
    *,
    tol: float = 1e-10,
    max_iter: int | None = None,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    starts: int = 2,
    device=None,
) -> SpectralResult:
    """sigma_1 of every Jacobian in ``op`` by Lanczos on J^T J, batched over the operator's batch.

    Parameters
    ----------
    op : the batch of Jacobians, ``batch_shape`` leading dims.
    tol : relative residual at which a run stops (see below); a finite number > 0.
    max_iter : Lanczos steps at most (an integer >= 1); defaults to ``d_in``, where the Krylov space is the
        whole space.
    v0 : (*batch, d_in), optional
        Start of the first run (e.g. a planted start); the others are random.
    generator, dtype : for the random starts (``dtype`` is ignored when ``v0`` is given).
    starts : independent Lanczos runs per matrix; the result is the largest of their values.
    device : where the operator computes (default: torch's default device; ``v0``'s when given).

    Returns
    -------
    SpectralResult
        ``values: (*batch,)``, ``iterations`` (Lanczos steps; each applies J^T J once per run),
        ``converged``: every run of every matrix stopped on its residual test, or reached d_in steps.

    Notes
    -----
    Full reorthogonalisation. A run stops when the residual of its largest Ritz pair,
    beta_j |y_j| = ||J^T J u - theta u||, is at most ``tol * theta``: theta is then within a
    relative ``tol`` of *an* eigenvalue of J^T J (so sigma within about ``tol / 2`` of a singular
    value), in practice far closer (the error is quadratic in the residual). Not necessarily of
    the largest: a Krylov space holds only what its start carries, and a start with little weight
    on v_1 (the top right singular vector) lets the Ritz value settle on sigma_2 and pass the test
    before v_1 emerges (a Gaussian start has weight below w on v_1 with probability about
    w sqrt(2 d_in / pi); about 1 in 10^4 random 64 x 64 expert Jacobians at tol = 1e-4, with
    errors up to 3%). Every Ritz value is at most sigma_1^2, so the largest over ``starts``
    independent runs is the best estimate, and it is wrong only if every run was trapped: for
    random starts the probability is raised to the power ``starts`` (none in 5 x 10^4 such
    matrices with 2 starts). At ``d_in`` steps the basis spans the whole space (barring an exact
    breakdown) and the value is exact whatever the start.
    Cost and memory scale with ``starts``: the bases are O(starts x batch x iters x d_in).
    """
    _check_stopping(tol, max_iter, optional=True)
    k_max = min(max_iter or op.d_in, op.d_in)
    q = _start_vectors(op, starts, v0, generator, dtype, device)
    shape, dtype = q.shape, q.dtype
    B = math.prod(shape[:-1])  # every run of every matrix is one batch element here
    basis = [q.reshape(B, -1)]
    alphas, betas = [], []
    theta = torch.zeros(B, dtype=dtype, device=q.device)
    active = torch.ones(B, dtype=torch.bool, device=q.device)  # Ritz value not yet converged
    eps = torch.finfo(dtype).eps
    for j in range(k_max):
        v = basis[-1]
        w = _gram_apply(op, v.reshape(shape)).reshape(B, -1)
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
            values = theta.reshape(shape[:-1]).amax(0).clamp_min(0).sqrt()
            return SpectralResult(values, j + 1, converged)
        betas.append(beta)
        basis.append(w / beta.clamp_min(torch.finfo(dtype).tiny)[:, None])
    raise AssertionError("unreachable")


def block_lanczos_top(
    op: JacobianOperator,
    k: int = 1,
    *,
    block: int = 2,
    tol: float = 1e-10,
    max_iter: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> SpectralResult:
    """The ``k`` largest singular values sigma_1 >= ... >= sigma_k of every Jacobian in ``op`` by
    block Lanczos on J^T J: a block Krylov space of ``block`` random starts per matrix, full
    reorthogonalisation and Rayleigh-Ritz on the whole basis, batched over the operator's batch.

    Parameters
    ----------
    op : the batch of Jacobians, ``batch_shape`` leading dims; an operator that ``broadcasts``
        applies J^T J to the whole block in one call (one GEMM per weight: ``swiglu_jacobian_operator``).
    k : singular values wanted, 1 <= k <= d_in.
    block : vectors per block, >= 1 (2 by default: two starts in one Krylov space, the guard of
        ``lanczos_sigma1``'s two runs at about the cost of one).
    tol : relative residual at which the k Ritz pairs of a matrix count as converged.
    max_iter : block steps at most (default: until the basis spans d_in).
    generator, dtype, device : the random starts, drawn as in ``lanczos_sigma1``.

    Returns
    -------
    SpectralResult
        ``values: (*batch, k)`` descending, ``iterations`` (block steps; each applies J^T J to
        ``block`` vectors per matrix), ``converged``: every Ritz pair i <= k of every matrix
        passed its residual test, or the basis spans d_in (then the values are exact).

    Notes
    -----
    With the basis Q (orthonormal, m columns) and the Rayleigh-Ritz matrix T = Q^T J^T J Q, the
    Krylov relation J^T J Q = Q T + Q_next R E^T holds (R from the QR of the newest block's
    reorthogonalised image), so the residual of a Ritz pair (theta, Q y) is ||R y_last||, y_last
    the last ``block`` entries of y. The k pairs stop when every residual is at most
    ``tol * theta_1``: each theta_i is then within ``tol * theta_1`` of an eigenvalue of J^T J
    (for k = 1 a relative ``tol``, sigma_1 within about ``tol / 2``; a relative test for small
    theta_i could never pass below the rounding of theta_1 in float32). The Ritz values are at
    most the true ones in order (Cauchy interlacing), and a block of b starts traps the top value
    below sigma_1 only if every start's weight on v_1 is small at once. Memory: the basis and
    the Rayleigh-Ritz matrix, allocated at their cap, O(batch x d_in x m + batch x m^2), m =
    min(d_in, block x steps): give ``max_iter`` for a large d_in.
    """
    _check_stopping(tol, max_iter, optional=True)
    check_count("block", block)
    n = op.d_in
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, d_in = {n}], got {k}")
    steps = -(-n // block) if max_iter is None else min(max_iter, -(-n // block))
    V = _start_vectors(op, block, None, generator, dtype, device)  # (b, *batch, n)
    shape, B, dev = V.shape, math.prod(op.batch_shape), V.device
    Q = torch.linalg.qr(V.reshape(block, B, n).permute(1, 2, 0)).Q  # (B, n, b)
    basis = V.new_zeros(B, n, min(n, block * steps))
    T = V.new_zeros(B, basis.shape[-1], basis.shape[-1])
    eps, values, done = torch.finfo(V.dtype).eps, None, torch.zeros(B, dtype=torch.bool, device=dev)
    m = 0
    for j in range(steps):  # noqa: B007 (the step count is returned)
        b = Q.shape[-1]
        basis[:, :, m : m + b] = Q
        W = _gram_apply(op, Q.permute(2, 0, 1).reshape(b, *shape[1:])).reshape(b, B, n).permute(1, 2, 0)
        m += b
        Qm = basis[:, :, :m]
        T[:, :m, m - b : m] = Qm.transpose(1, 2) @ W
        T[:, m - b : m, : m - b] = T[:, : m - b, m - b : m].transpose(1, 2)
        evals, evecs = torch.linalg.eigh(T[:, :m, :m])  # ascending
        top = min(k, m)
        values = evals.flip(-1)[:, :top]
        if m == n:  # the basis spans d_in: the values are exact
            done = torch.ones_like(done)
            break
        for _ in range(2):  # full reorthogonalisation; twice is enough
            W = W - Qm @ (Qm.transpose(1, 2) @ W)
        Qn, R = torch.linalg.qr(W)  # W = Qn R: J^T J Q = Q T + Qn R E^T
        y_last = evecs.flip(-1)[:, m - b : m, :top]  # (B, b, top)
        resid = (R @ y_last).norm(dim=1)  # (B, top)
        scale = values[:, :1].abs().clamp_min(torch.finfo(V.dtype).tiny)  # theta_1: an absolute test for all k
        done = (top == k) & (resid <= (tol + 10 * eps) * scale).all(-1)
        if bool(done.all()) or m == basis.shape[-1]:  # converged, or the step cap
            break
        for _ in range(2):  # directions W lacked (a breakdown) stay orthogonal too
            Qn = Qn - Qm @ (Qm.transpose(1, 2) @ Qn)
        take = min(b, basis.shape[-1] - m)  # the last block may be partial: a basis of the range
        Q = torch.linalg.qr(Qn if take == b else torch.linalg.svd(Qn, full_matrices=False).U[:, :, :take]).Q
    if values.shape[-1] < k:  # the step cap stopped the basis below k columns
        values = torch.nn.functional.pad(values, (0, k - values.shape[-1]))
    return SpectralResult(values.clamp_min(0).sqrt().reshape(*op.batch_shape, k), j + 1, bool(done.all()))


def arpack_sigma1(op: JacobianOperator, *, tol: float = 1e-10, dtype: torch.dtype = torch.float64) -> SpectralResult:
    """sigma_1 of a single matrix-free Jacobian by ARPACK's implicitly restarted Lanczos
    (``scipy.sparse.linalg.svds``): the independent reference for ``lanczos_sigma1``.

    ``op`` must hold exactly one matrix (batch of size 1) and compute in ``dtype``: ARPACK's
    float64 vectors are passed to it in ``dtype``, and sigma_1 comes back in ``dtype`` (so a
    float64 operator keeps the accuracy ``tol`` asks for, whatever torch's default dtype).
    Returns ``values: (*batch,)`` and ``iterations``, the operator applications used.
    """
    check_positive_number("tol", tol, allow_zero=True)  # 0: ARPACK's machine precision
    if math.prod(op.batch_shape) != 1:
        raise ValueError(f"arpack_sigma1 takes one matrix; op has batch shape {op.batch_shape}")
    calls = [0]
    shape = (*op.batch_shape, -1)

    def apply(f):
        def g(v):
            calls[0] += 1
            return f(torch.as_tensor(np.asarray(v), dtype=dtype).reshape(shape)).reshape(-1).double().numpy()

        return g

    lin = scipy.sparse.linalg.LinearOperator(
        (op.d_out, op.d_in), matvec=apply(op.matvec), rmatvec=apply(op.rmatvec), dtype=np.float64
    )
    s = scipy.sparse.linalg.svds(lin, k=1, tol=tol, return_singular_vectors=False, solver="arpack")
    return SpectralResult(torch.tensor(float(s[0]), dtype=dtype).reshape(op.batch_shape), calls[0], True)


def energy_curve(s: torch.Tensor) -> torch.Tensor:
    """Normalised cumulative spectral energy E_k = sum_{j<=k} s_j^2 / sum_j s_j^2 (Fig. 1D).

    Energy is the squared singular value (the Frobenius energy). ``s: (*, n) -> (*, n)``. A
    spectrum of zero energy (every s_j = 0: a zero matrix) has no energy curve: ``ValueError``
    naming how many there are (``moegeo.rows`` leaves such experts out, with ``undefined`` rows).
    """
    check_finite(s=s)
    e = s.square().cumsum(-1)
    total = e[..., -1:]
    zero = int((total <= 0).sum())
    if zero:
        raise ValueError(
            f"s holds {zero} spectrum(s) of zero energy (every singular value 0) out of "
            f"{total.numel()}: their energy curve is undefined; expected a spectrum with some s_j > 0"
        )
    return e / total


def k_at(curve: torch.Tensor, tau: float) -> torch.Tensor:
    """Components needed to reach ``tau`` on a cumulative curve (k@tau, A.4).

    scikit-learn's rule: ``searchsorted(curve, tau, side="right") + 1``, capped at the length.
    ``curve: (*, n) -> (*,)`` integer. ``curve`` must be finite (``ValueError`` otherwise).
    """
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    check_finite(curve=curve)
    tau_t = torch.full((*curve.shape[:-1], 1), tau, dtype=curve.dtype, device=curve.device)
    k = torch.searchsorted(curve.contiguous(), tau_t, right=True).squeeze(-1) + 1
    return k.clamp_max(curve.shape[-1])


def value_at(curve: torch.Tensor, k: int) -> torch.Tensor:
    """The cumulative curve at k components (cum-var@k, B.5): ``curve[..., k-1]``."""
    if not 1 <= k <= curve.shape[-1]:
        raise ValueError(f"k must be in [1, {curve.shape[-1]}], got {k}")
    return curve[..., k - 1]
