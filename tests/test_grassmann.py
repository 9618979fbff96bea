"""Principal angles against planted angles and scipy, the distances' invariances and extremes,
expert subspaces from weighted PCA, and the random-subspace null against its exact laws."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds, subspace_pairs

from moegeo import probes
from moegeo.probes import grassmann

DISTANCES = (grassmann.geodesic_distance, grassmann.chordal_distance, grassmann.overlap_index)


def haar(D, r, seed):
    return grassmann.haar_basis(1, D, r, generator=torch.Generator().manual_seed(seed))[0]


def projector(U):
    return U @ U.T


# --------------------------------------------------------------------------- principal angles
@given(subspace_pairs())
def test_angles_equal_planted_angles(pair):
    """Including "mixed" pairs: a 1e-10 angle beside one near pi/2 keeps its digits."""
    U, V, theta = pair
    torch.testing.assert_close(grassmann.principal_angles(U, V), theta, rtol=1e-8, atol=1e-13)


@given(subspace_pairs(regimes=("generic", "nearly_identical", "nearly_orthogonal")))
def test_angles_equal_scipy_subspace_angles(pair):
    """scipy returns them descending. Not on "mixed" pairs: scipy 1.17 pairs each angle with
    another angle's cosine there and returns 0 for an angle of 1e-9 (checked against the planted
    angles above instead)."""
    U, V, _ = pair
    ref = np.sort(scipy.linalg.subspace_angles(U.numpy(), V.numpy()))
    np.testing.assert_allclose(grassmann.principal_angles(U, V).numpy(), ref, rtol=1e-8, atol=1e-13)


def test_small_angle_next_to_a_large_one_is_not_lost():
    U = torch.eye(6, 2, dtype=torch.float64)
    V = torch.zeros(6, 2, dtype=torch.float64)
    V[[0, 2], 0] = torch.tensor([math.cos(1e-9), math.sin(1e-9)], dtype=torch.float64)
    V[[1, 3], 1] = torch.tensor([math.cos(1.5), math.sin(1.5)], dtype=torch.float64)
    torch.testing.assert_close(
        grassmann.principal_angles(U, V), torch.tensor([1e-9, 1.5], dtype=torch.float64), rtol=1e-12, atol=0
    )


@given(subspace_pairs())
def test_angles_are_symmetric(pair):
    U, V, _ = pair
    torch.testing.assert_close(grassmann.principal_angles(U, V), grassmann.principal_angles(V, U), rtol=0, atol=1e-13)


@given(subspace_pairs(), seeds)
def test_a_subspace_is_at_distance_zero_from_itself_in_any_basis(pair, seed):
    U, _, _ = pair
    UQ = U @ haar(U.shape[1], U.shape[1], seed)
    assert grassmann.principal_angles(U, UQ).max().item() < 1e-13
    assert grassmann.geodesic_distance(U, U).item() < 1e-13
    assert grassmann.overlap_index(U, UQ).item() == pytest.approx(1.0, abs=1e-13)


@given(subspace_pairs(), seeds)
def test_angles_invariant_to_the_choice_of_bases(pair, seed):
    U, V, _ = pair
    UQ, VQ = U @ haar(U.shape[1], U.shape[1], seed), V @ haar(V.shape[1], V.shape[1], seed + 1)
    torch.testing.assert_close(
        grassmann.principal_angles(UQ, VQ), grassmann.principal_angles(U, V), rtol=1e-8, atol=1e-13
    )


@given(subspace_pairs(), seeds)
def test_angles_invariant_to_rotating_both_subspaces(pair, seed):
    U, V, _ = pair
    R = haar(U.shape[0], U.shape[0], seed)
    torch.testing.assert_close(
        grassmann.principal_angles(R @ U, R @ V), grassmann.principal_angles(U, V), rtol=1e-8, atol=1e-13
    )


@given(st.integers(2, 10), st.data(), seeds)
def test_orthogonal_subspaces_are_farthest(D, data, seed):
    r = data.draw(st.integers(1, D - 1))
    s = data.draw(st.integers(1, D - r))
    Q, m = haar(D, D, seed), min(r, s)
    U, V = Q[:, :r], Q[:, r : r + s]
    assert grassmann.geodesic_distance(U, V).item() == pytest.approx(math.sqrt(m) * math.pi / 2, rel=1e-13)
    assert grassmann.chordal_distance(U, V).item() == pytest.approx(math.sqrt(m), rel=1e-13)
    assert grassmann.overlap_index(U, V).item() == pytest.approx(0.0, abs=1e-26)


@given(subspace_pairs())
def test_distances_are_bounded_and_ordered(pair):
    """Jordan's inequality 2x/pi <= sin x <= x on [0, pi/2] orders chordal and geodesic."""
    U, V, theta = pair
    m = theta.numel()
    d_g, d_c, o = (f(U, V).item() for f in DISTANCES)
    assert 2 / math.pi * d_g - 1e-12 <= d_c <= d_g + 1e-12
    assert d_g <= math.sqrt(m) * math.pi / 2 + 1e-12
    assert 0 <= o <= 1


