"""The batched Lanczos for stacked MLP experts (``mlp_lanczos_sigma1``): sigma_1 of every
expert-local Jacobian at every point without materialising one, the J^T J product as four
batched GEMMs (``mlp_gram_product``) and the Ritz values by batched Sturm bisection. The fast
path of the MLP experts; ``spectra.lanczos_sigma1`` is the solver of any ``JacobianOperator``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..nn import gelu_grad
from ..validate import check_finite, check_positive_number, check_shape
from .experts import _check_mlp, expert_preactivations
from .spectra import SpectralResult


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


@dataclass
class _LanczosSlots:
    """The batched Lanczos state of ``mlp_lanczos_sigma1``, one slot per open matrix: slot (e, j)
    runs the Lanczos of expert e's row ``row[e, j]`` (a run of a start at a point). A matrix
    leaves at the check it passes, and ``keep`` compacts every field to the open slots at once."""

    q: torch.Tensor  # (E, m, d) the current Lanczos vector
    q_prev: torch.Tensor  # (E, m, d) the one before it
    beta: torch.Tensor  # (E, m, 1) the last off-diagonal
    a: torch.Tensor  # (E, m, h) GELU' at the slot's point
    row: torch.Tensor  # (E, m) which run and point the slot holds
    theta: torch.Tensor  # (E, m) float64, the Ritz value at the slot's last check (a lower bound)
    alphas: list = field(default_factory=list)  # per step, (E, m): the diagonal of T_k
    betas: list = field(default_factory=list)  # per step, (E, m): its off-diagonal

    def keep(self, idx: torch.Tensor) -> _LanczosSlots:
        """The slots ``idx: (E, m')`` of every expert, every field gathered alike."""

        def rows(t):
            return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))

        return _LanczosSlots(
            rows(self.q),
            rows(self.q_prev),
            rows(self.beta),
            rows(self.a),
            self.row.gather(1, idx),
            self.theta.gather(1, idx),
            [t.gather(1, idx) for t in self.alphas],
            [t.gather(1, idx) for t in self.betas],
        )


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
    ``lanczos_sigma1``). The guards: the test asks the value to stand still over
    ``check_every`` steps, after at least ``min_iter`` steps (the Krylov dimension is at least
    ``min_iter``); a start of the caller's own is always joined by ``starts`` Gaussian ones, and
    the result is the largest over all runs, so it is trapped only if every run is. Each matrix
    stops on its own test, so it gets no extra steps from slower ones in its batch. The measured
    trap rate of the defaults, and how ``min_iter = 16`` was chosen, are in docs/decisions.md;
    ``pytest --benchmark-only`` counts traps on 20 held-out problems each run. ``starts=2``
    squares the trap rate at twice the cost. After d steps the Krylov space is the whole space and
    the value is exact up to rounding whatever the start.
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
    st = _LanczosSlots(
        q,
        torch.zeros_like(q),
        torch.zeros(E, runs * N, 1, dtype=x.dtype),
        a,
        torch.arange(runs * N).repeat(E, 1),
        torch.zeros(E, runs * N, dtype=torch.float64),
    )
    open_ = torch.ones(E, runs * N, dtype=torch.bool)
    result = torch.zeros(E, runs * N, dtype=torch.float64)
    tiny = torch.finfo(x.dtype).tiny
    steps = 8 - int(math.log2(torch.finfo(x.dtype).eps))  # bisection to below the input's rounding
    k, products = 0, 0.0
    for k in range(1, d + 1):
        w = mlp_gram_product(st.q, W1, W2, st.a).addcmul_(st.beta, st.q_prev, value=-1)
        products += st.q.shape[1] / (runs * N)
        alpha = torch.linalg.vecdot(st.q, w)[..., None]
        w.addcmul_(alpha, st.q, value=-1)
        st.beta = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        st.alphas.append(alpha[..., 0])
        st.q_prev, st.q = st.q, w.div_(st.beta.clamp_min(tiny))
        if k == d or (k >= min_iter and (k - min_iter) % check_every == 0):
            A = torch.stack(st.alphas).double()  # (k, E, m): one row per Lanczos step
            b = torch.stack(st.betas).double() if st.betas else A[:0]
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
                bound = st.theta * (1 + tol)
                moving = open_ & (hi > bound)
                moving[moving.clone()] = ~_tridiagonal_below(A[:, moving], b2[:, moving], bound[moving])
                done = open_ & ~moving  # no Ritz value moved by tol: these matrices are done
                result[done.nonzero(as_tuple=True)[0], st.row[done]] = _tridiagonal_top_eigenvalue(
                    A[:, done], b2[:, done], st.theta[done], bound[done], max(8, steps + math.floor(math.log2(tol)))
                )
            if not bool(moving.any()):
                break
            Am = A[:, moving]
            lo, hi = torch.maximum(st.theta[moving], Am.amax(0)), hi[moving]
            if k == d:  # the Krylov space is the whole space: exact up to rounding
                result[moving.nonzero(as_tuple=True)[0], st.row[moving]] = _tridiagonal_top_eigenvalue(
                    Am, b2[:, moving], lo, hi, steps
                )
                break
            # a lower bound within tol / 16 of the value (if `steps` halvings get there): the next test is then
            # stricter than tol by at most that
            width = float(((hi - lo) / (lo * tol / 16)).max())
            halvings = min(steps, math.ceil(math.log2(max(width, 2)))) if math.isfinite(width) else steps
            st.theta[moving] = _tridiagonal_top_eigenvalue(Am, b2[:, moving], lo, hi, halvings, lower=True)
            m = int(moving.sum(1).max())
            if m < moving.shape[1]:  # compact: each expert's open slots first, padded with closed ones
                keep = torch.sort((~moving).to(torch.int8), dim=1, stable=True).indices[:, :m]
                st, moving = st.keep(keep), moving.gather(1, keep)
            open_ = moving
        st.betas.append(st.beta[..., 0])
    sigma = result.clamp_min(0).sqrt().reshape(E, runs, N).amax(1)
    return SpectralResult(sigma.to(x.dtype), k, True, products=products)
