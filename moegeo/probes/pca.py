"""Routing-weighted PCA of the hidden states entering an expert (A.4, B.5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validate import check_expert_mass, check_finite, check_weights
from .spectra import k_at, value_at

#: points whose total variance is at most (NO_VARIANCE_ULPS x the machine epsilon of their dtype)^2
#: times their second moment have no variance but rounding (identical points computed along
#: different paths; exactly 0 for a single point): their explained variance is undefined
NO_VARIANCE_ULPS = 256
#: the same margin for 16-bit points (bfloat16, float16; a checkpoint's forward pass): 256 ulps
#: of bfloat16 (eps 2^-7) would exceed the values themselves and leave every site undefined;
#: 4 ulps puts the floor at 0.1% of the second moment for bfloat16 (1.5e-5 for float16)
NO_VARIANCE_ULPS_16BIT = 4


@dataclass(frozen=True)
class PCAResult:
    """Weighted PCA of one or more experts (A.4/B.5); leading dims are the experts'."""

    mean: torch.Tensor  # (*, D) weighted mean mu_e
    eigenvalues: torch.Tensor  # (*, D) lambda_1 >= ... >= lambda_D of C_e
    #: (*, D, D) eigenvectors of C_e, column i for lambda_i (``vectors=True``); with fewer points than
    #: dimensions (N < D) only the first N, (*, D, N): the other eigenvalues are 0
    components: torch.Tensor | None = None
    #: (*,) the total variance at or below which the points have no variance but rounding
    #: (``NO_VARIANCE_ULPS``); None: only an exactly zero total is none
    floor: torch.Tensor | None = None

    @property
    def total_variance(self) -> torch.Tensor:
        """sum_i lambda_i, the trace of C_e: ``(*,)``."""
        return self.eigenvalues.clamp_min(0).sum(-1)

    @property
    def has_variance(self) -> torch.Tensor:
        """Whether each expert's points vary beyond rounding (``floor``), ``(*,)`` bool: where
        not, the ratios below are undefined."""
        return self.total_variance > (0 if self.floor is None else self.floor)

    def __getitem__(self, index) -> PCAResult:
        """The PCA of a subset of the leading (expert) dimensions, e.g. ``pca[pca.has_variance]``."""
        return PCAResult(
            self.mean[index],
            self.eigenvalues[index],
            None if self.components is None else self.components[index],
            None if self.floor is None else self.floor[index],
        )

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        """e_i = lambda_i / sum_j lambda_j (A.4). ``ValueError`` where the points have no variance
        (``has_variance``): select the others first (``pca[pca.has_variance]``)."""
        none = torch.nonzero(~self.has_variance.reshape(-1)).flatten().tolist()
        if none:
            listed = f"{none[:8]}{' ...' if len(none) > 8 else ''}"
            raise ValueError(
                f"the points of expert(s) {listed} (flat index) have no "
                "variance (total variance at rounding level, e.g. one point or identical points): their "
                "explained variance is undefined; select the experts with pca[pca.has_variance]"
            )
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

    def subspace(self, r: int) -> torch.Tensor:
        """Orthonormal basis of the top-r principal subspace, the expert's local chart.

        ``(*, D, r)``: the first r columns of ``components`` (eigenvalues lambda_1..lambda_r),
        completed by a QR where ``components`` holds fewer (the Gram route, N < r).
        Only the span is defined, not the basis (eigenvector signs are arbitrary), and the span
        itself is unique only when lambda_r > lambda_{r+1}. Feed it to ``moegeo.grassmann``.
        """
        if self.components is None:
            raise ValueError("this PCA was computed without eigenvectors: call weighted_pca(h, w, vectors=True)")
        C = self.components
        D = C.shape[-2]
        if not 1 <= r <= D:
            raise ValueError(f"r must be in [1, D] = [1, {D}], got {r}")
        if r > C.shape[-1]:  # the Gram route kept N < r columns: directions of eigenvalue 0 complete them
            Q, R = torch.linalg.qr(C, mode="complete")
            C = torch.cat([C, Q[..., C.shape[-1] :]], -1)
        return C[..., :r]


#: ``weighted_pca(method="auto")`` takes the Gram route for fewer points than dimensions only
#: above this width (a checkpoint's 2048-4096): the settings (D <= 256) keep the covariance route
GRAM_MIN_D = 1024


def gram_route(N: int, D: int) -> bool:
    """Whether ``weighted_pca(method="auto")`` of N points in D dimensions takes the Gram route."""
    return N < D and D > GRAM_MIN_D


