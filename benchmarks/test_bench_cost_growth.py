"""How the cost of the whole per-layer probe pipeline (``moegeo.rows.probe_rows``) grows
with the number of points N, of experts E and the width d (h = 2d), one axis at a time.

One soft ``MLPMoE`` layer at its initialisation (float64 params, as the sweep probes them) on
the synthetic data of B.2. The report fits log time against log size per axis
(``bench_report.growth_plot``). Accuracy is asserted beside each timing: every returned value is
finite, and expert 0's pointwise sigma_1 row equals the g-weighted mean of sigma_1 of
``torch.linalg.svdvals`` of ``vmap(jacrev)`` Jacobians of the expert itself (rel. err <= 1e-10).
"""

import math

import pytest
import torch

from moegeo.config import Arm
from moegeo.data import make_data
from moegeo.model import MLPMoE
from moegeo.rows import probe_rows

GROUP = "probe pipeline cost growth"
BASE = dict(N=512, E=8, d=64)  # B.1's layer and B.2's batch
AXES = {"N": [128, 256, 512, 1024], "E": [2, 4, 8, 16], "d": [32, 64, 128]}
POINTS = [(axis, {**BASE, axis: v}) for axis, values in AXES.items() for v in values]
TOL = 1e-10


def layer(N, E, d):
    model = MLPMoE(n_experts=E, d_model=d, d_hidden=2 * d, routing="soft")
    x, _ = make_data(0, n_samples=N, d_model=d, dtype=torch.float64)
    return model.params(0), x


def reference_pointwise_sigma1(p, x) -> float:
    """Expert 0's g-weighted mean over points of sigma_1(J_0(x_i)), by autograd and LAPACK SVD."""

    def expert_fn(xi):
        return p.W2[0] @ torch.nn.functional.gelu(p.W1[0] @ xi + p.b1[0]) + p.b2[0]

    J = torch.func.vmap(torch.func.jacrev(expert_fn))(x)  # (N, d, d)
    g = p.gates(x)[:, 0]
    return float((g * torch.linalg.svdvals(J)[:, 0]).sum() / g.sum())


@pytest.mark.parametrize("axis, size", POINTS, ids=[f"{a}={s[a]}" for a, s in POINTS])
def test_probe_pipeline_cost_growth(benchmark, axis, size):
    p, x = layer(**size)
    benchmark.group = GROUP
    # one round: each costs seconds to tens of seconds, 11 points in all
    rows = benchmark.pedantic(probe_rows, (p, x, 0, Arm.SOFT, 0), rounds=1, warmup_rounds=0)
    ours = [
        r["value"]
        for r in rows
        if r["metric"] == "sigma1" and r["expert"] == 0 and r["reading"] == "jacobian=pointwise"
    ]
    ref = reference_pointwise_sigma1(p, x)
    err = abs(ours[0] - ref) / ref
    benchmark.extra_info.update(method=f"probe_rows ({axis})", axis=axis, **size, max_rel_error=err)
    assert all(math.isfinite(r["value"]) for r in rows), "probe_rows returned a NaN/Inf value"
    assert len(ours) == 1 and err <= TOL, f"sigma_1 of expert 0: rel. error {err:.1e} > {TOL}"
