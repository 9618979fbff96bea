"""sigma_1 and full spectra of every per-point expert Jacobian, and how each method scales with d.

Every fast method is checked against exact float64 SVD inside its benchmark: max relative
error of sigma_1 <= 1e-4 (recorded in extra_info with the iterations used).
"""

import numpy as np
import pytest
import torch
from problems import PAPER, Problem, vmap_jacobians

from moegeo import nn, probes

TOL = 1e-4
P = Problem(**PAPER)


STARTS = 2  # the default starts of power_iteration_sigma1 and lanczos_sigma1: one J^T J product each per step


def _power(op):
    r = probes.power_iteration_sigma1(
        op, tol=1e-6, max_iter=20000, dtype=torch.float32, generator=torch.Generator().manual_seed(0), starts=STARTS
    )
    return r.values, r.iterations, STARTS * r.iterations


def _lanczos(op):
    r = probes.lanczos_sigma1(
        op, tol=1e-6, dtype=torch.float32, generator=torch.Generator().manual_seed(0), starts=STARTS
    )
    return r.values, r.iterations, STARTS * r.iterations


def _mlp_lanczos(args):
    r = probes.mlp_lanczos_sigma1(*args, tol=1e-6, generator=torch.Generator().manual_seed(0))
    return r.values, r.iterations, r.products


def materialised_op(J):
    return probes.JacobianOperator(
        lambda v: torch.einsum("...oi,...i->...o", J, v),
        lambda u: torch.einsum("...oi,...o->...i", J, u),
        J.shape[:-2],
        J.shape[-1],
        J.shape[-2],
    )


SIGMA1 = {
    "vmap_jacrev+svdvals": lambda a: (probes.singular_values(vmap_jacobians("rev", *a))[..., 0], 1),
    "closed_form+svdvals": lambda a: (probes.singular_values(probes.expert_jacobians(*a))[..., 0], 1),
    "closed_form+gram_eigvalsh": lambda a: (
        probes.singular_values(probes.expert_jacobians(*a), method="gram")[..., 0],
        1,
    ),
    "closed_form+power": lambda a: _power(materialised_op(probes.expert_jacobians(*a))),
    "closed_form+lanczos": lambda a: _lanczos(materialised_op(probes.expert_jacobians(*a))),
    "matrix_free_power": lambda a: _power(probes.mlp_jacobian_operator(*a)),
    "matrix_free_lanczos": lambda a: _lanczos(probes.mlp_jacobian_operator(*a)),
    "matrix_free_batched_lanczos": _mlp_lanczos,
}


def record(benchmark, p, method, result, baseline=False):
    sigma1, iterations, *products = result  # products: over the whole batch, from a method that drops finished matrices
    # every matrix the method solved, each against its exact float64 SVD: no broadcasting, no sample
    assert sigma1.shape == p.exact_sigma1.shape, f"{method}: {tuple(sigma1.shape)} != {tuple(p.exact_sigma1.shape)}"
    err = p.rel_error(sigma1)  # the max over all of them
    benchmark.extra_info.update(
        method=method,
        size=p.label,
        d=p.d,
        max_rel_error=err,
        iterations=iterations,
        products=products[0] if products else iterations,
        baseline=baseline,
    )
    assert err <= TOL, f"{method}: sigma_1 relative error {err:.2e} > {TOL}"


@pytest.mark.parametrize("method", SIGMA1)
def test_sigma1_paper(benchmark, method):
    benchmark.group = f"sigma1 of all E*N Jacobians [{P.label}]"
    slow = "power" in method  # thousands of iterations: one round says enough
    result = benchmark.pedantic(SIGMA1[method], (P.args,), rounds=1 if slow else 3, warmup_rounds=0 if slow else 1)
    record(benchmark, P, method, result, baseline=method == "vmap_jacrev+svdvals")


