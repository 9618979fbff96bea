"""The routers of the routers paper (arXiv 2605.12476) and its coupling identity.

The identity: for one token x routed to expert e, the gradient of any loss with respect to the
router row r_e, and with respect to every row of e's input weight W1_e, is parallel to x (they
differ only in scalar coefficients). It holds for every router whose scores are linear in x
(learned, loss-free); the auxiliary loss breaks the coupling by sending x-directed gradient to
router rows whose experts never saw the token.
"""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import seeds

from moegeo import probes
from moegeo.config import AUX_COEF, BIAS_RATE, CENTROID_EMA, Arm, LMConfig, Router
from moegeo.model import MLPMoE


def parallel_residual(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|| v - (v . x^) x^ || for each row of v: 0 iff the row is parallel to x."""
    u = x / x.norm()
    return (v - (v @ u)[..., None] * u).norm(dim=-1)


@st.composite
def routed_token(draw, routers=("learned", "loss_free")):
    E = draw(st.integers(2, 6))
    d, h = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    k = draw(st.integers(1, E))
    routing = draw(st.sampled_from(["topk", "soft"]))
    router = draw(st.sampled_from(routers)) if routing == "topk" else "learned"
    layer = MLPMoE(
        n_experts=E,
        d_model=d,
        d_hidden=h,
        routing=routing,
        top_k=k,
        seeds=(draw(seeds),),
        dtype=torch.float64,
        router=router,
    )
    g = torch.Generator().manual_seed(draw(seeds))
    if getattr(layer.router, "bias", None) is not None:
        layer.router.bias = torch.randn(1, E, generator=g, dtype=torch.float64)
    x = torch.randn(1, 1, d, generator=g, dtype=torch.float64)
    loss = draw(st.sampled_from(["linear", "mse", "cubic"]))
    target = torch.randn(1, 1, d, generator=g, dtype=torch.float64)
    return layer, x, loss, target


def _loss(y, kind, target):
    return {
        "linear": lambda: (y * target).sum(),
        "mse": lambda: ((y - target) ** 2).sum(),
        "cubic": lambda: ((y - target) ** 3).sum(),
    }[kind]()


@given(routed_token())
def test_router_and_expert_gradients_of_one_token_are_parallel_to_it(case):
    layer, x, kind, target = case
    layer.train()
    _loss(layer(x), kind, target).backward()
    selected = torch.nonzero(layer.gates(x)[0, 0] > 0).flatten()
    scale = max(1.0, float(layer.router.Wr.grad.norm()), float(layer.W1.grad.norm()))
    for e in selected.tolist():
        assert parallel_residual(layer.router.Wr.grad[0, e], x[0, 0]) <= 1e-10 * scale
        assert (parallel_residual(layer.W1.grad[0, e], x[0, 0]) <= 1e-10 * scale).all()
    others = [e for e in range(layer.W1.shape[1]) if e not in selected.tolist()]
    if others:  # Top-k: an expert that did not see the token gets no gradient at all
        assert layer.router.Wr.grad[0, others].abs().max() == 0 and layer.W1.grad[0, others].abs().max() == 0


@given(routed_token(routers=("aux_loss",)).filter(lambda c: c[0].routing == "topk" and c[0].top_k < c[0].W1.shape[1]))
def test_the_auxiliary_loss_sends_token_directed_gradient_to_routers_whose_experts_did_not_see_it(case):
    """The negative case: with the Switch loss, router rows of unselected experts receive
    gradient (along x) while their experts receive none, so router and expert stop
    accumulating the same tokens."""
    layer, x, kind, target = case
    layer.train()
    (_loss(layer(x), kind, target) + layer.balance_loss.sum()).backward()
    others = torch.nonzero(layer.gates(x)[0, 0] == 0).flatten()
    g_router, g_expert = layer.router.Wr.grad[0, others], layer.W1.grad[0, others]
    assert (g_router.norm(dim=-1) > 0).all() and g_expert.abs().max() == 0
    assert (parallel_residual(g_router, x[0, 0]) <= 1e-10 * max(1.0, float(g_router.norm()))).all()


def test_switch_loss_is_the_published_formula():
    """AUX_COEF * E * sum_e f_e P_e with f the token-slot fractions and P the mean softmax."""
    layer = MLPMoE(
        n_experts=4, d_model=3, d_hidden=5, routing="topk", top_k=2, seeds=(0,), dtype=torch.float64, router="aux_loss"
    )
    x = torch.randn(1, 50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layer.train()
    layer(x)
    logits = layer.scores(x)[0]
    idx = logits.topk(2, -1).indices
    f = np.bincount(idx.flatten().numpy(), minlength=4) / (50 * 2)
    P = torch.softmax(logits, -1).mean(0).detach().numpy()
    assert float(layer.balance_loss[0].detach()) == pytest.approx(AUX_COEF * 4 * float((f * P).sum()), rel=1e-12)


def test_loss_free_bias_selects_but_does_not_weight_and_moves_by_the_sign_of_the_load_error():
    layer = MLPMoE(
        n_experts=4, d_model=3, d_hidden=5, routing="topk", top_k=1, seeds=(0,), dtype=torch.float64, router="loss_free"
    )
    x = torch.randn(1, 40, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    before = layer.router.bias.clone()
    layer.train()
    layer(x)
    counts = np.bincount(layer.scores(x)[0].argmax(-1).numpy(), minlength=4) / 40
    torch.testing.assert_close(layer.router.bias - before, BIAS_RATE * torch.sign(torch.tensor(0.25 - counts))[None])
    with torch.no_grad():  # evaluation passes never move the bias
        layer(x)
    torch.testing.assert_close(layer.router.bias - before, BIAS_RATE * torch.sign(torch.tensor(0.25 - counts))[None])
    # a huge bias on expert 3 selects it for every token, yet its weight stays softmax over the raw score: 1 for k = 1
    layer.router.bias = torch.tensor([[0.0, 0.0, 0.0, 1e6]], dtype=torch.float64)
    g = layer.gates(x)[0]
    assert (g[:, 3] == 1).all()


def test_kmeans_router_scores_by_cosine_and_moves_centroids_by_ema_without_gradients():
    layer = MLPMoE(
        n_experts=3, d_model=4, d_hidden=5, routing="topk", top_k=1, seeds=(0,), dtype=torch.float64, router="kmeans"
    )
    assert not hasattr(layer.router, "Wr") and not any("centroid" in n for n, _ in layer.named_parameters())
    x = torch.randn(1, 30, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    c0 = layer.router.centroids.clone()
    cos = torch.nn.functional.cosine_similarity(x[0, :, None, :], c0[0][None], dim=-1)
    torch.testing.assert_close(layer.scores(x)[0], cos)
    layer.train()
    layer(x).sum().backward()
    e = cos.argmax(-1)
    for j in range(3):
        routed = x[0, e == j]
        expect = c0[0, j] if len(routed) == 0 else (1 - CENTROID_EMA) * c0[0, j] + CENTROID_EMA * routed.mean(0)
        torch.testing.assert_close(layer.router.centroids[0, j], expect)
    params = layer.params(0)
    assert params.router_vectors is params.centroids


def test_routers_are_rejected_where_they_do_not_apply():
    with pytest.raises(ValueError, match="balances a Top-k selection"):
        MLPMoE(n_experts=4, d_model=3, d_hidden=5, routing="soft", top_k=2, router="kmeans")
    with pytest.raises(ValueError):
        MLPMoE(n_experts=4, d_model=3, d_hidden=5, routing="topk", top_k=2, router="sinkhorn")
    assert Arm.KMEANS.router is Router.KMEANS and Arm.TOPK.router is Router.LEARNED
    LMConfig(arms=(Arm.TOPK, Arm.TOPK_AUX, Arm.TOPK_LOSS_FREE, Arm.KMEANS))  # every router runs in the LM


# --------------------------------------------------------------------------- the metrics
@given(st.integers(2, 8), st.integers(1, 40), seeds)
def test_load_imbalance_is_the_population_std_of_token_slot_fractions(E, N, seed):
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(1, E + 1, (1,), generator=g))
    logits = torch.randn(N, E, generator=g, dtype=torch.float64)
    from moegeo.routers import route

    gates = route(logits, "topk", top_k=k)
    counts = np.bincount(logits.topk(k, -1).indices.flatten().numpy(), minlength=E)
    assert float(probes.load_imbalance(gates)) == pytest.approx(np.std(counts / (N * k)), abs=1e-12)


@given(st.integers(2, 6), st.integers(2, 8), st.integers(2, 8), seeds)
def test_router_expert_cosines_against_numpy(E, d, h, seed):
    g = torch.Generator().manual_seed(seed)
    R, W1 = torch.randn(E, d, generator=g, dtype=torch.float64), torch.randn(E, h, d, generator=g, dtype=torch.float64)
    V = np.stack([np.linalg.svd(w)[2][0] for w in W1.numpy()])
    Rn = R.numpy() / np.linalg.norm(R.numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(probes.router_expert_cosines(R, W1).numpy(), np.abs(Rn @ V.T), atol=1e-12)
    off = np.abs(Rn @ Rn.T)[~np.eye(E, dtype=bool)].mean()
    assert float(probes.router_similarity(R)) == pytest.approx(off, abs=1e-12)


def test_score_activation_correlation_recovers_a_planted_coupling_and_matches_scipy():
    """An expert whose activation grows with the router score along the same direction gives a
    rank correlation of 1; an expert whose router looks elsewhere gives about 0."""
    g = torch.Generator().manual_seed(4)
    d, h, N = 6, 5, 400
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    u = torch.zeros(d, dtype=torch.float64)
    u[0] = 1
    W1 = torch.zeros(2, h, d, dtype=torch.float64)
    W1[:, :, 0] = 3.0  # both experts respond to x_0 only
    b1 = torch.full((2, h), 10.0, dtype=torch.float64)  # GELU nearly linear and positive: ||act|| increasing in x_0
    scores = torch.stack([x[:, 0], x[:, 3]], 1)  # router 0 looks along x_0, router 1 along x_3
    gates = torch.ones(N, 2, dtype=torch.float64) / 2
    rho = probes.score_activation_correlation(scores, W1, b1, x, gates)
    assert rho[0] == pytest.approx(1.0, abs=1e-12) and abs(float(rho[1])) < 0.15
    act = torch.nn.functional.gelu(x @ W1[1].T + b1[1]).norm(dim=-1)
    assert float(rho[1]) == pytest.approx(scipy.stats.spearmanr(x[:, 3], act).statistic, abs=1e-12)


def test_score_activation_correlation_is_nan_for_an_expert_with_too_few_tokens():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    gates = torch.zeros(10, 2, dtype=torch.float64)
    gates[:, 0], gates[0, 1], gates[0, 0] = 1.0, 1.0, 0.0
    rho = probes.score_activation_correlation(
        torch.randn(10, 2, generator=g, dtype=torch.float64),
        torch.randn(2, 4, 3, generator=g, dtype=torch.float64),
        torch.zeros(2, 4, dtype=torch.float64),
        x,
        gates,
    )
    assert not math.isnan(float(rho[0])) and math.isnan(float(rho[1]))


def test_every_router_trains_in_the_mlp_setting_and_reports_its_metrics():
    from moegeo import ExperimentConfig, run

    arms = (Arm.TOPK, Arm.TOPK_AUX, Arm.TOPK_LOSS_FREE, Arm.KMEANS)
    df = run(
        ExperimentConfig(steps=6, record_every=3, n_samples=64, seeds=(0, 1), arms=arms, probe_steps=()),
        cache=False,
        progress=False,
    )
    final = df[df.step == 6]
    for arm in arms:
        got = set(final[final.arm == arm.value].metric)
        assert {"load_imbalance", "router_similarity", "router_expert_cos", "score_activation_rho"} <= got, arm
    # the load over training is recorded at every trajectory step
    assert set(df[(df.metric == "load_fraction") & (df.arm == "kmeans")].step) == {0, 3, 6}