@given(subspace_pairs())
def test_chordal_distance_is_the_projection_distance(pair):
    """||P_U - P_V||_F^2 = |r - s| + 2 d_c^2, i.e. d_c = ||P_U - P_V||_F / sqrt(2) when r = s."""
    U, V, _ = pair
    lhs = (projector(U) - projector(V)).square().sum()
    rhs = abs(U.shape[1] - V.shape[1]) + 2 * grassmann.chordal_distance(U, V).square()
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-12)


@given(subspace_pairs())
def test_overlap_index_is_mean_squared_cross_gram(pair):
    U, V, theta = pair
    torch.testing.assert_close(
        grassmann.overlap_index(U, V), (U.T @ V).square().sum() / theta.numel(), rtol=1e-10, atol=1e-14
    )


@given(st.integers(4, 10), st.data(), seeds)
def test_one_shared_direction_gives_exactly_one_zero_angle(D, data, seed):
    """U = [q, U'], V = [q, V'] with U', V' generic in q's complement (r + s <= D, so generic
    (r-1)- and (s-1)-dim subspaces of R^(D-1) meet only in 0)."""
    r = data.draw(st.integers(2, D - 2))
    s = data.draw(st.integers(2, D - r))
    q = haar(D, 1, seed)
    rest = (torch.eye(D, dtype=torch.float64) - projector(q)) @ haar(D, r + s - 2, seed + 1)
    U = torch.linalg.qr(torch.cat([q, rest[:, : r - 1]], 1)).Q
    V = torch.linalg.qr(torch.cat([q, rest[:, r - 1 :]], 1)).Q
    theta = grassmann.principal_angles(U, V)
    assert theta[0].item() < 1e-12
    assert theta[1:].min().item() > 1e-6


def test_wrong_inputs_are_rejected_with_what_was_expected():
    U = haar(5, 2, 0)
    with pytest.raises(ValueError, match="orthonormal"):
        grassmann.principal_angles(2 * U, U)
    with pytest.raises(ValueError, match="1 <= r <= D"):
        grassmann.principal_angles(torch.ones(2, 3, dtype=torch.float64), U)
    with pytest.raises(ValueError, match="same R\\^D"):
        grassmann.principal_angles(U, haar(6, 2, 0))
    with pytest.raises(ValueError, match="NaN"):
        grassmann.principal_angles(U, torch.full_like(U, float("nan")))
    with pytest.raises(ValueError, match=r"\(E, D, r\)"):
        grassmann.pairwise(U)


def test_batched_angles_equal_one_by_one():
    U, V = grassmann.haar_basis(4, 7, 3, generator=torch.Generator().manual_seed(0)), haar(7, 2, 1)
    batched = grassmann.principal_angles(U, V)
    for e in range(4):
        torch.testing.assert_close(batched[e], grassmann.principal_angles(U[e], V))


