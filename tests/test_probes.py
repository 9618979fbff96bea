"""Every probe against an independent computation, plus its invariances and bounds."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import matrices, mlp_experts, seeds, weighted_samples

from moegeo import nn, probes
from moegeo.probes import batched_lanczos
from moegeo.routers import route


@pytest.fixture(autouse=True, scope="module")
def float64():
    """The probes are checked in float64, where agreement can be asserted to 1e-10."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def expert_fn(W1, b1, W2, e):
    return lambda x: W2[e] @ torch.nn.functional.gelu(W1[e] @ x + b1[e])


# --------------------------------------------------------------------------- Jacobians
@given(mlp_experts(), st.sampled_from(["rev", "fwd"]))
def test_closed_form_jacobian_matches_autograd(params, mode):
    W1, b1, W2, x = params
    J = probes.expert_jacobians(W1, b1, W2, x)
    for e in range(W1.shape[0]):
        torch.testing.assert_close(
            J[e], probes.jacobians(expert_fn(W1, b1, W2, e), x, mode=mode), rtol=1e-10, atol=1e-10
        )


def test_gelu_grad_matches_autograd():
    z = torch.linspace(-6, 6, 101, requires_grad=True)
    (auto,) = torch.autograd.grad(torch.nn.functional.gelu(z).sum(), z)
    torch.testing.assert_close(nn.gelu_grad(z.detach()), auto, rtol=1e-12, atol=1e-12)


@given(mlp_experts(), seeds)
def test_matrix_free_operators_match_materialised_jacobian(params, seed):
    W1, b1, W2, x = params
    J = probes.expert_jacobians(W1, b1, W2, x)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(*J.shape[:2], J.shape[3], generator=g)
    u = torch.randn(*J.shape[:3], generator=g)
    op = probes.mlp_jacobian_operator(W1, b1, W2, x)
    torch.testing.assert_close(op.matvec(v), torch.einsum("enoi,eni->eno", J, v))
    torch.testing.assert_close(op.rmatvec(u), torch.einsum("enoi,eno->eni", J, u))
    auto = probes.autograd_jacobian_operator(expert_fn(W1, b1, W2, 0), x)
    torch.testing.assert_close(auto.matvec(v[0]), op.matvec(v)[0])
    torch.testing.assert_close(auto.rmatvec(u[0]), op.rmatvec(u)[0])


@given(mlp_experts(), seeds)
def test_mean_jacobian_is_routing_weighted_average(params, seed):
    W1, b1, W2, x = params
    E, N = W1.shape[0], x.shape[0]
    g = torch.softmax(torch.randn(N, E, generator=torch.Generator().manual_seed(seed)), -1)
    J = probes.expert_jacobians(W1, b1, W2, x)
    expected = torch.einsum("ne,enoi->eoi", g, J) / g.sum(0)[:, None, None]  # A.2 literally
    torch.testing.assert_close(probes.mean_jacobian(W1, b1, W2, x, g), expected)


@given(mlp_experts(), seeds, st.floats(1e-3, 1e3))
def test_every_mean_jacobian_follows_one_weight_rule(params, seed, scale):
    """J̄_e has one contract wherever it is computed (MLP closed form, SwiGLU closed form, the HF
    per-token path): non-negative weights of any scale, a positive total per expert; a negative
    weight or an expert with zero total is refused by each."""
    from moegeo.hf.jacobians import tokenwise_jacobians

    W1, b1, W2, x = params
    E, N, h = W1.shape[0], x.shape[0], W1.shape[1]
    gen = torch.Generator().manual_seed(seed)
    g = torch.rand(N, E, generator=gen, dtype=torch.float64) + 0.01  # not on the simplex
    J = probes.expert_jacobians(W1, b1, W2, x)
    expected = torch.einsum("ne,enoi->eoi", g, J) / g.sum(0)[:, None, None]
    torch.testing.assert_close(probes.mean_jacobian(W1, b1, W2, x, scale * g), expected)
    Wu = torch.randn(E, h, x.shape[1], generator=gen, dtype=torch.float64)

    def swiglu(e):
        return lambda X: torch.einsum("oh,nh->no", W2[e], torch.nn.functional.silu(X @ W1[e].T) * (X @ Wu[e].T))

    swi = probes.swiglu_mean_jacobian(W1, Wu, W2, x, scale * g)
    for e in range(E):
        torch.testing.assert_close(tokenwise_jacobians(swiglu(e), x, weights=scale * g[:, e]), swi[e])
    bad = g.clone()
    bad[0, 0] = -0.5
    dead = g.clone()
    dead[:, 0] = 0
    for weights, match in ((bad, "negative"), (dead, "zero total")):
        with pytest.raises(ValueError, match=match):
            probes.mean_jacobian(W1, b1, W2, x, weights)
        with pytest.raises(ValueError, match=match):
            probes.swiglu_mean_jacobian(W1, Wu, W2, x, weights)
        with pytest.raises(ValueError, match=match):
            tokenwise_jacobians(swiglu(0), x, weights=weights[:, 0])