def test_sigma1_paper_arpack(benchmark):
    """ARPACK (scipy svds over a LinearOperator) is one matrix per call: timed on 64 of the
    4096 Jacobians; extra_info.scale = 64 gives the all-Jacobian estimate."""
    sub = Problem(E=1, d=P.d, h=P.h, N=64)

    def run():
        ops = [probes.mlp_jacobian_operator(sub.W1, sub.b1, sub.W2, sub.x[i : i + 1]) for i in range(sub.N)]
        results = [probes.arpack_sigma1(op, tol=1e-10) for op in ops]
        # iterations: operator applications per matrix, averaged
        return torch.stack([r.values.reshape(()) for r in results])[None], sum(r.iterations for r in results) // len(
            results
        )

    benchmark.group = f"sigma1 of all E*N Jacobians [{P.label}]"
    result = benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    record(benchmark, sub, "arpack_svds(64 of 4096)", result)
    benchmark.extra_info["scale"] = P.E * P.N / sub.N


TRAP_SEEDS = range(100, 120)  # 20 paper-size problems none of the development runs used (they used 0-60, 200-399)


def test_sigma1_paper_batched_lanczos_many_problems(benchmark):
    """The trap check of ``mlp_lanczos_sigma1`` at its defaults (one Gaussian start): 20 further
    paper-size problems, 81,920 Jacobians, each against exact float64 SVD; asserts that none is
    off by more than 1e-4 (a start that settles on sigma_2 would be), records the worst error."""
    problems = [Problem(**PAPER, seed=s) for s in TRAP_SEEDS]

    def run():
        out = [
            probes.mlp_lanczos_sigma1(*p.args, tol=1e-6, generator=torch.Generator().manual_seed(p.seed))
            for p in problems
        ]
        return out

    benchmark.group = f"sigma1 trap check: {len(problems)} problems [{P.label}]"
    results = benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    errors = torch.cat(
        [((r.values.double() - p.exact_sigma1).abs() / p.exact_sigma1).reshape(-1) for r, p in zip(results, problems)]
    )
    benchmark.extra_info.update(
        method="matrix_free_batched_lanczos",
        matrices=errors.numel(),
        above_tol=int((errors > TOL).sum()),
        max_rel_error=float(errors.max()),
        iterations=max(r.iterations for r in results),
    )
    assert int((errors > TOL).sum()) == 0, f"{int((errors > TOL).sum())} of {errors.numel()} off by more than {TOL}"


@pytest.mark.parametrize("method", ["svdvals", "gram_eigvalsh"])
def test_full_spectra_paper(benchmark, method):
    """In float64, as the probes run them: Gram eigenvalues lose the small singular values in
    float32 (absolute error ~ eps sigma_1^2 / sigma)."""
    J = probes.expert_jacobians(P.W1, P.b1, P.W2, P.x)
    benchmark.group = f"full spectra of all E*N Jacobians, float64 [{P.label}]"
    s = benchmark.pedantic(
        probes.singular_values,
        (J,),
        dict(method="svd" if method == "svdvals" else "gram"),
        rounds=3,
        warmup_rounds=1,
    )
    # reference: numpy's LAPACK SVD, not the torch call under test (svdvals against itself is 0 by construction)
    ref = torch.from_numpy(np.linalg.svd(J.numpy(), compute_uv=False))
    assert s.shape == ref.shape
    # max over every value of every matrix, relative to the matrix's sigma_1: the Gram error is
    # absolute, ~eps sigma_1^2 / sigma, so relative to a tiny sigma it says nothing about the method
    err = float(((s.double() - ref).abs() / ref[..., :1]).max())
    benchmark.extra_info.update(method=method, size=P.label, max_rel_error=err, baseline=method == "svdvals")
    assert err <= TOL


