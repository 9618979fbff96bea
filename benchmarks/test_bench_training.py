"""Training steps, the probe stage and the whole claims sweep against its floating-point floor.

The floor of the main-arms sweep of `pytest claims/` is its FLOP count divided by the sgemm rate measured in
the same run. The sweep is timed at 20 steps and extrapolated linearly in steps (the per-step
cost is constant), plus the probe stage, which runs once per arm.
"""
import dataclasses
import statistics
import time

import pytest
import torch

from moegeo import ExperimentConfig, experiment
from moegeo.config import Arm
from moegeo.claims.dual_jacobian_pca import SEEDS
from moegeo.model import adam, make_data

CFG = ExperimentConfig(seeds=tuple(range(SEEDS)))  # the claims' main configuration
SGEMM_N = 2048


def train_flops(arm: Arm, cfg: ExperimentConfig) -> float:
    """Matrix-product FLOPs of one full-batch step (forward x 3 for forward + backward). Top-k
    counts only routed compute (k experts per token), which its sparse dispatch approaches."""
    S, N, d = len(cfg.seeds), cfg.n_samples, cfg.d_model
    experts = {Arm.DENSE: 1, Arm.DENSE_MATCHED: cfg.n_experts, Arm.TOPK: cfg.top_k, Arm.SOFT: cfg.n_experts}[arm]
    width = cfg.d_hidden * experts
    router = 2 * S * N * d * cfg.n_experts if arm.is_moe else 0
    return 3 * (2 * 2 * S * N * d * width + router)


def probe_flops(arm: Arm, cfg: ExperimentConfig) -> float:
    """Dominant FLOPs of the final probes for all seeds: materialising J and its Gram spectrum."""
    S, N, d = len(cfg.seeds), cfg.n_samples, cfg.d_model
    E, h = (cfg.n_experts, cfg.d_hidden) if arm.is_moe else (1, cfg.d_hidden * (cfg.n_experts if arm is Arm.DENSE_MATCHED else 1))
    return S * E * N * (2 * d * h * d + 2 * d**3 + 10 * d**3)


@pytest.fixture(scope="module")
def data():
    xs, ys = zip(*(make_data(s) for s in CFG.seeds))
    return torch.stack(xs), torch.stack(ys)


def test_sgemm_rate(benchmark):
    a, b = torch.randn(SGEMM_N, SGEMM_N), torch.randn(SGEMM_N, SGEMM_N)
    benchmark.group = "floating-point floor"
    benchmark.pedantic(torch.mm, (a, b), rounds=10, warmup_rounds=2)
    benchmark.extra_info.update(method="sgemm", flops=2 * SGEMM_N**3)


def train_step(arm: Arm, x, y):
    """A fresh model of ``arm`` (all seeds batched) and a closure that takes one full-batch training
    step of it per call, as the claims train."""
    experiment._keep_freed_memory()
    model = experiment.build_model(arm, CFG)
    opt = adam(model.parameters(), CFG.lr)  # the training runs' optimizer

    def step():
        loss = ((model(x) - y) ** 2).mean(dim=(1, 2)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


@pytest.mark.parametrize("arm", CFG.arms, ids=[a.value for a in CFG.arms])
def test_train_step_20_seeds(benchmark, arm, data):
    step = train_step(arm, *data)
    benchmark.group = "one training step, main arms"
    loss = benchmark.pedantic(step, rounds=10, warmup_rounds=2)
    assert torch.isfinite(loss)
    benchmark.extra_info.update(method=arm.value, flops=train_flops(arm, CFG))


def test_topk_and_soft_steps_interleaved(benchmark, data):
    """The Top-k and the soft step timed in alternation, one of each per round, so that a change in
    the machine's speed during the run (README: one row moved from 52 to 79 ms between runs of
    unchanged code) reaches both medians alike. Which step goes first alternates from round to
    round, so whatever one step leaves behind (allocator, caches) falls on both. Each step's time
    is its own perf_counter span."""
    steps = {arm: train_step(arm, *data) for arm in (Arm.TOPK, Arm.SOFT)}
    times = {arm: [] for arm in steps}

    def pair():
        order = list(steps.items())
        for arm, step in order if len(times[Arm.TOPK]) % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            loss = step()
            times[arm].append(time.perf_counter() - start)
            assert torch.isfinite(loss)

    rounds, warmup = 10, 2
    benchmark.group = "Top-k and soft steps interleaved, main arms"
    benchmark.pedantic(pair, rounds=rounds, warmup_rounds=warmup)
    med = {arm: statistics.median(t[warmup:]) for arm, t in times.items()}
    assert all(len(t) == rounds + warmup for t in times.values())
    benchmark.extra_info.update(method="topk+soft", topk_median=med[Arm.TOPK], soft_median=med[Arm.SOFT])


def test_claims_sweep(benchmark):
    """The main-arms sweep of `pytest claims/` (every main arm, probes included) at 20 steps."""
    cfg = dataclasses.replace(CFG, steps=20, record_every=10)
    benchmark.group = "claims sweep"
    df = benchmark.pedantic(experiment._compute, (cfg, False), rounds=1, warmup_rounds=0)
    assert df.value.notna().all()
    benchmark.extra_info.update(
        method="sweep@20 steps", steps_timed=cfg.steps, steps_default=CFG.steps,
        record_every_timed=cfg.record_every, record_every_default=CFG.record_every,
        train_flops_per_step=sum(train_flops(a, CFG) for a in CFG.arms),
        probe_flops=sum(probe_flops(a, CFG) for a in CFG.arms))