@given(st.integers(1, 5), st.integers(2, 8), st.data(), seeds)
def test_pairwise_matches_each_pair_and_is_symmetric(E, D, data, seed):
    r = data.draw(st.integers(1, D))
    bases = grassmann.haar_basis(E, D, r, generator=torch.Generator().manual_seed(seed))
    geo = grassmann.pairwise(bases)
    for a in range(E):
        for b in range(E):
            torch.testing.assert_close(
                geo.angles[a, b], grassmann.principal_angles(bases[a], bases[b]), rtol=1e-8, atol=1e-13
            )
    for field in ("angles", "geodesic", "chordal", "overlap"):
        t = getattr(geo, field)
        assert torch.equal(t, t.transpose(0, 1)), field
    torch.testing.assert_close(
        geo.overlap, grassmann.overlap_index(bases[:, None], bases[None]), rtol=1e-10, atol=1e-14
    )


# --------------------------------------------------------------------------- expert subspaces from weighted PCA
def planted_low_rank(D, N, rank, seed):
    g = torch.Generator().manual_seed(seed)
    basis = haar(D, rank, seed)
    z = torch.randn(N, rank, generator=g, dtype=torch.float64) * torch.linspace(3, 1, rank, dtype=torch.float64)
    return z @ basis.T + 1e-3 * torch.randn(N, D, generator=g, dtype=torch.float64), basis


@settings(deadline=None)
@given(st.integers(1, 6), seeds)
def test_pca_subspace_is_orthonormal_and_spans_the_planted_space(rank, seed):
    D, N = 12, 1000
    h, basis = planted_low_rank(D, N, rank, seed)
    U = probes.weighted_pca(h, torch.rand(N, dtype=torch.float64) + 0.1, vectors=True).subspace(rank)
    torch.testing.assert_close(U.T @ U, torch.eye(rank, dtype=torch.float64), rtol=0, atol=1e-12)
    # planted variances >= 1 against noise 1e-6: the subspace is off by ~1e-3 / 1 at most (Davis-Kahan)
    assert (projector(U) - projector(basis)).norm().item() < 1e-2


@settings(deadline=None)
@given(seeds)
def test_expert_subspaces_sharing_a_high_variance_direction_have_a_near_zero_angle(seed):
    """Both experts see a shared direction q (std 3) and a private one (std 2, mutually
    orthogonal); soft weights leak the other expert's points at weight 0.05. The top-2 subspaces
    then share q: smallest angle near 0, largest near pi/2 (random 2-planes in R^10 rarely do)."""
    D, N = 10, 1000
    Q, g = haar(D, 3, seed), torch.Generator().manual_seed(seed)
    noise = lambda: 0.05 * torch.randn(N, D, generator=g, dtype=torch.float64)  # noqa: E731
    z = lambda: torch.randn(N, 1, generator=g, dtype=torch.float64)  # noqa: E731
    h = torch.cat([3 * z() * Q[:, 0] + 2 * z() * Q[:, e + 1] + noise() for e in range(2)])
    w = torch.full((2, 2 * N), 0.05, dtype=torch.float64)
    w[0, :N] = w[1, N:] = 1.0
    theta = grassmann.principal_angles(*probes.weighted_pca(h, w, vectors=True).subspace(2))
    assert theta[0].item() < 0.02
    assert theta[1].item() > math.pi / 2 - 0.1


def test_subspace_rejects_a_dimension_outside_1_to_D():
    pca = probes.weighted_pca(
        torch.randn(20, 4, dtype=torch.float64), torch.ones(20, dtype=torch.float64), vectors=True
    )
    for r in (0, 5):
        with pytest.raises(ValueError, match=r"\[1, 4\]"):
            pca.subspace(r)


# --------------------------------------------------------------------------- random-subspace null
KS_ALPHA = 1e-3  # fixed seeds: a KS p-value below this is a real departure, not bad luck


