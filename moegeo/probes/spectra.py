"""Singular spectra of (batches of) Jacobians: exact, by power iteration, by Lanczos (batched in
torch, or ARPACK) and the cumulative-energy summaries of Fig. 1C-D (A.5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse.linalg
import torch

from ..nn import gelu_grad
from ..validate import check_count, check_finite, check_positive_number, check_shape
from .experts import JacobianOperator, _check_mlp, expert_preactivations


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


def _start_vectors(op: JacobianOperator, starts: int, v0: torch.Tensor | None, generator, dtype) -> torch.Tensor:
    """``starts`` unit start vectors per batch element, ``(starts, *batch, d_in)``: Gaussian, so
    uniformly distributed in direction, with ``v0: (*batch, d_in)`` (if given) as the first."""
    if starts < 1:
        raise ValueError(f"starts must be >= 1, got {starts}")
    if v0 is not None:
        check_finite(v0=v0)
        check_shape("v0", v0, (*op.batch_shape, op.d_in), " = (*batch, d_in) of the operator")
        dtype = v0.dtype
    V = torch.randn(starts, *op.batch_shape, op.d_in, generator=generator, dtype=dtype)
    if v0 is not None:
        V[0] = v0
    return V / V.norm(dim=-1, keepdim=True)


def _check_stopping(tol: float, max_iter, *, optional: bool = False) -> None:
    """``tol`` a finite number > 0 and ``max_iter`` an integer >= 1 (or None where ``optional``)."""
    check_positive_number("tol", tol)
    if not (optional and max_iter is None):
        check_count("max_iter", max_iter)


def _gram_apply(op: JacobianOperator, V: torch.Tensor) -> torch.Tensor:
    """J^T J applied to every start: ``(starts, *batch, d_in)`` -> same. The operator takes exactly
    its own batch shape, hence one call per start (not per batch element)."""
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
    V = _start_vectors(op, starts, v0, generator, dtype)
    sigma = torch.zeros(V.shape[:-1], dtype=V.dtype)
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
    q = _start_vectors(op, starts, v0, generator, dtype)
    shape, dtype = q.shape, q.dtype
    B = math.prod(shape[:-1])  # every run of every matrix is one batch element here
    basis = [q.reshape(B, -1)]
    alphas, betas = [], []
    theta = torch.zeros(B, dtype=dtype)
    active = torch.ones(B, dtype=torch.bool)  # Ritz value not yet converged
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


def _tridiagonal_below(alpha: torch.Tensor, b2: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Whether every eigenvalue of each symmetric tridiagonal matrix (diagonal ``alpha: (k, B)``,
    one row per position, squared off-diagonal ``b2: (k - 1, B)``, each at least the smallest
    normal float, float64) lies below ``s: (B,)``: exactly when every pivot of the LDL^T
    factorisation of T - s I is negative (Sylvester's law of inertia).

    One tensor operation per row (the pivot recurrence as one ``addcdiv`` into a row of the
    pivots), then one maximum over all of them, since the pass is bound by per-operation
    overhead at B of a few thousand. A pivot that is exactly zero counts as not negative and
    makes the next one infinite (as if it were +tiny): at worst a value equal to ``s`` is
    reported as not below it.
    """
    pivots = alpha - s
    for i, b in enumerate(b2, 1):
        torch.addcdiv(pivots[i], b, pivots[i - 1], value=-1, out=pivots[i])
    return pivots.amax(0) < 0


SMALL_TRIDIAGONAL_BATCH = 256  # speed only: up to this many matrices one LAPACK call each is faster than
# the bisection's tensor operations, one per row and halving (measured on the 2-core machine at k = 16, 24
# and 36 with 25 halvings: at B = 8, 0.1-0.3 ms against 2.5-5 ms; at B = 128, 0.9-3.9 ms against 2.7-5.1 ms;
# at B = 256, 2.0-8.2 ms against 2.6-4.6 ms; at B = 1024, 2.9-7.0 ms against 3.0-6.7 ms)


def _tridiagonal_top_eigenvalue(
    alpha: torch.Tensor, b2: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, steps: int, lower: bool = False
) -> torch.Tensor:
    """Largest eigenvalue of every symmetric tridiagonal matrix (as ``_tridiagonal_below``) by
    Sturm-sequence bisection of the bracket ``[lo, hi]`` (each ``(B,)``), vectorised over the
    batch: ``steps`` halvings, then the bracket's middle, or (``lower``) its lower end, a lower
    bound. A batch of at most SMALL_TRIDIAGONAL_BATCH goes to LAPACK (``eigvalsh``) instead,
    which is exact to rounding whatever the bracket."""
    if alpha.shape[1] <= SMALL_TRIDIAGONAL_BATCH:
        off = torch.diag_embed(b2.T.sqrt(), offset=1)
        return torch.linalg.eigvalsh(torch.diag_embed(alpha.T) + off + off.transpose(1, 2))[:, -1]
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        below = _tridiagonal_below(alpha, b2, mid)
        hi, lo = torch.where(below, mid, hi), torch.where(below, lo, mid)
    return lo if lower else 0.5 * (lo + hi)