# --------------------------------------------------------------------------- spectra
def batch_op(J):
    """A materialised batch ``J: (B, m, n)`` as a JacobianOperator with batch shape ``(B,)``."""
    return probes.JacobianOperator(
        lambda v: torch.einsum("boi,bi->bo", J, v),
        lambda u: torch.einsum("boi,bo->bi", J, u),
        (J.shape[0],),
        J.shape[2],
        J.shape[1],
    )


def planted(d=24, weight=1e-6, seed=0, sigma2=0.9):
    """One ``(1, d, d)`` matrix with sigma_1 = 1 just above ``sigma2`` (the rest below 0.5), and a
    unit start vector ``(1, d)`` carrying only ``weight`` on the top right singular vector v_1."""
    g = torch.Generator().manual_seed(seed)
    U, V = (torch.linalg.qr(torch.randn(d, d, generator=g)).Q for _ in range(2))
    s = torch.cat([torch.tensor([1.0, sigma2]), 0.5 * torch.rand(d - 2, generator=g)])
    c = torch.randn(d, generator=g)
    c[0] = 0
    c = c / c.norm() * (1 - weight**2) ** 0.5
    c[0] = weight
    return ((U * s) @ V.T)[None], (V @ c)[None]


@given(matrices())
def test_sigma1_methods_agree_with_exact_svd(J):
    exact = probes.singular_values(J)[..., 0]
    torch.testing.assert_close(probes.singular_values(J, method="gram")[..., 0], exact, rtol=1e-8, atol=1e-12)
    op = batch_op(J)
    pw = probes.power_iteration_sigma1(op, tol=1e-12, max_iter=20000, generator=torch.Generator().manual_seed(0))
    assert pw.converged and pw.iterations >= 1
    # the stated accuracy: relative error ~ tol * r / (1 - r); 1e-6 covers gaps down to r = 1 - 1e-6
    torch.testing.assert_close(pw.values, exact, rtol=1e-6, atol=0)
    lz = probes.lanczos_sigma1(op, tol=1e-12, generator=torch.Generator().manual_seed(0))
    assert lz.converged and lz.iterations <= J.shape[2]
    torch.testing.assert_close(lz.values, exact, rtol=1e-8, atol=1e-12)
    for b in range(J.shape[0]):
        ar = probes.arpack_sigma1(batch_op(J[b : b + 1]), tol=1e-12)
        torch.testing.assert_close(ar.values, exact[b : b + 1], rtol=1e-9, atol=1e-12)


@given(matrices())
def test_gram_spectrum_matches_svd(J):
    s = probes.singular_values(J)
    torch.testing.assert_close(
        probes.singular_values(J, method="gram"), s, rtol=1e-6, atol=1e-7 * s[..., :1].max().item()
    )


@given(matrices(max_dim=16), st.integers(1, 6), st.integers(1, 4), seeds)
def test_block_lanczos_top_matches_numpys_svd(J, k, block, seed):
    """The k leading singular values by block Lanczos against numpy's LAPACK SVD, for any block
    size, rank-deficient or not (J^T J's zero eigenvalues within the top k when m < n)."""
    n = J.shape[2]
    k = min(k, n)
    exact = torch.from_numpy(np.linalg.svd(J.numpy(), compute_uv=False))
    exact = torch.nn.functional.pad(exact, (0, n - exact.shape[-1]))[..., :k]  # J^T J has n eigenvalues
    res = probes.block_lanczos_top(
        probes.matrix_operator(J), k, block=block, tol=1e-12, generator=torch.Generator().manual_seed(seed)
    )
    assert res.converged and res.values.shape == (J.shape[0], k)
    torch.testing.assert_close(res.values, exact, rtol=1e-7, atol=1e-6 * float(exact[..., 0].max()))


