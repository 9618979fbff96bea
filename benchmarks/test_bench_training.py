"""Training steps, the probe stage and the whole claims sweep against its floating-point floor.

The floor of the main-arms sweep of `pytest claims/` is its FLOP count divided by the best sgemm rate
measured in the same run. The sweep is timed in full, once, as the claims run it (every step,
every trajectory record and every checkpoint's probes).
"""
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


def _experts(arm: Arm, cfg: ExperimentConfig) -> tuple[int, int]:
    """(experts, hidden width) of the arm's FFN layer."""
    if arm.is_moe:
        return cfg.n_experts, cfg.d_hidden
    return 1, cfg.d_hidden * (cfg.n_experts if arm is Arm.DENSE_MATCHED else 1)


def probe_flops(arm: Arm, cfg: ExperimentConfig) -> float:
    """Dominant FLOPs of one checkpoint's probes for all seeds (``experiment._checkpoint_rows``):
    materialising every expert's J at every point and its Gram spectrum (J^T J, then an eigensolve
    counted as 10 d^3)."""
    S, N, d = len(cfg.seeds), cfg.n_samples, cfg.d_model
    E, h = _experts(arm, cfg)
    return S * E * N * (2 * d * h * d + 2 * d**3 + 10 * d**3)


def trajectory_flops(arm: Arm, cfg: ExperimentConfig) -> float:
    """Dominant FLOPs of one trajectory record for all seeds (``experiment._trajectory_rows``): on
    the first ``trajectory_points`` points, every expert's J and its Gram spectrum, and for an MoE
    layer the effective Jacobian (which forms every expert's J again) and its Gram spectrum."""
    S, P, d = len(cfg.seeds), cfg.trajectory_points, cfg.d_model
    E, h = _experts(arm, cfg)
    per_seed = E * P * (2 * d * h * d + 12 * d**3)
    if arm.is_moe:
        per_seed += E * P * 2 * d * h * d + P * 12 * d**3
    return S * per_seed


@pytest.fixture(scope="module")
def data():
    xs, ys = zip(*(make_data(s) for s in CFG.seeds))
    return torch.stack(xs), torch.stack(ys)


@pytest.mark.parametrize("when", ["first", "last"])
def test_sgemm_rate(benchmark, when):
    """The square sgemm whose fastest round sets every FLOP floor, timed twice: as the run's first
    benchmark (``conftest`` moves it there) and near its end, beside the training benchmarks. The
    floor takes the fastest round of both, so a slow spell in one window cannot lower the floor
    (one run measured 142 GFLOP/s where the run before measured 180, with unchanged step times)."""
    a, b = torch.randn(SGEMM_N, SGEMM_N), torch.randn(SGEMM_N, SGEMM_N)
    benchmark.group = "floating-point floor"
    benchmark.pedantic(torch.mm, (a, b), rounds=10, warmup_rounds=2)
    benchmark.extra_info.update(method=f"sgemm ({when} in the run)", flops=2 * SGEMM_N**3)


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


def test_claims_sweep(benchmark, monkeypatch):
    """The main-arms sweep of `pytest claims/` (every main arm, probes included), in full, once,
    as the claims compute it. The trajectory records and the checkpoint probes are timed as they
    run (wrappers around ``experiment._trajectory_rows`` and ``_checkpoint_rows``), so the report
    can say where the time goes; how often each ran is counted, not assumed."""
    spent = {}

    def timed(name):
        fn = getattr(experiment, name)

        def wrapper(arm, *args):
            start = time.perf_counter()
            out = fn(arm, *args)
            spent.setdefault(name, []).append((arm, time.perf_counter() - start))
            return out

        monkeypatch.setattr(experiment, name, wrapper)

    timed("_trajectory_rows")
    timed("_checkpoint_rows")
    benchmark.group = "claims sweep"
    df = benchmark.pedantic(experiment._compute, (CFG, False), rounds=1, warmup_rounds=0)
    assert df.value.notna().all()
    assert set(df.step.unique()) >= set(CFG.checkpoints())
    records, checkpoints = spent["_trajectory_rows"], spent["_checkpoint_rows"]
    benchmark.extra_info.update(
        method="sweep", steps=CFG.steps, train_flops_per_step=sum(train_flops(a, CFG) for a in CFG.arms),
        trajectory_records=len(records), trajectory_seconds=sum(t for _, t in records),
        trajectory_flops=sum(trajectory_flops(a, CFG) for a, _ in records),
        checkpoints=len(checkpoints), checkpoint_seconds=sum(t for _, t in checkpoints),
        probe_flops=sum(probe_flops(a, CFG) for a, _ in checkpoints))
