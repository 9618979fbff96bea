"""Grassmann geometry of expert subspaces: principal angles, distances and a random-subspace null.

The "Grassmann" step of the Jacobian-PCA-Grassmann framework (geometric asymmetry paper,
abstract: routed representations "occupy distinct but partially overlapping subspaces"). An
expert's subspace is the span of an orthonormal basis ``U: (D, r)``, e.g.
``weighted_pca(h, g.T).subspace(r)`` stacked over experts as ``(E, D, r)``.

Definitions, for ``U: (D, r)``, ``V: (D, s)`` and m = min(r, s) principal angles
0 <= theta_1 <= ... <= theta_m <= pi/2 (Björck & Golub 1973):

- geodesic distance   d_g = ||theta||_2, the arc length on the Grassmannian (Edelman, Arias &
  Smith 1998); in [0, sqrt(m) pi/2].
- chordal distance    d_c = ||sin theta||_2, the projection distance; for r = s it equals
  ||P_U - P_V||_F / sqrt(2) with P_U = U U^T (no further normalisation); in [0, sqrt(m)].
- overlap index       o = mean_i cos^2 theta_i = ||U^T V||_F^2 / m; 1 when one subspace contains
  the other, 0 when they are orthogonal, r s / (D m) on average for random subspaces.

Computed in float64. A function here never trains, caches or plots.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..validate import check_finite

#: tolerance on max |U^T U - I| for a basis to count as orthonormal: float32 QR or eigh output
#: is orthonormal to ~1e-7, and the angles inherit an error of that order.
ORTHONORMAL_ATOL = 1e-6

STATISTICS = ("geodesic", "chordal", "overlap")


# --------------------------------------------------------------------------- validation
def _check_basis(name: str, U: torch.Tensor, atol: float) -> torch.Tensor:
    """``U: (*, D, r)`` finite, r <= D, U^T U = I within ``atol``; returned in float64."""
    check_finite(**{name: U})
    if U.dim() < 2:
        raise ValueError(f"{name} must be a basis of shape (*, D, r), got {tuple(U.shape)}")
    D, r = U.shape[-2:]
    if not 1 <= r <= D:
        raise ValueError(
            f"{name} has r = {r} columns in D = {D} dimensions; a basis of a subspace of R^D needs 1 <= r <= D"
        )
    U = U.double()
    err = (U.transpose(-1, -2) @ U - torch.eye(r, dtype=U.dtype, device=U.device)).abs().max().item()
    if err > atol:
        raise ValueError(
            f"{name} must have orthonormal columns (U^T U = I): max |U^T U - I| = {err:.3g} > atol = {atol:g}; "
            "orthonormalise it first, e.g. torch.linalg.qr(U).Q"
        )
    return U


def _check_pair(U: torch.Tensor, V: torch.Tensor, atol: float) -> tuple[torch.Tensor, torch.Tensor]:
    U, V = _check_basis("U", U, atol), _check_basis("V", V, atol)
    if U.shape[-2] != V.shape[-2]:
        raise ValueError(
            f"U and V must live in the same R^D: U has D = {U.shape[-2]} (shape {tuple(U.shape)}), V has D = {V.shape[-2]} (shape {tuple(V.shape)})"
        )
    return U, V


# --------------------------------------------------------------------------- principal angles
def principal_angles(U: torch.Tensor, V: torch.Tensor, *, atol: float = ORTHONORMAL_ATOL) -> torch.Tensor:
    """Principal angles between span(U) and span(V), ascending.

    cos theta_i are the singular values of U^T V (Björck & Golub 1973). As in
    ``scipy.linalg.subspace_angles`` (Knyazev & Argentati 2002), angles with cos^2 theta >= 1/2
    are taken from the sines, the singular values of (I - U U^T) V, because arccos near 1 loses
    half the digits (an angle of 1e-9 would come out as 0). Unlike scipy 1.17, which pairs the
    cosines with the wrong angles when small and large angles mix and then returns 0 for such a
    1e-9 angle, each angle here uses its own sine; and the order is ascending, scipy's descending.

    Parameters
    ----------
    U : (*, D, r), V : (*, D, s)
        Orthonormal bases (max |U^T U - I| <= ``atol``); leading dimensions broadcast.
    atol : tolerance of the orthonormality check.

    Returns
    -------
    theta : (*, min(r, s)) in [0, pi/2], ascending.
    """
    U, V = _check_pair(U, V, atol)
    if U.shape[-1] < V.shape[-1]:  # angles are symmetric; with s <= r, (I - UU^T)V has exactly m sines
        U, V = V, U
    M = U.transpose(-1, -2) @ V  # (*, r, s)
    cos = torch.linalg.svdvals(M)  # descending: cosines of the ascending angles
    sin = torch.linalg.svdvals(V - U @ M).flip(-1)  # ascending: sines of the ascending angles
    theta = torch.where(cos.square() >= 0.5, torch.asin(sin.clamp(0, 1)), torch.acos(cos.clamp(0, 1)))
    return theta.sort(-1).values  # the two branches may disagree by an ulp at pi/4


def _geodesic(theta: torch.Tensor) -> torch.Tensor:
    return theta.norm(dim=-1)


def _chordal(theta: torch.Tensor) -> torch.Tensor:
    return theta.sin().norm(dim=-1)


def _overlap(theta: torch.Tensor) -> torch.Tensor:
    return theta.cos().square().mean(-1)


def geodesic_distance(U: torch.Tensor, V: torch.Tensor, *, atol: float = ORTHONORMAL_ATOL) -> torch.Tensor:
    """Arc-length Grassmann distance d_g(U, V) = ||theta||_2 = sqrt(sum_i theta_i^2).

    ``U: (*, D, r)``, ``V: (*, D, s)`` -> ``(*,)``, in [0, sqrt(min(r, s)) pi/2] (Edelman, Arias
    & Smith 1998, §4.3).
    """
    return _geodesic(principal_angles(U, V, atol=atol))


def chordal_distance(U: torch.Tensor, V: torch.Tensor, *, atol: float = ORTHONORMAL_ATOL) -> torch.Tensor:
    """Chordal (projection) distance d_c(U, V) = ||sin theta||_2 = sqrt(sum_i sin^2 theta_i).

    For r = s this is ||U U^T - V V^T||_F / sqrt(2); for r != s, ||P_U - P_V||_F^2 =
    |r - s| + 2 d_c^2, i.e. d_c ignores the dimension mismatch and measures how far the smaller
    subspace is from lying inside the larger. ``(*, D, r), (*, D, s) -> (*,)``, in [0, sqrt(min(r, s))].
    """
    return _chordal(principal_angles(U, V, atol=atol))


def overlap_index(U: torch.Tensor, V: torch.Tensor, *, atol: float = ORTHONORMAL_ATOL) -> torch.Tensor:
    """Overlap index o(U, V) = (1/m) sum_i cos^2 theta_i = ||U^T V||_F^2 / m, m = min(r, s).

    1 when one subspace contains the other, 0 when they are orthogonal; the mean fraction of a
    smaller-subspace direction's energy that the other subspace captures. Independent random
    subspaces give r s / (D m) on average (r / D for r = s; see ``random_subspace_null``).
    ``(*, D, r), (*, D, s) -> (*,)``.
    """
    return _overlap(principal_angles(U, V, atol=atol))


@dataclass(frozen=True)
class PairwiseGeometry:
    """Principal angles and distances between every pair of E expert subspaces (symmetric)."""

    angles: torch.Tensor  # (E, E, r) ascending principal angles; the diagonal is ~0
    geodesic: torch.Tensor  # (E, E) ||theta||_2
    chordal: torch.Tensor  # (E, E) ||sin theta||_2
    overlap: torch.Tensor  # (E, E) mean cos^2 theta


def pairwise(bases: torch.Tensor | Sequence[torch.Tensor], *, atol: float = ORTHONORMAL_ATOL) -> PairwiseGeometry:
    """Grassmann geometry between all pairs of expert subspaces.

    ``bases: (E, D, r)`` orthonormal bases (e.g. ``weighted_pca(h, g.T).subspace(r)``), or a
    list of E bases ``(D, r_e)`` of different dimensions (e.g. each expert's own k@0.9; their
    angle rows are NaN-padded to the largest min(r_a, r_b)). Each unordered pair (diagonal
    included) is computed once and mirrored, so the result is exactly symmetric. Returns a
    ``PairwiseGeometry`` of ``(E, E, r)`` angles and ``(E, E)`` matrices.
    """
    if not torch.is_tensor(bases):
        return _pairwise_list(list(bases), atol)
    if bases.dim() != 3:
        raise ValueError(f"bases must have shape (E, D, r), got {tuple(bases.shape)}")
    i, j = torch.triu_indices(bases.shape[0], bases.shape[0])
    theta = principal_angles(bases[i], bases[j], atol=atol)  # (pairs, r)
    angles = torch.empty(bases.shape[0], bases.shape[0], theta.shape[-1], dtype=theta.dtype, device=theta.device)
    angles[i, j] = theta
    angles[j, i] = theta
    return PairwiseGeometry(angles, _geodesic(angles), _chordal(angles), _overlap(angles))


def _pairwise_list(bases: list[torch.Tensor], atol: float) -> PairwiseGeometry:
    if not bases or any(b.dim() != 2 for b in bases):
        raise ValueError(
            f"bases must be a non-empty list of (D, r_e) bases, got shapes {[tuple(b.shape) for b in bases]}"
        )
    E, m = len(bases), max(b.shape[-1] for b in bases)
    device = bases[0].device
    angles = torch.full((E, E, m), float("nan"), dtype=torch.float64, device=device)
    dist = {k: torch.zeros(E, E, dtype=torch.float64, device=device) for k in STATISTICS}
    for a in range(E):
        for b in range(a, E):
            theta = principal_angles(bases[a], bases[b], atol=atol)
            angles[a, b, : len(theta)] = angles[b, a, : len(theta)] = theta
            for k, fn in (("geodesic", _geodesic), ("chordal", _chordal), ("overlap", _overlap)):
                dist[k][a, b] = dist[k][b, a] = fn(theta)
    return PairwiseGeometry(angles, dist["geodesic"], dist["chordal"], dist["overlap"])


# --------------------------------------------------------------------------- random-subspace null
def haar_basis(n: int, D: int, r: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` independent Haar-distributed orthonormal bases ``(n, D, r)`` (uniform on the Stiefel
    manifold, so their spans are uniform on the Grassmannian).

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q (Mezzadri 2007): without
    the sign fix LAPACK's Householder QR leaves Q[0, 0] < 0 always, which is not Haar.
    """
    G = torch.randn(
        n, D, r, generator=generator, dtype=torch.float64, device=None if generator is None else generator.device
    )
    Q, R = torch.linalg.qr(G)
    sign = torch.where(R.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0)
    return Q * sign[..., None, :]