def test_block_lanczos_top_stops_on_its_residual_and_checks_its_arguments():
    """On a planted spectrum with a wide gap the top value converges long before the basis
    spans d_in; a step cap below that reports ``converged=False``; bad k and block are refused."""
    J, _ = planted(d=48, weight=0.5, sigma2=0.3)
    op = probes.matrix_operator(J)
    res = probes.block_lanczos_top(op, 1, block=2, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert res.converged and res.iterations < 48 // 2
    torch.testing.assert_close(res.values, torch.ones(1, 1, dtype=J.dtype), rtol=1e-9, atol=0)
    capped = probes.block_lanczos_top(op, 3, block=1, tol=1e-14, max_iter=2, generator=torch.Generator().manual_seed(0))
    assert not capped.converged and capped.iterations == 2 and capped.values.shape == (1, 3)
    with pytest.raises(ValueError, match="k must be in"):
        probes.block_lanczos_top(op, 49)
    with pytest.raises(ValueError, match="block"):
        probes.block_lanczos_top(op, 1, block=0)


@given(matrices(), seeds)
def test_matrix_operator_applies_J_and_its_transpose_with_leading_dims(J, seed):
    g = torch.Generator().manual_seed(seed)
    op = probes.matrix_operator(J)
    v = torch.randn(3, J.shape[0], J.shape[2], generator=g, dtype=torch.float64)
    u = torch.randn(3, J.shape[0], J.shape[1], generator=g, dtype=torch.float64)
    assert op.broadcasts and op.batch_shape == (J.shape[0],) and (op.d_out, op.d_in) == J.shape[1:]
    np.testing.assert_allclose(
        op.matvec(v).numpy(), np.einsum("bmn,sbn->sbm", J.numpy(), v.numpy()), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        op.rmatvec(u).numpy(), np.einsum("bmn,sbm->sbn", J.numpy(), u.numpy()), rtol=1e-12, atol=1e-12
    )


def test_lanczos_on_mlp_jacobians_matches_exact_and_needs_few_iterations():
    g = torch.Generator().manual_seed(0)
    E, h, d, N = 3, 64, 32, 20
    W1, b1, W2, x = (
        torch.randn(E, h, d, generator=g),
        torch.randn(E, h, generator=g),
        torch.randn(E, d, h, generator=g),
        torch.randn(N, d, generator=g),
    )
    exact = probes.singular_values(probes.expert_jacobians(W1, b1, W2, x))[..., 0]
    lz = probes.lanczos_sigma1(probes.mlp_jacobian_operator(W1, b1, W2, x), tol=1e-12, generator=g)
    torch.testing.assert_close(lz.values, exact, rtol=1e-9, atol=0)
    assert lz.converged


def test_lanczos_start_nearly_orthogonal_to_top_direction_is_not_trusted():
    """A start with 1e-6 of its weight on v_1: one Lanczos run settles on sigma_2 and its residual
    test passes there (the trap is real); the independent second start recovers sigma_1."""
    J, v0 = planted()
    trapped = probes.lanczos_sigma1(batch_op(J), tol=1e-4, v0=v0, starts=1)
    assert trapped.converged and trapped.values.item() == pytest.approx(0.9, rel=1e-4)
    lz = probes.lanczos_sigma1(batch_op(J), tol=1e-4, v0=v0, generator=torch.Generator().manual_seed(0))
    assert lz.converged and lz.values.item() == pytest.approx(1.0, rel=1e-4 / 2)


def test_power_iteration_start_nearly_orthogonal_to_top_direction_is_not_trusted():
    """Power iteration's trap is the same: from the planted start the estimate stalls at sigma_2
    and stops changing, so one chain reports convergence there; a second chain does not."""
    J, v0 = planted()
    trapped = probes.power_iteration_sigma1(batch_op(J), tol=1e-8, v0=v0, starts=1)
    assert trapped.converged and trapped.values.item() == pytest.approx(0.9, rel=1e-4)
    pw = probes.power_iteration_sigma1(batch_op(J), tol=1e-8, v0=v0, generator=torch.Generator().manual_seed(0))
    r = 0.9**2  # (sigma_2 / sigma_1)^2: the promised error is about tol * r / (1 - r)
    assert pw.converged and pw.values.item() == pytest.approx(1.0, rel=10 * 1e-8 * r / (1 - r))
    torch.testing.assert_close(pw.vectors.abs(), torch.linalg.svd(J).Vh[:, 0].abs(), rtol=0, atol=1e-3)


def test_lanczos_max_error_over_many_random_expert_jacobians():
    """10,000 random 16 x 16 expert Jacobians in one batched call, at tol = 1e-3: a single start
    settled on sigma_2 for 5 of them (errors up to 5%). The promise, sigma within tol / 2, must hold
    for the worst of them, not on average."""
    g = torch.Generator().manual_seed(0)
    E, h, d, N, tol = 4, 32, 16, 2500, 1e-3
    W1, b1 = torch.randn(E, h, d, generator=g) / d**0.5, torch.randn(E, h, generator=g)
    W2, x = torch.randn(E, d, h, generator=g) / h**0.5, torch.randn(N, d, generator=g)
    exact = torch.linalg.svdvals(probes.expert_jacobians(W1, b1, W2, x))[..., 0]
    lz = probes.lanczos_sigma1(probes.mlp_jacobian_operator(W1, b1, W2, x), tol=tol, generator=g)
    worst = ((lz.values - exact).abs() / exact).max().item()
    assert lz.converged and worst <= tol / 2, f"max relative error {worst:.2e} > tol / 2"


@pytest.fixture
def default_float32():
    """Torch's own default dtype, undoing this module's float64 for one test: a result that takes
    the default dtype instead of its input's looks right when both are float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_arpack_returns_the_operators_dtype(default_float32, dtype, rtol):
    J = torch.randn(1, 20, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = {} if dtype == torch.float64 else {"dtype": dtype}  # float64 is the default
    ar = probes.arpack_sigma1(batch_op(J.to(dtype)), tol=1e-12, **kw)
    exact = torch.linalg.svdvals(J)[:, 0]
    assert ar.values.dtype == dtype and ar.values.shape == (1,)
    torch.testing.assert_close(ar.values.double(), exact, rtol=rtol, atol=0)


def test_power_iteration_reports_non_convergence():
    J = torch.diag(torch.tensor([1.0, 0.999999, 0.5]))[None]
    op = probes.JacobianOperator(lambda v: v @ J[0].T, lambda u: u @ J[0], (1,), 3, 3)
    res = probes.power_iteration_sigma1(op, tol=1e-15, max_iter=3, generator=torch.Generator().manual_seed(1))
    assert not res.converged and res.iterations == 3


@given(matrices())
def test_energy_curve_is_a_normalised_cumulative_distribution(J):
    curve = probes.energy_curve(probes.singular_values(J))
    assert (curve.diff(dim=-1) >= -1e-12).all()
    torch.testing.assert_close(curve[..., -1], torch.ones(J.shape[0]))
    s = probes.singular_values(J)
    torch.testing.assert_close(curve[..., 0], s[..., 0] ** 2 / (s**2).sum(-1))


@given(matrices(), st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_k_at_is_monotone_in_tau(J, t1, t2):
    curve = probes.energy_curve(probes.singular_values(J))
    lo, hi = sorted((t1, t2))
    assert (probes.k_at(curve, lo) <= probes.k_at(curve, hi)).all()
    assert (probes.k_at(curve, hi) <= curve.shape[-1]).all()


def test_k_at_follows_scikit_learn_rule():
    curve = torch.tensor([0.5, 0.8, 0.9, 0.95, 1.0])
    assert probes.k_at(curve, 0.85).item() == 3
    assert probes.k_at(curve, 0.9).item() == 4  # strictly above tau, as sklearn's side="right"
    assert probes.value_at(curve, 2).item() == 0.8


# --------------------------------------------------------------------------- cosine
@given(matrices(min_dim=2), st.floats(0.01, 100.0))
def test_cosine_matrix_properties(M, scale):
    C = probes.cosine_matrix(M)
    torch.testing.assert_close(C, C.T)
    assert (C.abs() <= 1).all()
    torch.testing.assert_close(C.diagonal(), torch.ones(M.shape[0]))
    torch.testing.assert_close(probes.cosine_matrix(M * scale), C)
    v = M.reshape(M.shape[0], -1).numpy()
    ref = (v @ v.T) / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    np.testing.assert_allclose(C.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_cosine_null_matches_random_matrices():
    d = 16
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4000, d * d, generator=g), torch.randn(4000, d * d, generator=g)
    cos = torch.nn.functional.cosine_similarity(A, B, dim=1).numpy()
    null = probes.cosine_null(d * d)
    assert null.std() == pytest.approx(1 / d, rel=1e-2)
    import scipy.stats

    assert scipy.stats.kstest(cos, null.cdf).pvalue > 0.01


# --------------------------------------------------------------------------- weighted PCA
@given(weighted_samples())
def test_uniform_weights_equal_plain_pca(hw):
    h, _ = hw
    pca = probes.weighted_pca(h, torch.ones(h.shape[0]))
    ref = np.sort(np.linalg.eigvalsh(np.cov(h.numpy(), rowvar=False, bias=True).reshape(h.shape[1], h.shape[1])))[::-1]
    np.testing.assert_allclose(pca.eigenvalues.numpy(), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pca.mean.numpy(), h.numpy().mean(0), rtol=1e-9, atol=1e-12)


@given(weighted_samples(), st.floats(1e-3, 1e3))
def test_weighted_pca_invariant_to_scaling_all_weights(hw, c):
    h, w = hw
    a, b = probes.weighted_pca(h, w), probes.weighted_pca(h, w * c)
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=1e-9, atol=1e-12)


@given(weighted_samples(), st.data())
def test_duplicated_sample_equals_doubled_weight(hw, data):
    h, w = hw
    i = data.draw(st.integers(0, h.shape[0] - 1))
    dup = probes.weighted_pca(torch.cat([h, h[i : i + 1]]), torch.cat([w, w[i : i + 1]]))
    w2 = w.clone()
    w2[i] *= 2
    torch.testing.assert_close(dup.eigenvalues, probes.weighted_pca(h, w2).eigenvalues, rtol=1e-9, atol=1e-12)


@given(weighted_samples())
def test_weighted_pca_matches_numpy_weighted_covariance(hw):
    h, w = hw
    ref = np.cov(h.numpy(), rowvar=False, aweights=w.numpy(), bias=True).reshape(h.shape[1], h.shape[1])
    np.testing.assert_allclose(
        probes.weighted_pca(h, w).eigenvalues.numpy(), np.linalg.eigvalsh(ref)[::-1], rtol=1e-9, atol=1e-12
    )


@given(st.integers(1, 8), seeds)
def test_planted_low_rank_covariance_is_recovered(rank, seed):
    """Variance planted in `rank` equal directions plus tiny noise: k@0.9 is the smallest k with
    k/rank > 0.9, i.e. exactly `rank` (sklearn rule, curve reaches 1 only at k = rank)."""
    D, N = 20, 2000
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:, :rank]
    z = torch.randn(N, rank, generator=g)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / N)).T  # whitened: a flat planted spectrum
    h = z @ basis.T + 1e-4 * torch.randn(N, D, generator=g)
    pca = probes.weighted_pca(h, torch.ones(N))
    assert pca.k_at(0.9).item() == rank
    assert pca.cumvar_at(min(rank, D)).item() == pytest.approx(1.0, abs=1e-6)


@given(st.integers(2, 12), st.integers(1, 30), st.integers(0, 2), seeds)
def test_pca_of_fewer_points_than_dimensions_matches_numpys_covariance(N, extra, zeros, seed):
    """N < D (a checkpoint's routed tokens at large width) through the Gram route: its
    eigenvalues, its N components' reconstruction of the covariance, the top subspaces and the
    rounding floor against numpy's weighted covariance (D x D eigh), some weights zero."""
    D, g = N + extra, torch.Generator().manual_seed(seed)
    h = torch.randn(2, N, D, generator=g, dtype=torch.float64) * torch.rand(D, generator=g, dtype=torch.float64).add(
        0.1
    )
    w = torch.rand(2, N, generator=g, dtype=torch.float64) + 0.05
    w[:, : min(zeros, N - 2)] = 0
    pca = probes.weighted_pca(h, w, vectors=True, method="gram")  # "auto" takes it above GRAM_MIN_D only
    assert pca.components.shape == (2, D, N)
    for e in range(2):
        C = np.cov(h[e].numpy(), rowvar=False, aweights=w[e].numpy(), bias=True)
        lam, vec = np.linalg.eigh(C)
        lam, vec = lam[::-1].clip(0), vec[:, ::-1]
        scale = lam[0]
        np.testing.assert_allclose(pca.eigenvalues[e].numpy(), lam, rtol=1e-9, atol=1e-11 * scale)
        Q = pca.components[e].numpy()
        np.testing.assert_allclose(Q.T @ Q, np.eye(N), atol=1e-12)
        np.testing.assert_allclose(Q @ np.diag(pca.eigenvalues[e, :N].numpy()) @ Q.T, C, atol=1e-11 * scale)
        assert (pca.eigenvalues[e, N:] == 0).all()
        r = int((lam > 1e-9 * scale).sum())  # the points' span: its projector is unique
        np.testing.assert_allclose(Q[:, :r] @ Q[:, :r].T, vec[:, :r] @ vec[:, :r].T, atol=1e-9)
        mu = np.average(h[e].numpy(), axis=0, weights=w[e].numpy())
        floor = (probes.pca.NO_VARIANCE_ULPS * np.finfo(np.float64).eps) ** 2 * (mu @ mu + np.trace(C))
        assert float(pca.floor[e]) == pytest.approx(floor, rel=1e-9)
    torch.testing.assert_close(probes.weighted_pca(h, w, method="gram").eigenvalues, pca.eigenvalues)
    assert probes.weighted_pca(h, w, vectors=True).components.shape == (2, D, D)  # auto: covariance at small D
    with pytest.raises(ValueError, match="method must be 'auto', 'gram' or 'covariance'"):
        probes.weighted_pca(h, w, method="svd")
    full = pca.subspace(D)  # beyond N: directions of eigenvalue 0, completed by QR
    torch.testing.assert_close(full.transpose(-1, -2) @ full, torch.eye(D, dtype=full.dtype).expand(2, D, D))
    torch.testing.assert_close(full[..., :N], pca.components)


def test_weighted_pca_batched_over_experts_matches_one_by_one():
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(50, 5, generator=g), torch.rand(3, 50, generator=g)
    batched = probes.weighted_pca(h, w)
    for e in range(3):
        torch.testing.assert_close(batched.eigenvalues[e], probes.weighted_pca(h, w[e]).eigenvalues)


# --------------------------------------------------------------------------- routing
@given(st.integers(1, 8), st.integers(1, 8), seeds, st.floats(0.1, 10.0))
def test_topk_gates_have_k_nonzeros_summing_to_one(E, k, seed, temperature):
    k = min(k, E)
    logits = torch.randn(30, E, generator=torch.Generator().manual_seed(seed)) * 3
    g = route(logits, "topk", top_k=k, temperature=temperature)
    assert ((g > 0).sum(-1) == k).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(30))
    assert (g.argmax(-1) == logits.argmax(-1)).all()


@given(st.integers(1, 8), seeds)
def test_soft_gates_are_all_positive_on_the_simplex(E, seed):
    g = route(torch.randn(30, E, generator=torch.Generator().manual_seed(seed)), "soft")
    assert (g > 0).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(30))