@pytest.mark.parametrize("D, r, s", [(8, 3, 3), (10, 1, 4), (6, 2, 5), (5, 4, 3), (20, 5, 5)])
def test_null_exact_means_match_monte_carlo(D, r, s):
    """Within 4 Monte Carlo standard errors (two-sided ~6e-5 by chance; the seed is fixed)."""
    null = grassmann.random_subspace_null(D, r, s, n_samples=20_000, seed=1)
    n = null.angles.shape[0]
    for exact, samples in ((null.mean_overlap, null.overlap), (null.mean_chordal_sq, null.chordal.square())):
        se = samples.std().item() / math.sqrt(n)
        assert abs(samples.mean().item() - exact) < 4 * se
    assert null.mean_overlap == pytest.approx(r * s / (D * min(r, s)))


@pytest.mark.parametrize("D, r, s", [(40, 3, 5), (30, 6, 4), (50, 10, 10), (12, 1, 4), (9, 4, 5)])
def test_wishart_angles_have_the_law_of_haar_subspaces(D, r, s):
    """The large-D sampler (no D-sized array) against Haar bases and ``principal_angles``: the
    same law of the geodesic distance and of the smallest angle (two-sample KS), the exact mean
    of sum cos^2 (r s / D) within 4 standard errors, ascending angles in [0, pi/2]."""
    n = 8000
    w = grassmann.wishart_angles(n, D, r, s, seed=1)
    assert w.shape == (n, min(r, s)) and (w.diff(dim=-1) >= 0).all() and 0 <= w.min() and w.max() <= math.pi / 2
    U = torch.eye(D, r, dtype=torch.float64)
    h = grassmann.principal_angles(U, grassmann.haar_basis(n, D, s, generator=torch.Generator().manual_seed(2)))
    for a, b in ((w.norm(dim=-1), h.norm(dim=-1)), (w[:, 0], h[:, 0])):
        assert scipy.stats.ks_2samp(a.numpy(), b.numpy()).pvalue > KS_ALPHA
    cos2 = w.cos().square().sum(-1)
    assert abs(cos2.mean().item() - r * s / D) < 4 * cos2.std().item() / math.sqrt(n)
    with pytest.raises(ValueError, match="r \\+ s <= D"):
        grassmann.wishart_angles(2, 6, 4, 3)


def test_the_null_of_a_wide_layer_takes_the_wishart_route():
    """Above ``WISHART_MIN_D`` the null comes from ``wishart_angles``; its mean geodesic distance
    agrees with Haar bases in that R^D (two-sample, within 4 standard errors of the difference)."""
    D, n = grassmann.WISHART_MIN_D + 1000, 400
    null = grassmann.random_subspace_null(D, 10, 12, n_samples=n, seed=0)
    torch.testing.assert_close(null.angles, grassmann.wishart_angles(n, D, 10, 12, seed=0))
    U = torch.eye(D, 10, dtype=torch.float64)
    haar = grassmann.principal_angles(U, grassmann.haar_basis(n, D, 12, generator=torch.Generator().manual_seed(1)))
    a, b = null.geodesic, haar.norm(dim=-1)
    se = math.sqrt(a.var().item() / n + b.var().item() / n)
    assert abs(a.mean().item() - b.mean().item()) < 4 * se
    assert null.overlap.mean().item() == pytest.approx(12 / D, rel=0.1)


def test_null_overlap_of_equal_dimensions_is_r_over_D():
    assert grassmann.random_subspace_null(12, 4, n_samples=1).mean_overlap == pytest.approx(4 / 12)


def test_null_has_forced_zero_angles_when_r_plus_s_exceeds_D():
    null = grassmann.random_subspace_null(5, 4, 3, n_samples=200)
    assert null.angles[:, :2].max().item() < 1e-12  # r + s - D = 2 directions must be shared
    assert null.angles[:, 2].min().item() > 1e-6


