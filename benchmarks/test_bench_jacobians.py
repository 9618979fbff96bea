"""Expert-local Jacobians for all experts and points (paper size, and small N with the naive loop)."""

import pytest
import torch
from problems import PAPER, Problem, loop_jacobians, vmap_jacobians

from moegeo import probes

SMALL = Problem(**{**PAPER, "N": 16})
PAPER_P = Problem(**PAPER)

METHODS = {
    "closed_form": lambda W1, b1, W2, x: probes.expert_jacobians(W1, b1, W2, x),
    "vmap_jacrev": lambda *a: vmap_jacobians("rev", *a),
    "vmap_jacfwd": lambda *a: vmap_jacobians("fwd", *a),
}


def check(J, p):
    ref = probes.expert_jacobians(p.W1, p.b1, p.W2, p.x)  # float64
    err = float((J.double() - ref).abs().max() / ref.abs().max())
    assert err <= 1e-5, f"Jacobian error {err:.2e}"
    return err


@pytest.mark.parametrize("method", [*METHODS, "autograd_row_loop"])
def test_jacobians_small(benchmark, method):
    benchmark.group = f"jacobians [{SMALL.label}]"
    fn = loop_jacobians if method == "autograd_row_loop" else METHODS[method]
    J = benchmark.pedantic(fn, SMALL.args, rounds=3 if method == "autograd_row_loop" else 10, warmup_rounds=1)
    benchmark.extra_info.update(
        method=method, size=SMALL.label, max_rel_error=check(J, SMALL), baseline=method == "vmap_jacrev"
    )


@pytest.mark.parametrize("method", METHODS)
def test_jacobians_paper(benchmark, method):
    benchmark.group = f"jacobians [{PAPER_P.label}]"
    J = benchmark.pedantic(METHODS[method], PAPER_P.args, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(
        method=method, size=PAPER_P.label, max_rel_error=check(J, PAPER_P), baseline=method == "vmap_jacrev"
    )


def test_mean_jacobian_closed_form(benchmark):
    """J̄_e (A.2): closed form vs the literal routing-weighted average of materialised J."""
    p = PAPER_P
    g = torch.softmax(torch.randn(p.N, p.E, generator=torch.Generator().manual_seed(1)), -1)
    benchmark.group = f"mean Jacobian [{p.label}]"
    out = benchmark(probes.mean_jacobian, *p.args, g)
    J = probes.expert_jacobians(*p.args)
    ref = torch.einsum("ne,enoi->eoi", g, J) / g.sum(0)[:, None, None]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
    benchmark.extra_info.update(method="closed_form", size=p.label)


def test_mean_jacobian_materialised(benchmark):
    p = PAPER_P
    g = torch.softmax(torch.randn(p.N, p.E, generator=torch.Generator().manual_seed(1)), -1)
    benchmark.group = f"mean Jacobian [{p.label}]"
    benchmark(lambda: torch.einsum("ne,enoi->eoi", g, probes.expert_jacobians(*p.args)) / g.sum(0)[:, None, None])
    benchmark.extra_info.update(method="materialised_average", size=p.label, baseline=True)