@dataclass(frozen=True)
class SubspaceNull:
    """Distances between independent uniformly random subspaces of dims r and s in R^D.

    Exact means from E[P_V] = (s/D) I: E[sum_i cos^2 theta_i] = E tr(P_U P_V) = r s / D.
    The joint law of the cos^2 theta_i (r <= s, r + s <= D) is that of the eigenvalues of a
    matrix-variate Beta_r(s/2, (D-s)/2), the Jacobi (MANOVA) ensemble (Absil, Edelman & Koev
    2006); for m = 1 the single cos^2 theta ~ Beta(s/2, (D-s)/2). If r + s > D, r + s - D angles
    are 0. No closed form is used for the geodesic distance: its mean and all quantiles come
    from the Monte Carlo ``angles``.
    """

    D: int
    r: int
    s: int
    seed: int
    mean_sum_cos2: float  # exact r s / D
    mean_overlap: float  # exact r s / (D m)
    mean_chordal_sq: float  # exact E[d_c^2] = m - r s / D
    angles: torch.Tensor  # (n_samples, m) Monte Carlo principal angles, ascending

    @property
    def geodesic(self) -> torch.Tensor:
        """Monte Carlo samples of d_g, ``(n_samples,)``."""
        return _geodesic(self.angles)

    @property
    def chordal(self) -> torch.Tensor:
        """Monte Carlo samples of d_c, ``(n_samples,)``."""
        return _chordal(self.angles)

    @property
    def overlap(self) -> torch.Tensor:
        """Monte Carlo samples of the overlap index, ``(n_samples,)``."""
        return _overlap(self.angles)

    def quantile(self, statistic: str, q: float | torch.Tensor) -> torch.Tensor:
        """Monte Carlo quantile(s) of "geodesic", "chordal" or "overlap" at level(s) ``q``."""
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        values = getattr(self, statistic)
        return torch.quantile(values, torch.as_tensor(q, dtype=torch.float64, device=values.device))