@pytest.mark.parametrize("D", [2, 5, 30])
def test_haar_basis_first_coordinate_has_the_uniform_sphere_law(D):
    """First column uniform on S^(D-1): x_1^2 ~ Beta(1/2, (D-1)/2), and x_1 symmetric, with the
    law of the cosine of two isotropic vectors (without the sign fix of QR, x_1 < 0 always)."""
    x1 = grassmann.haar_basis(4000, D, min(3, D), generator=torch.Generator().manual_seed(2))[:, 0, 0].numpy()
    assert scipy.stats.kstest(x1**2, scipy.stats.beta(0.5, (D - 1) / 2).cdf).pvalue > KS_ALPHA
    assert scipy.stats.kstest(x1, probes.cosine_null(D).cdf).pvalue > KS_ALPHA


@pytest.mark.parametrize("D, s", [(6, 1), (10, 4), (7, 6)])
def test_null_single_angle_follows_its_beta_law(D, s):
    """For r = 1 the Jacobi ensemble is one cos^2 theta ~ Beta(s/2, (D-s)/2) (Absil et al. 2006)."""
    null = grassmann.random_subspace_null(D, 1, s, n_samples=4000, seed=3)
    assert scipy.stats.kstest(null.overlap.numpy(), scipy.stats.beta(s / 2, (D - s) / 2).cdf).pvalue > KS_ALPHA


def test_null_geodesic_quantiles_within_the_dkw_band_of_the_exact_law():
    """For r = 1, P(theta <= t) = P(cos^2 theta >= cos^2 t) exactly; by the DKW inequality the
    empirical CDF is within eps = sqrt(log(2/alpha) / 2n) of it everywhere with prob 1 - alpha,
    so the exact CDF at each Monte Carlo quantile is within eps of its level."""
    D, s, n, alpha = 9, 3, 5000, 1e-3
    null = grassmann.random_subspace_null(D, 1, s, n_samples=n, seed=4)
    levels = torch.tensor([0.01, 0.05, 0.5, 0.95, 0.99], dtype=torch.float64)
    t = null.quantile("geodesic", levels).numpy()
    exact_cdf = scipy.stats.beta(s / 2, (D - s) / 2).sf(np.cos(t) ** 2)
    np.testing.assert_allclose(exact_cdf, levels.numpy(), rtol=0, atol=math.sqrt(math.log(2 / alpha) / (2 * n)) + 1 / n)


def test_null_is_reproducible_from_its_seed():
    a, b, c = (grassmann.random_subspace_null(7, 2, n_samples=50, seed=k) for k in (5, 5, 6))
    assert torch.equal(a.angles, b.angles)
    assert not torch.equal(a.angles, c.angles)


def test_null_rejects_impossible_dimensions_and_unknown_statistics():
    with pytest.raises(ValueError, match=r"r must be in \[1, D\]"):
        grassmann.random_subspace_null(4, 5)
    with pytest.raises(ValueError, match="statistic"):
        grassmann.random_subspace_null(4, 2, n_samples=10).quantile("angle", 0.5)


# --------------------------------------------------------------------------- experts of different dimensions; the claims' rows
@settings(deadline=None)
@given(st.lists(st.integers(1, 6), min_size=2, max_size=4), seeds)
def test_pairwise_of_bases_of_different_dimensions_matches_each_pair(dims, seed):
    D = 7
    bases = [haar(D, r, seed + i) for i, r in enumerate(dims)]
    geo = grassmann.pairwise(bases)
    for a in range(len(dims)):
        for b in range(len(dims)):
            theta = grassmann.principal_angles(bases[a], bases[b])
            m = len(theta)
            torch.testing.assert_close(geo.angles[a, b, :m], theta, rtol=1e-8, atol=1e-13)
            assert geo.angles[a, b, m:].isnan().all()
            assert geo.geodesic[a, b].item() == pytest.approx(grassmann.geodesic_distance(bases[a], bases[b]).item())
            assert geo.overlap[a, b].item() == pytest.approx(grassmann.overlap_index(bases[a], bases[b]).item())
    with pytest.raises(ValueError, match="list of"):
        grassmann.pairwise([torch.eye(3, dtype=torch.float64)[None]])


