"""Routing-weighted PCA (A.4/B.5) of every expert at the paper's size, against numpy."""

import numpy as np
import pytest
import torch
from problems import PAPER, Problem

from moegeo import nn, probes

P = Problem(**PAPER)


@pytest.mark.parametrize("site", ["input", "hidden"])
def test_weighted_pca_paper(benchmark, site):
    g = torch.softmax(torch.randn(P.N, P.E, generator=torch.Generator().manual_seed(2)), -1)
    h = P.args[3] if site == "input" else nn.gelu(probes.expert_preactivations(*P.args[:2], P.args[3]))
    benchmark.group = f"weighted PCA, all experts [{P.label}]"
    pca = benchmark(probes.weighted_pca, h, g.T)
    e = 0
    hn = (h if h.dim() == 2 else h[e]).double().numpy()
    ref = np.linalg.eigvalsh(np.cov(hn, rowvar=False, aweights=g[:, e].double().numpy(), bias=True))[::-1]
    np.testing.assert_allclose(pca.eigenvalues[e].numpy(), ref, rtol=1e-6, atol=1e-9)
    benchmark.extra_info.update(method=f"weighted_pca[{site}]", size=P.label)