@pytest.mark.parametrize("k", [0, -1, 9])
def test_invalid_k_is_a_clear_error(k):
    with pytest.raises(ValueError, match="1 <= k <= E"):
        route(torch.zeros(4, 8), "topk", top_k=k)


# --------------------------------------------------------------------------- LayerNorm, the whole MoE layer, routing entropy
@settings(deadline=None, max_examples=20)
@given(st.integers(2, 12), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_layer_norm_and_its_jacobian_match_torch(d, n, seed):
    g = torch.Generator().manual_seed(seed)
    x, w, b = (
        torch.randn(n, d, generator=g, dtype=torch.float64) * 3,
        torch.randn(d, generator=g, dtype=torch.float64),
        torch.randn(d, generator=g, dtype=torch.float64),
    )
    torch.testing.assert_close(nn.layer_norm(x, w, b), torch.nn.functional.layer_norm(x, (d,), w, b))
    ref = torch.func.vmap(torch.func.jacrev(lambda v: torch.nn.functional.layer_norm(v, (d,), w, b)))(x)
    torch.testing.assert_close(nn.layer_norm_jacobian(x, w), ref)


@pytest.mark.parametrize("routing", ["topk", "soft"])
def test_effective_moe_jacobian_matches_autograd_of_the_layer(routing):
    """A.2: J_MoE = sum_e g_e J_e + sum_e f_e (dg_e/dx)^T equals autograd through the model's own
    forward (Top-k: away from ties, where the selection is locally constant)."""
    from moegeo.model import MLPMoE

    layer = MLPMoE(
        n_experts=5, d_model=6, d_hidden=7, routing=routing, top_k=2, temperature=0.7, seeds=(3,), dtype=torch.float64
    )
    p = layer.params(0)
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = torch.stack([torch.autograd.functional.jacobian(lambda v: layer(v[None])[0], xi) for xi in x])  # per point:
    # the sparse Top-k dispatch packs tokens by data-dependent counts, which vmap cannot trace
    got = probes.moe_jacobian(p.W1, p.b1, p.W2, p.b2, x, p.gates(x), p.Wr, temperature=p.temperature)
    torch.testing.assert_close(got, ref.detach())


def test_routing_entropy_matches_scipy():
    g = torch.softmax(torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    g[0] = torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)
    g[1] = 0.2
    ref = scipy.stats.entropy(g.numpy(), axis=1)
    torch.testing.assert_close(probes.routing_entropy(g), torch.as_tensor(ref))
    assert probes.routing_entropy(g)[1] == pytest.approx(math.log(5))


# --------------------------------------------------------------------------- batched Lanczos on MLP experts
@settings(deadline=None)
@given(mlp_experts(), seeds)
def test_mlp_lanczos_matches_svdvals_for_every_matrix(params, seed):
    W1, b1, W2, x = params
    exact = torch.linalg.svdvals(probes.expert_jacobians(W1, b1, W2, x))[..., 0]
    r = probes.mlp_lanczos_sigma1(W1, b1, W2, x, tol=1e-12, generator=torch.Generator().manual_seed(seed))
    assert r.values.shape == exact.shape and r.values.dtype == x.dtype and r.converged
    torch.testing.assert_close(r.values, exact, rtol=1e-8, atol=1e-12 * max(1.0, exact.max().item()))


@settings(deadline=None)
@given(mlp_experts(), seeds)
def test_mlp_gram_product_is_jtj_v_of_the_materialised_jacobians(params, seed):
    W1, b1, W2, x = params
    J = probes.expert_jacobians(W1, b1, W2, x)  # (E, N, d_out, d), by the closed form (autograd-checked above)
    v = torch.randn(J.shape[0], J.shape[1], J.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    a = nn.gelu_grad(probes.expert_preactivations(W1, b1, x))
    out = probes.mlp_gram_product(v.clone(), W1, W2, a)
    torch.testing.assert_close(out, torch.einsum("enji,enjk,enk->eni", J, J, v), rtol=1e-10, atol=1e-12)


@settings(deadline=None, max_examples=25)
@given(
    st.integers(1, 40),
    st.sampled_from([1, batched_lanczos.SMALL_TRIDIAGONAL_BATCH, batched_lanczos.SMALL_TRIDIAGONAL_BATCH + 1]),
    seeds,
)
def test_tridiagonal_top_eigenvalue_matches_scipy_on_both_paths(k, B, seed):
    """The Ritz value of mlp_lanczos_sigma1: LAPACK for a small batch, Sturm bisection above
    SMALL_TRIDIAGONAL_BATCH; both against scipy's tridiagonal eigensolver, matrix by matrix."""
    g = torch.Generator().manual_seed(seed)
    alpha = torch.randn(k, B, generator=g, dtype=torch.float64)
    b = torch.rand(k - 1, B, generator=g, dtype=torch.float64) * torch.randint(0, 2, (k - 1, B), generator=g)  # some 0
    b2 = b.square().clamp_min(torch.finfo(torch.float64).tiny)
    radius = torch.nn.functional.pad(b, (0, 0, 0, 1)) + torch.nn.functional.pad(b, (0, 0, 1, 0))
    lo, hi = alpha.amax(0), (alpha + radius).amax(0)
    got = batched_lanczos._tridiagonal_top_eigenvalue(alpha, b2, lo, hi, 60)
    ref = torch.tensor(
        [
            scipy.linalg.eigvalsh_tridiagonal(
                alpha[:, i].numpy(), b[:, i].numpy(), select="i", select_range=(k - 1, k - 1)
            )[0]
            for i in range(B)
        ]
    )
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    # lower=True after 20 halvings: a lower bound within (hi - lo) / 2^20 (the LAPACK path: the value itself)
    low = batched_lanczos._tridiagonal_top_eigenvalue(alpha, b2, lo, hi, 20, lower=True)
    slack = 1e-12 * ref.abs().clamp_min(1)
    assert bool((low <= ref + slack).all()) and bool((ref - low <= (hi - lo) / 2**20 + slack).all())


@settings(deadline=None, max_examples=15)
@given(st.integers(1, 3), st.integers(8, 16), st.integers(1, 120), st.sampled_from([1, 2, 3]), seeds)
@example(3, 16, 120, 1, 0)  # 360 matrices: the bisection path, and checks at every step from 7
def test_mlp_lanczos_matrices_leave_the_batch_with_their_own_values(E, d, N, check_every, seed):
    """Matrices stop at different checks and the batch is compacted (each expert's open slots
    first, padded): every value must still be its own matrix's sigma_1, on the LAPACK path
    and, with more than SMALL_TRIDIAGONAL_BATCH matrices, the bisection path."""
    g = torch.Generator().manual_seed(seed)
    W1, b1 = torch.randn(E, 2 * d, d, generator=g), torch.randn(E, 2 * d, generator=g)
    W2, x = torch.randn(E, d, 2 * d, generator=g), torch.randn(N, d, generator=g) * torch.rand(N, 1, generator=g) * 3
    exact = torch.linalg.svdvals(probes.expert_jacobians(W1, b1, W2, x))[..., 0]
    r = probes.mlp_lanczos_sigma1(W1, b1, W2, x, tol=1e-12, min_iter=6, check_every=check_every, generator=g)
    torch.testing.assert_close(r.values, exact, rtol=1e-8, atol=0)


def test_mlp_lanczos_compacts_the_batch_as_matrices_stop(monkeypatch):
    """Slots of stopped matrices are dropped: the J^T J products shrink to the slow matrices
    (padded per expert), every value is still that matrix's own sigma_1, and each matrix's
    final value is solved exactly once (a stopped slot kept as padding is never tested again).
    The points' scales span three decades, so the matrices stop at different checks; the first
    Ritz values of the 3 x 200 matrices use bisection."""
    g = torch.Generator().manual_seed(5)
    E, d, N = 3, 24, 200
    W1, b1 = torch.randn(E, 2 * d, d, generator=g), torch.randn(E, 2 * d, generator=g)
    W2, x = torch.randn(E, d, 2 * d, generator=g), torch.randn(N, d, generator=g) * torch.logspace(-2, 1, N)[:, None]
    rows, final = [], []
    product, top = probes.mlp_gram_product, batched_lanczos._tridiagonal_top_eigenvalue
    monkeypatch.setattr(batched_lanczos, "mlp_gram_product", lambda v, *a: rows.append(v.shape[1]) or product(v, *a))

    def solve(A, *args, lower=False):  # a final value (lower=False) is solved for every matrix in A
        final.extend([] if lower else [A.shape[1]])
        return top(A, *args, lower=lower)

    monkeypatch.setattr(batched_lanczos, "_tridiagonal_top_eigenvalue", solve)
    r = probes.mlp_lanczos_sigma1(W1, b1, W2, x, tol=1e-10, min_iter=4, check_every=2, generator=g)
    exact = torch.linalg.svdvals(probes.expert_jacobians(W1, b1, W2, x))[..., 0]
    torch.testing.assert_close(r.values, exact, rtol=1e-8, atol=0)
    assert rows[0] == N and rows[-1] < N and rows == sorted(rows, reverse=True), rows
    assert len(rows) == r.iterations and r.products == pytest.approx(sum(rows) / N)
    assert sum(final) == E * N, final


def test_mlp_lanczos_zero_jacobian_stops_at_its_first_test():
    """An expert with W2 = 0 has J = 0: its Sturm test at 0 cannot pass (a zero pivot is not
    negative), but its Gershgorin bound, 0, shows the value cannot move. It must stop at the
    first test with sigma_1 = 0 and not hold every other expert's batch open to step d."""
    g = torch.Generator().manual_seed(0)
    E, d, N = 2, 40, 300
    W1, b1 = torch.randn(E, 2 * d, d, generator=g), torch.randn(E, 2 * d, generator=g)
    W2, x = torch.randn(E, d, 2 * d, generator=g), torch.randn(N, d, generator=g)
    W2[1] = 0
    r = probes.mlp_lanczos_sigma1(W1, b1, W2, x, tol=1e-8, generator=g)
    assert bool((r.values[1] == 0).all()) and r.iterations < d
    exact = torch.linalg.svdvals(probes.expert_jacobians(W1, b1, W2, x))[..., 0]
    torch.testing.assert_close(r.values, exact, rtol=1e-7, atol=0)


def planted_mlp(d=24, weight=1e-6, sigma2=0.9):
    """``planted()`` as one expert at one point: W1 = V^T, x = b1 = 0 (so GELU' = 1/2), W2 = 2 U S;
    then J = U S V^T, and the planted start carries ``weight`` on v_1."""
    J, v0 = planted(d, weight, sigma2=sigma2)
    U, s, Vh = torch.linalg.svd(J[0])
    return (Vh[None], torch.zeros(1, d), 2 * (U * s)[None], torch.zeros(1, d)), v0[None], s[0].item()


def test_mlp_lanczos_start_nearly_orthogonal_to_top_direction_is_not_trusted():
    """The planted start (1e-6 of its weight on v_1) alone, with weakened guards (a check every
    2 steps from step 4), stalls on sigma_2 = 0.9 and stands still there long enough to pass the
    movement test. At the default guards (at least 16 steps, still over 4) the same lone start
    finds sigma_1, and so does the default, which joins a given start with a random one."""
    args, v0, sigma1 = planted_mlp()
    trapped = probes.mlp_lanczos_sigma1(*args, tol=1e-4, min_iter=4, check_every=2, starts=0, v0=v0)
    assert trapped.converged and trapped.values.item() == pytest.approx(0.9, rel=1e-3)
    alone = probes.mlp_lanczos_sigma1(*args, tol=1e-4, starts=0, v0=v0)
    assert alone.converged and alone.values.item() == pytest.approx(sigma1, rel=1e-6)
    r = probes.mlp_lanczos_sigma1(*args, tol=1e-4, v0=v0, generator=torch.Generator().manual_seed(0))
    assert r.converged and r.values.item() == pytest.approx(sigma1, rel=1e-8)


def test_mlp_lanczos_max_error_over_many_random_expert_jacobians():
    """4 x 1000 random 16 x 16 expert Jacobians in one call at tol = 1e-6: the worst, not the mean."""
    g = torch.Generator().manual_seed(0)
    E, h, d, N = 4, 64, 32, 1000  # d above min_iter + check_every: the stopping test decides
    W1, b1 = torch.randn(E, h, d, generator=g) / d**0.5, torch.randn(E, h, generator=g)
    W2, x = torch.randn(E, d, h, generator=g) / h**0.5, torch.randn(N, d, generator=g)
    exact = torch.linalg.svdvals(probes.expert_jacobians(W1, b1, W2, x))[..., 0]
    r = probes.mlp_lanczos_sigma1(W1, b1, W2, x, tol=1e-6, generator=g)
    worst = ((r.values - exact).abs() / exact).max().item()
    assert worst <= 1e-6, f"max relative error {worst:.2e}"


def test_mlp_lanczos_overflow_is_an_error_not_nan():
    """Finite float32 weights of 1e12 make J^T J ~ 1e48, beyond float32: a clear error on both
    Ritz paths (LAPACK for a small batch raised its own 'failed to converge', bisection for a
    large one returned NaN with converged=True)."""
    g = torch.Generator().manual_seed(0)
    for N in (2, batched_lanczos.SMALL_TRIDIAGONAL_BATCH + 1):
        f32 = dict(generator=g, dtype=torch.float32)  # explicit: this module's default dtype is float64
        W1, b1 = torch.randn(1, 16, 8, **f32) * 1e12, torch.zeros(1, 16, dtype=torch.float32)
        W2, x = torch.randn(1, 8, 16, **f32) * 1e12, torch.randn(N, 8, **f32) * 1e-13
        with pytest.raises(ValueError, match="Lanczos overflowed in torch.float32"):
            probes.mlp_lanczos_sigma1(W1, b1, W2, x, generator=g)
        r = probes.mlp_lanczos_sigma1(W1.double(), b1.double(), W2.double(), x.double(), generator=g)
        assert torch.isfinite(r.values).all() and r.converged


def test_mlp_lanczos_rejects_bad_input():
    W1, b1, W2, x = torch.randn(2, 6, 4), torch.randn(2, 6), torch.randn(2, 4, 6), torch.randn(3, 4)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        probes.mlp_lanczos_sigma1(W1, b1, W2, x.long())
    with pytest.raises(ValueError, match="v0 must have shape"):
        probes.mlp_lanczos_sigma1(W1, b1, W2, x, v0=torch.randn(2, 4))
    with pytest.raises(ValueError, match="starts"):
        probes.mlp_lanczos_sigma1(W1, b1, W2, x, starts=0)
    with pytest.raises(ValueError, match="starts"):
        probes.mlp_lanczos_sigma1(W1, b1, W2, x, starts=-1, v0=torch.randn(2, 3, 4))