def test_null_means_are_the_exact_overlap_and_the_monte_carlo_distances():
    m = grassmann.null_means(16, 3, 5)
    null = grassmann.random_subspace_null(16, 3, 5, n_samples=grassmann.NULL_SAMPLES, seed=0)
    assert m["overlap"] == pytest.approx(3 * 5 / (16 * 3))
    assert m["geodesic"] == pytest.approx(null.geodesic.mean().item())
    assert m["chordal"] == pytest.approx(null.chordal.mean().item())
    assert grassmann.null_means(16, 3, 5) is m  # cached: the same object


@pytest.mark.parametrize("D, r, s", [(10, 7, 6), (12, 9, 9), (8, 8, 3)])
def test_null_means_of_large_subspaces_come_from_their_complements(D, r, s):
    """r + s > D: the same law as drawing the large subspaces themselves, within 4 standard errors."""
    m = grassmann.null_means(D, r, s)
    direct = grassmann.random_subspace_null(D, r, s, n_samples=4000, seed=3)
    for stat in ("geodesic", "chordal"):
        x = getattr(direct, stat)
        assert (
            abs(m[stat] - x.mean().item())
            < 4 * x.std().item() * math.sqrt(1 / 4000 + 1 / grassmann.NULL_SAMPLES) + 1e-12
        )
    assert m["overlap"] == pytest.approx(direct.mean_overlap)


def _layer_rows(h: torch.Tensor, g: torch.Tensor):
    from moegeo.config import PCASite
    from moegeo.frame import Rows
    from moegeo.rows import subspace_rows

    rows = Rows(0, "topk", 0, 1)
    subspace_rows(rows, probes.weighted_pca(h, g.T, vectors=True), PCASite.INPUT, list(range(g.shape[1])))
    import pandas as pd

    df = pd.DataFrame(rows)
    pairs = df[df.expert < df["index"]]
    return pairs.groupby(["reading", "metric"]).value.mean()


def test_subspace_rows_find_a_planted_shared_subspace_and_chance_for_isotropic_inputs():
    """Four experts whose routed inputs all vary mostly in one shared 10-dim subspace: overlap
    far above its random-subspace mean, geodesic far below; the same experts on isotropic
    inputs: at the null's level (4 Monte Carlo-free standard errors of a mean over 6 pairs)."""
    D, N, E = 32, 4000, 4
    g_ = torch.Generator().manual_seed(0)
    Q = haar(D, 10, 1)
    shared = torch.randn(N, 10, generator=g_, dtype=torch.float64) * 3 @ Q.T + 0.3 * torch.randn(
        N, D, generator=g_, dtype=torch.float64
    )
    iso = torch.randn(N, D, generator=g_, dtype=torch.float64)
    g = torch.zeros(N, E, dtype=torch.float64)
    g[torch.arange(N), torch.arange(N) % E] = 1.0
    planted, chance = _layer_rows(shared, g), _layer_rows(iso, g)
    r = "pca_site=input;subspace=r10"
    assert planted[r, "overlap"] > 0.9 and planted[r, "overlap_null"] == pytest.approx(10 / D)
    assert planted[r, "geodesic"] < 0.3 * planted[r, "geodesic_null"]
    # isotropic inputs: each expert's top-10 subspace is sampling noise, i.e. close to random
    assert abs(chance[r, "overlap"] - chance[r, "overlap_null"]) < 0.1
    assert chance[r, "overlap"] < 0.5 < planted[r, "overlap"]  # G2d's "distinct" tells the two apart
    assert {"angle@1", "angle@10"} <= set(planted.loc[r].index)
    assert (planted.loc["pca_site=input;subspace=k90"].index.str.startswith("angle@")).sum() == 0