def mlp_gram_product(v: torch.Tensor, W1: torch.Tensor, W2: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """J^T J v for stacked MLP experts without materialising J = W2 diag(a) W1 (A.2): four batched
    GEMMs, W1 v, then W2 (a .), W2^T u, W1^T (a .), with the elementwise products in place.

    ``v: (E, M, d)`` one vector per row, ``W1: (E, h, d)``, ``W2: (E, d_out, h)``, ``a: (E, M, h)``
    the GELU slopes GELU'(W1 x + b1) at each row's point (``gelu_grad(expert_preactivations(...))``).
    Returns ``(E, M, d)``. 4 d h multiply-adds per row. With few rows (M = 8 at d = 1024) the GEMMs
    are skinny and run well below a square sgemm's rate; reading the weights is not what bounds
    them (``benchmarks/test_bench_spectra.py`` times both)."""
    u = torch.bmm(torch.bmm(torch.bmm(v, W1.transpose(1, 2)).mul_(a), W2.transpose(1, 2)), W2).mul_(a)
    return torch.bmm(u, W1)


def mlp_lanczos_sigma1(
    W1: torch.Tensor,
    b1: torch.Tensor,
    W2: torch.Tensor,
    x: torch.Tensor,
    *,
    tol: float = 1e-7,
    min_iter: int = 16,
    check_every: int = 4,
    starts: int = 1,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SpectralResult:
    """sigma_1 of every expert-local Jacobian J_e(x_i) = W2_e diag(GELU'(W1_e x_i + b1_e)) W1_e (A.2)
    of stacked MLP experts, by Lanczos on J^T J, without materialising J.

    Parameters
    ----------
    W1 : (E, h, d), b1 : (E, h), W2 : (E, d_out, h)
    x : (N, d) or (E, N, d)
    tol : a matrix stops once its Ritz value moved by at most a relative ``tol`` (of sigma_1^2)
        over the last ``check_every`` steps; the stopped ones leave the batch.
    min_iter : Lanczos steps before the first check (the Krylov dimension is at least this,
        and no matrix stops before ``min(min_iter + check_every, d)`` steps).
    check_every : steps between checks.
    starts : independent Gaussian starts per matrix, run in the same batch; the result is the
        largest of all runs' values.
    v0 : (E, N, d), optional
        A start of your own for every matrix (e.g. a planted one), run *in addition to* the
        ``starts`` Gaussian ones: a given start is never trusted alone unless ``starts=0``.
    generator : for the Gaussian starts.

    Returns
    -------
    SpectralResult
        ``values: (E, N)`` sigma_1 of J_e(x_i) in x's dtype, ``iterations`` (Lanczos steps of
        the matrix that ran longest; each step applies J^T J once to every start of every
        matrix still in the batch, and to the padding slots), ``products`` (those products in
        units of one over the whole batch), ``converged`` (always: every matrix passed its test
        before ``d`` steps, or ``d`` steps were run).

    Notes
    -----
    Each J^T J product is four batched GEMMs over all points of an expert at once (W1 v, then
    W2 (a .), W2^T u, W1^T (a .)): 4 d h multiply-adds per point and start, memory O(E N (h + d)).
    Materialising J and J^T J instead costs d^2 h + d^3 per point, as much as 24 such steps at the
    paper's d = 64, h = 128. Plain three-term Lanczos, no reorthogonalisation: in finite precision
    that only repeats converged Ritz values (Paige), and the largest Ritz value never exceeds
    sigma_1^2 by more than rounding. The Ritz value is the largest eigenvalue of the tridiagonal
    T_k, found by Sturm-sequence bisection for the whole batch at once (no per-matrix LAPACK call;
    a batch of at most SMALL_TRIDIAGONAL_BATCH matrices, where LAPACK is faster, uses it instead);
    it can only grow with k (Cauchy interlacing), so a check is one Sturm pass at
    theta_prev (1 + tol), where theta_prev, the last check's value, is kept as a lower bound,
    within tol / 16 of it when at most ``8 - log2(eps)`` halvings of its Gershgorin bracket get
    there (the test is then never looser than tol; on the LAPACK path theta_prev is the value
    itself, up to float64 rounding). A matrix also passes when its Gershgorin bound is at most
    theta_prev (1 + tol) (a zero Jacobian's Sturm test at 0 cannot pass). A matrix that passes
    leaves: its Ritz value is refined to within rounding of the input's dtype and returned, and
    the batch is compacted to the matrices still moving, each expert's padded with stopped ones
    to the most any expert has, so the late steps run only the slow matrices and that padding.
    Products that overflow the input's dtype (finite inputs, sigma_1^2 beyond its range) raise
    ``ValueError`` rather than return NaN.

    A Ritz value settles on sigma_2^2 for a while when the start has little weight on v_1,
    the top right singular vector, and a test on its movement can pass there (see
    ``lanczos_sigma1``: a residual test every step, at tol = 1e-4, does so on about 1 in 10^4
    random 64 x 64 expert Jacobians). The guards: the test asks the value to stand still over
    ``check_every`` steps, after at least ``min_iter`` steps (the Krylov dimension is at least
    ``min_iter``); a start of the caller's own is always joined by ``starts`` Gaussian ones, and
    the result is the largest over all runs, so it is trapped only if every run is. Each matrix
    stops on its own test, so it gets no extra steps from slower ones in its batch: with the
    earlier default min_iter = 12 that trapped 7 of 819,200 paper-size Jacobians by more than
    1e-4 (errors up to 1.2e-2; the same runs replayed with the Ritz values by LAPACK, seeds
    200-399, tol = 1e-6), and 16 traps none of them. There a matrix ran 20.0 steps on average
    (its own, padding not counted) against 24.2 under the whole-batch test with min_iter = 12,
    where every matrix ran until the slowest stopped. Measured with min_iter = 16, one Gaussian
    start and tol = 1e-6 (the benchmarks'; the default is 1e-7) at the paper's size (E = 8,
    d = 64, h = 128, N = 512, weights and points drawn as in ``benchmarks/problems.py``, seeds
    1-60 and 200-399): 0 of 1,064,960 Jacobians off by more than 1e-4 (largest error 2.76e-7), a
    one-start trap rate below 2.9e-6 per matrix (95%, rule of three), though min_iter = 16 was
    chosen on seeds 200-399; the held-out count is ``pytest --benchmark-only``'s, on 20 further
    problems each run. ``starts=2`` squares that rate at twice the cost. After d steps
    the Krylov space is the whole space and the value is exact up to rounding whatever the start.
    """
    _check_mlp(W1, b1, W2, x)
    if starts < 0 or min_iter < 1 or check_every < 1:
        raise ValueError(f"starts must be >= 0, min_iter and check_every >= 1, got {starts}, {min_iter}, {check_every}")
    runs = starts + (v0 is not None)
    if runs < 1:
        raise ValueError("starts=0 needs a start of your own (v0): at least one run per matrix")
    check_positive_number("tol", tol)
    E, N, d = W1.shape[0], x.shape[-2], W1.shape[2]
    a = gelu_grad(expert_preactivations(W1, b1, x)).repeat(1, runs, 1)  # (E, R N, h): runs stacked
    q = torch.randn(E, starts, N, d, generator=generator, dtype=x.dtype)
    if v0 is not None:
        check_finite(v0=v0)
        check_shape("v0", v0, (E, N, d), f" = (E, N, d) = ({E}, {N}, {d})")
        q = torch.cat([v0.to(x.dtype)[:, None], q], 1)
    q = (q / q.norm(dim=-1, keepdim=True)).reshape(E, runs * N, d)
    q_prev, beta = torch.zeros_like(q), torch.zeros(E, runs * N, 1, dtype=x.dtype)
    # the state lives in slots (E, m): slot (e, j) runs the Lanczos of expert e's row row[e, j];
    # a matrix leaves at the check it passes, and the slots are compacted to the open ones
    row = torch.arange(runs * N).repeat(E, 1)
    open_ = torch.ones(E, runs * N, dtype=torch.bool)
    alphas, betas = [], []
    theta = torch.zeros(E, runs * N, dtype=torch.float64)  # each slot's Ritz value at its last check
    result = torch.zeros(E, runs * N, dtype=torch.float64)
    tiny = torch.finfo(x.dtype).tiny
    steps = 8 - int(math.log2(torch.finfo(x.dtype).eps))  # bisection to below the input's rounding
    k, products = 0, 0.0
    for k in range(1, d + 1):
        w = mlp_gram_product(q, W1, W2, a).addcmul_(beta, q_prev, value=-1)
        products += q.shape[1] / (runs * N)
        alpha = torch.linalg.vecdot(q, w)[..., None]
        w.addcmul_(alpha, q, value=-1)
        beta = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        alphas.append(alpha[..., 0])
        q_prev, q = q, w.div_(beta.clamp_min(tiny))
        if k == d or (k >= min_iter and (k - min_iter) % check_every == 0):
            A = torch.stack(alphas).double()  # (k, E, m): one row per Lanczos step
            b = torch.stack(betas).double() if betas else A[:0]
            if not (bool(torch.isfinite(A[:, open_]).all()) and bool(torch.isfinite(b[:, open_]).all())):
                raise ValueError(
                    f"Lanczos overflowed in {x.dtype}: the J^T J products of finite inputs are not finite "
                    "(sigma_1^2 beyond the dtype's range); rescale the weights or pass float64 tensors"
                )
            b2 = b.square().clamp_min_(torch.finfo(torch.float64).tiny)
            radius = torch.nn.functional.pad(b, (0, 0, 0, 0, 0, 1)) + torch.nn.functional.pad(b, (0, 0, 0, 0, 1, 0))
            hi = (A + radius).amax(0)  # Gershgorin: no eigenvalue of T_k above it
            moving = open_
            if k > min_iter:  # theta, the value at the last check, is a lower bound (interlacing)
                bound = theta * (1 + tol)
                moving = open_ & (hi > bound)
                moving[moving.clone()] = ~_tridiagonal_below(A[:, moving], b2[:, moving], bound[moving])
                done = open_ & ~moving  # no Ritz value moved by tol: these matrices are done
                result[done.nonzero(as_tuple=True)[0], row[done]] = _tridiagonal_top_eigenvalue(
                    A[:, done], b2[:, done], theta[done], bound[done], max(8, steps + math.floor(math.log2(tol)))
                )
            if not bool(moving.any()):
                break
            Am = A[:, moving]
            lo, hi = torch.maximum(theta[moving], Am.amax(0)), hi[moving]
            if k == d:  # the Krylov space is the whole space: exact up to rounding
                result[moving.nonzero(as_tuple=True)[0], row[moving]] = _tridiagonal_top_eigenvalue(
                    Am, b2[:, moving], lo, hi, steps
                )
                break
            # a lower bound within tol / 16 of the value (if `steps` halvings get there): the next test is then
            # stricter than tol by at most that
            width = float(((hi - lo) / (lo * tol / 16)).max())
            halvings = min(steps, math.ceil(math.log2(max(width, 2)))) if math.isfinite(width) else steps
            theta[moving] = _tridiagonal_top_eigenvalue(Am, b2[:, moving], lo, hi, halvings, lower=True)
            m = int(moving.sum(1).max())
            if m < moving.shape[1]:  # compact: each expert's open slots first, padded with closed ones
                keep = torch.sort((~moving).to(torch.int8), dim=1, stable=True).indices[:, :m]
                q, q_prev, beta, a = (
                    t.gather(1, keep[..., None].expand(-1, -1, t.shape[-1])) for t in (q, q_prev, beta, a)
                )
                row, theta, moving = row.gather(1, keep), theta.gather(1, keep), moving.gather(1, keep)
                alphas, betas = [t.gather(1, keep) for t in alphas], [t.gather(1, keep) for t in betas]
            open_ = moving
        betas.append(beta[..., 0])
    sigma = result.clamp_min(0).sqrt().reshape(E, runs, N).amax(1)
    return SpectralResult(sigma.to(x.dtype), k, True, products=products)


def energy_curve(s: torch.Tensor) -> torch.Tensor:
    """Normalised cumulative spectral energy E_k = sum_{j<=k} s_j^2 / sum_j s_j^2 (Fig. 1D).

    Energy is the squared singular value (the Frobenius energy). ``s: (*, n) -> (*, n)``. A
    spectrum of zero energy (every s_j = 0: a zero matrix) has no energy curve: ``ValueError``
    naming how many there are (``moegeo.frame`` leaves such experts out, with ``undefined`` rows).
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
    tau_t = torch.full((*curve.shape[:-1], 1), tau, dtype=curve.dtype)
    k = torch.searchsorted(curve.contiguous(), tau_t, right=True).squeeze(-1) + 1
    return k.clamp_max(curve.shape[-1])


def value_at(curve: torch.Tensor, k: int) -> torch.Tensor:
    """The cumulative curve at k components (cum-var@k, B.5): ``curve[..., k-1]``."""
    if not 1 <= k <= curve.shape[-1]:
        raise ValueError(f"k must be in [1, {curve.shape[-1]}], got {k}")
    return curve[..., k - 1]