def weighted_pca(h: torch.Tensor, w: torch.Tensor, *, vectors: bool = False, method: str = "auto") -> PCAResult:
    """Weighted PCA with weighted mean and covariance normalised by N_e = sum w (A.4/B.5).

    ``h: (*, N, D)`` hidden states, ``w: (*, N)`` non-negative sample weights (leading dims
    broadcast, e.g. ``h: (N, D)`` shared with ``w: (E, N)``). Computed in float64; with fewer
    points than dimensions (N < D) and D above ``GRAM_MIN_D``, or ``method="gram"``, through the
    Gram matrices of each expert's points (``components`` then ``(*, D, N)``); ``method=
    "covariance"`` always through the D x D covariance.
    Scaling all weights leaves the result unchanged. The eigenvalues come descending; with
    ``vectors=True`` also their eigenvectors (``components: (*, D, D)``), whose leading columns
    span the expert subspaces (eigenvectors cost several times the eigenvalues at large D).
    ``floor`` is set from h's own dtype (``NO_VARIANCE_ULPS``, ``NO_VARIANCE_ULPS_16BIT``), so pass h as it was computed:
    the explained variance of points without variance (constant h, one point) is a
    ``ValueError``, not a number (``PCAResult.has_variance``).
    """
    check_finite(h=h)
    check_weights("w", w)
    if h.shape[-2] != w.shape[-1]:
        raise ValueError(
            f"h has {h.shape[-2]} samples (shape {tuple(h.shape)}) but w has {w.shape[-1]} (shape {tuple(w.shape)})"
        )
    eps = torch.finfo(h.dtype).eps
    ulps = NO_VARIANCE_ULPS_16BIT if torch.finfo(h.dtype).bits == 16 else NO_VARIANCE_ULPS
    h, w = h.double(), w.double()
    mass = w.sum(-1)
    check_expert_mass(mass.reshape(-1))
    p = w / mass[..., None]
    mu = torch.einsum("...n,...nd->...d", p, h)
    c = h - mu[..., None, :]
    N, D = c.shape[-2:]
    if method not in ("auto", "gram", "covariance"):
        raise ValueError(f"method must be 'auto', 'gram' or 'covariance', got {method!r}")
    if method == "gram" or (method == "auto" and gram_route(N, D)):
        return _pca_from_gram(p, c, mu, (ulps * eps) ** 2, vectors)
    cov = torch.einsum("...n,...nd,...nk->...dk", p, c, c)
    second = mu.square().sum(-1) + cov.diagonal(dim1=-2, dim2=-1).sum(-1)  # weighted mean of ||h||^2
    floor = (ulps * eps) ** 2 * second
    if not vectors:
        return PCAResult(mean=mu, eigenvalues=torch.linalg.eigvalsh(cov).flip(-1), floor=floor)
    eig, vec = torch.linalg.eigh(cov)  # ascending; flipped so column i belongs to lambda_i
    return PCAResult(mean=mu, eigenvalues=eig.flip(-1), components=vec.flip(-1), floor=floor)


def _pca_from_gram(p: torch.Tensor, c: torch.Tensor, mu: torch.Tensor, rel_floor: float, vectors: bool) -> PCAResult:
    """``weighted_pca`` for fewer points than dimensions (N < D: a checkpoint's routed tokens at
    width 2048-4096): with Y = diag(sqrt(p)) c the covariance is C = Y^T Y, whose nonzero
    eigenvalues are those of the Gram matrix K = Y Y^T of the points with positive weight (one
    eigensolve per expert, of its routed points only: the zero rows of the others would make K
    highly degenerate, where LAPACK's eigh can fail), with eigenvectors Y^T u / sqrt(lambda). The
    other eigenvalues are 0 and their directions arbitrary: ``components`` holds the first N,
    ``(*, D, N)`` orthonormal (a reduced QR, which also gives directions to the eigenvalues at
    rounding level), in O(N^2 D) instead of an O(D^3) eigensolve."""
    Y = p.sqrt()[..., None] * c  # (*, N, D)
    N, D = Y.shape[-2:]
    flat_p, flat_Y = p.expand(Y.shape[:-1]).reshape(-1, N), Y.reshape(-1, N, D)
    lam = Y.new_zeros(flat_Y.shape[0], N)
    V = Y.new_zeros(flat_Y.shape[0], D, N) if vectors else None
    for b in range(flat_Y.shape[0]):
        Yb = flat_Y[b, flat_p[b] > 0]  # (N_b, D)
        values, U = torch.linalg.eigh(Yb @ Yb.T)  # ascending
        values, U = values.flip(-1), U.flip(-1)
        lam[b, : len(values)] = values
        if vectors:  # directions of lambda at rounding level stay zero: the QR below completes them
            keep = values > len(values) * torch.finfo(values.dtype).eps * values[:1].clamp_min(0)
            kept = (Yb.T @ U[:, keep]) / values[keep].sqrt()  # keep is a prefix: the values descend
            V[b, :, : kept.shape[1]] = kept
    lam = lam.reshape(*Y.shape[:-2], N)
    eigenvalues = torch.nn.functional.pad(lam, (0, D - N))
    floor = rel_floor * (mu.square().sum(-1) + lam.clamp_min(0).sum(-1))  # the covariance route's: trace C = trace K
    if not vectors:
        return PCAResult(mean=mu, eigenvalues=eigenvalues, floor=floor)
    Q, R = torch.linalg.qr(V.reshape(*Y.shape[:-2], D, N))  # V up to column signs where it is not zero
    Q = Q * torch.where(R.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(Q.dtype)[..., None, :]
    return PCAResult(mean=mu, eigenvalues=eigenvalues, components=Q, floor=floor)