def _subspace_frame(n_points, D=32, N=400, seed=1, scale=None, points=None):
    """``subspace_rows`` at the input site of 3 well-populated experts and one more (expert 3)
    routed ``n_points`` points; ``scale`` (D,) rescales the coordinates of expert 3's points, or
    ``points`` (n_points, D) replaces them."""
    import pandas as pd

    from moegeo.config import PCASite
    from moegeo.frame import Rows
    from moegeo.rows import subspace_rows

    E = 4
    h = torch.randn(N, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = torch.zeros(N, E, dtype=torch.float64)
    g[torch.arange(N), torch.arange(N) % 3] = 1.0
    g[:n_points] = 0.0
    g[:n_points, 3] = 1.0
    if scale is not None:
        h[:n_points] *= scale
    if points is not None:
        h[:n_points] = points.double()
    rows = Rows(7, "topk", 2, 250)
    subspace_rows(rows, probes.weighted_pca(h.double(), g.T, vectors=True), PCASite.INPUT, list(range(E)))
    df = pd.DataFrame(rows)
    return {s: df[df.reading == f"pca_site=input;subspace={s}"] for s in ("r10", "k90")}


def _in(frame, metric):
    return set(frame.expert[frame.metric == metric])


def test_an_expert_whose_points_span_fewer_than_r_dimensions_has_no_r10_subspace():
    """Expert 3 gets 6 routed points in D = 32: its centred covariance has rank 5, so directions
    6-10 of a 'top-10 subspace' are arbitrary (set by rounding). It is left out of the r10 rows,
    with a warning naming where and a ``subspace_excluded`` row, and kept in the k90 rows (its
    k@0.9 directions lie within its span)."""
    with pytest.warns(
        UserWarning,
        match=r"^seed 7, arm topk, layer 2, step 250, pca_site=input;subspace=r10: the "
        r"routed points of expert\(s\) \[3\] span fewer than 10 dimensions",
    ):
        f = _subspace_frame(6)
    r10, k90 = f["r10"], f["k90"]
    pairs = r10[r10.metric != "subspace_excluded"]
    assert set(pairs.expert) == set(pairs["index"]) == {0, 1, 2}
    assert _in(r10, "subspace_excluded") == {3} and _in(k90, "subspace_excluded") == set()
    assert set(k90.expert) == set(k90["index"]) == {0, 1, 2, 3}
    assert {"angle@1", "geodesic_null"} <= set(r10.metric)


@pytest.mark.parametrize("n_points, kept", [(10, False), (11, True)])
def test_the_rank_rule_sits_exactly_at_r(n_points, kept, recwarn):
    """Centred, n points span n - 1 dimensions: 10 points cannot give a top-10 subspace, 11 can."""
    r10 = _subspace_frame(n_points)["r10"]
    assert (3 in _in(r10, "geodesic")) is kept and (3 in _in(r10, "subspace_excluded")) is not kept


def test_the_rank_rule_keeps_small_real_variance_and_drops_float32_rank_deficiency(recwarn):
    """Not just any threshold between rounding and 1/2: a full-rank expert whose 10th variance is
    about 1e-7 of its first is kept (a threshold of 1e-3 would drop it); an expert whose points
    were computed in float32 from 5 directions is dropped (its ratio is float32 rounding seen in
    float64, about 3e-16 here: a threshold below that would keep it)."""
    D = 32
    small = torch.ones(D, dtype=torch.float64)
    small[9:] = math.sqrt(1e-7)  # coordinates 10.. carry 1e-7 of the variance of the first nine
    assert 3 in _in(_subspace_frame(60, scale=small)["r10"], "geodesic")
    gen = torch.Generator().manual_seed(5)  # expert 3's points: a random 5-dimensional subspace, in float32
    rank5 = torch.randn(60, 5, generator=gen) @ torch.randn(5, D, generator=gen)
    f = _subspace_frame(60, points=rank5)
    assert 3 in _in(f["r10"], "subspace_excluded") and 3 in _in(f["k90"], "geodesic")


def test_an_expert_with_one_distinct_point_has_no_subspace_at_all():
    """No variance: no principal directions, so it is left out of k90 as well (its k@0.9 would
    otherwise be the whole space, with overlap 1 to every expert)."""
    with pytest.warns(UserWarning, match=r"subspace=k90: the routed points of expert\(s\) \[3\] have no variance"):
        f = _subspace_frame(1)
    for name in ("r10", "k90"):
        assert _in(f[name], "subspace_excluded") == {3} and 3 not in _in(f[name], "overlap")