#: above this ambient dimension ``random_subspace_null`` draws the angles through Wishart matrices
#: (``wishart_angles``, O(s^3) per pair) instead of Haar bases in R^D (O(D s^2) QR and SVD per
#: pair): a checkpoint's width 2048-4096. The settings' subspaces (D <= 256) keep their samples.
WISHART_MIN_D = 1024


def wishart_angles(n: int, D: int, r: int, s: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` draws of the principal angles ``(n, min(r, s))``, ascending, between the first r
    coordinate axes and a uniformly random s-dimensional subspace of R^D, without any D-sized
    array (r + s <= D).

    With V = G R^{-1} (G a D x s Gaussian, G = Q R) and G = [G_1; G_2] split after row r, the
    cosines are the singular values of G_1 R^{-1} and R^T R = G_1^T G_1 + W with W = G_2^T G_2
    Wishart_s(D - r, I), drawn by Bartlett's decomposition W = B B^T (B lower triangular,
    B_ii^2 ~ chi^2(D - r - i), B_ij ~ N(0, 1) below the diagonal). With L L^T = R^T R and
    C = L^{-1} G_1^T, the cos^2 are the eigenvalues of the m x m Gram matrix of C, m = min(r, s):
    one small eigensolve per pair (an angle near 0 then carries an absolute error of about 1e-8,
    against ``principal_angles``' full precision; random subspaces of a large R^D are nearly
    orthogonal). Random numbers from numpy's ``default_rng(seed)``."""
    if r + s > D:
        raise ValueError(f"wishart_angles needs r + s <= D, got r = {r}, s = {s}, D = {D}")
    rng = np.random.default_rng(seed)
    G1 = torch.from_numpy(rng.standard_normal((n, r, s)))
    B = torch.from_numpy(np.tril(rng.standard_normal((n, s, s)), -1))
    B.diagonal(dim1=-2, dim2=-1).copy_(torch.from_numpy(np.sqrt(rng.chisquare(D - r - np.arange(s), size=(n, s)))))
    L = torch.linalg.cholesky(G1.transpose(-1, -2) @ G1 + B @ B.transpose(-1, -2))
    C = torch.linalg.solve_triangular(L, G1.transpose(-1, -2), upper=False)  # L^{-1} G_1^T: (s, r)
    gram = C.transpose(-1, -2) @ C if r <= s else C @ C.transpose(-1, -2)  # (m, m)
    cos2 = torch.linalg.eigvalsh(gram).clamp(0, 1)  # ascending: the cos^2 of the descending angles
    return torch.acos(cos2.sqrt()).flip(-1)


def random_subspace_null(
    D: int, r: int, s: int | None = None, *, n_samples: int = 10_000, seed: int = 0
) -> SubspaceNull:
    """What the distances between two expert subspaces look like by chance.

    Parameters
    ----------
    D : ambient dimension.
    r, s : subspace dimensions, 1 <= r, s <= D (``s`` defaults to ``r``).
    n_samples : Monte Carlo pairs.
    seed : seed of the torch generator; the same seed gives the same samples.

    Returns
    -------
    SubspaceNull with exact means and ``(n_samples, min(r, s))`` Monte Carlo angles.

    Notes
    -----
    The law of the angles is invariant under rotating both subspaces together, so U is fixed
    to the first r coordinate axes and only V is drawn, by ``haar_basis``; above
    ``WISHART_MIN_D`` (with r + s <= D) the same law is drawn by ``wishart_angles``.
    """
    s = r if s is None else s
    for name, k in (("r", r), ("s", s)):
        if not 1 <= k <= D:
            raise ValueError(f"{name} must be in [1, D] = [1, {D}], got {k}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if D > WISHART_MIN_D and r + s <= D:
        angles = wishart_angles(n_samples, D, r, s, seed=seed)
    else:
        g = torch.Generator().manual_seed(seed)
        U = torch.eye(D, r, dtype=torch.float64, device=g.device)
        chunk = max(1, 2**22 // (D * s))  # ~32 MiB of Gaussians at a time, whatever D
        angles = torch.cat(
            [
                principal_angles(U, haar_basis(min(chunk, n_samples - k), D, s, generator=g))
                for k in range(0, n_samples, chunk)
            ]
        )
    m, mean_sum_cos2 = min(r, s), r * s / D
    return SubspaceNull(D, r, s, seed, mean_sum_cos2, mean_sum_cos2 / m, m - mean_sum_cos2, angles)


#: Monte Carlo pairs behind ``null_means``: the standard error of the mean geodesic distance is
#: sd / sqrt(500), below 0.004 rad for the dimensions here (sd < 0.09 rad at D = 64), under 0.1% of
#: the mean and a fiftieth of the smallest relative effect the claims call meaningful (log 1.05).
NULL_SAMPLES = 500


@functools.cache
def null_means(
    D: int, r: int, s: int | None = None, *, n_samples: int = NULL_SAMPLES, seed: int = 0
) -> dict[str, float]:
    """Expected geodesic distance, chordal distance and overlap index of two independent
    uniformly random subspaces of dims r and s in R^D: the overlap exactly (r s / (D m)), the
    distances by Monte Carlo (``random_subspace_null`` with ``seed``; deterministic). Cached.

    When r + s > D, r + s - D angles are 0 and the others are the principal angles between the
    orthogonal complements (dims D - r and D - s), which are uniformly random too: the distances
    are drawn there, which is much cheaper than on the large subspaces (same law, not the same
    samples)."""
    s = r if s is None else s
    rr, ss = (D - r, D - s) if r + s > D else (r, s)
    if min(rr, ss) == 0:  # one subspace is all of R^D: every angle is 0
        dist = {"geodesic": 0.0, "chordal": 0.0}
    else:
        null = random_subspace_null(D, rr, ss, n_samples=n_samples, seed=seed)
        dist = {"geodesic": float(null.geodesic.mean()), "chordal": float(null.chordal.mean())}
    return dist | {"overlap": r * s / (D * min(r, s))}