# ---------------------------------------------------------------- scaling in d (h = 2d, E = 1, N = 8)
EXACT_D = [64, 128, 256, 512, 1024]
FREE_D = EXACT_D + [2048, 4096]
SCALING = {
    "closed_form+svdvals": (EXACT_D, SIGMA1["closed_form+svdvals"]),
    "closed_form+gram_eigvalsh": (EXACT_D, SIGMA1["closed_form+gram_eigvalsh"]),
    "matrix_free_power": (EXACT_D, SIGMA1["matrix_free_power"]),  # thousands of iterations beyond
    "matrix_free_lanczos": (FREE_D, SIGMA1["matrix_free_lanczos"]),
    "matrix_free_batched_lanczos": (FREE_D, SIGMA1["matrix_free_batched_lanczos"]),
}
PROBLEMS = {}


def scaled(d):
    if d not in PROBLEMS:
        PROBLEMS.clear()  # keep one size alive at a time (d = 4096 holds 2 x 32M weights)
        PROBLEMS[d] = Problem(E=1, d=d, h=2 * d, N=8)
    return PROBLEMS[d]


@pytest.mark.parametrize("d, method", [(d, m) for m, (ds, _) in SCALING.items() for d in ds])
def test_sigma1_scaling(benchmark, d, method):
    p = scaled(d)  # the reference is exact float64 SVD at every d (~7 min on one core at d = 4096, untimed)
    benchmark.group = "sigma1 scaling in d (h=2d, E=1, N=8)"
    result = benchmark.pedantic(
        SCALING[method][1], (p.args,), rounds=1 if d >= 512 or "power" in method else 3, warmup_rounds=0
    )
    record(benchmark, p, method, result, baseline=method == "closed_form+svdvals")


FLOOR_GROUP = "floor: one J^T J product (d=1024, h=2d, E=1, N=8)"


def test_gram_product_floor(benchmark):
    """One J^T J product for all N = 8 points at d = 1024 (h = 2d), ``probes.mlp_gram_product``,
    the four GEMMs of a matrix-free Lanczos step (4 x 2 d h N FLOPs). A matrix-free method needs
    one such product per iteration, so iterations x this time is its floor on this machine; the
    report sets the product's FLOP rate beside the square sgemm's and beside the time it takes
    just to read the weights (``test_gram_product_weights_read``)."""
    p = scaled(1024)
    W1, b1, W2, x = p.args
    a = nn.gelu_grad(probes.expert_preactivations(W1, b1, x))
    v = torch.randn(1, p.N, p.d, generator=torch.Generator().manual_seed(0))
    benchmark.group = FLOOR_GROUP
    out = benchmark.pedantic(probes.mlp_gram_product, (v, W1, W2, a), rounds=20, warmup_rounds=2)
    J = probes.expert_jacobians(W1.double(), b1.double(), W2.double(), x.double())
    ref = torch.einsum("enji,enjk,enk->eni", J, J, v.double())  # J^T J v, materialised in float64
    err = float(((out.double() - ref).norm(dim=-1) / ref.norm(dim=-1)).max())
    benchmark.extra_info.update(
        method="gram_product", d=p.d, flops=4 * 2 * p.d * p.h * p.N, bytes=4 * p.d * p.h * 4, max_rel_error=err
    )
    assert err <= TOL


def test_gram_product_weights_read(benchmark):
    """Reading the weights one J^T J product reads (W1 and W2, twice each; a sum per read), as a
    lower bound on what memory traffic alone would cost the product."""
    W1, _, W2, _ = scaled(1024).args

    def read():
        return W1.sum() + W2.sum() + W2.sum() + W1.sum()

    benchmark.group = FLOOR_GROUP
    total = benchmark.pedantic(read, rounds=20, warmup_rounds=2)
    ref = 2 * (W1.double().sum() + W2.double().sum())
    assert abs(float(total) - float(ref)) <= 1e-3 * float(W1.double().abs().sum() + W2.double().abs().sum())
    benchmark.extra_info.update(method="weights_read", d=1024, bytes=4 * W1.numel() * 2 + 4 * W2.numel() * 2)
