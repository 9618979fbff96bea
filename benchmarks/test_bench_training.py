"""Training steps, the probe stage and the whole claims sweep against its floating-point floor.

The floor of the main-arms sweep of `pytest claims/` is its FLOP count divided by the best sgemm rate
measured in the same run. The sweep is timed in full, once, as the claims run it (every step,
every trajectory record and every checkpoint's probes).
"""

import statistics
import time

import pytest
import torch
from floors import STAGES, checkpoint_flops, measure_stages, train_flops, trajectory_flops

from moegeo import ExperimentConfig, experiment
from moegeo.claims.dual_jacobian_pca import SEEDS
from moegeo.config import Arm
from moegeo.data import make_data
from moegeo.nn import adam

CFG = ExperimentConfig(seeds=tuple(range(SEEDS)))  # the claims' main configuration
SGEMM_N = 2048


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
def test_train_step_all_seeds(benchmark, arm, data):
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
    run (``floors.measure_stages``), so the report can say where the time goes; how often each
    ran is counted, not assumed."""
    spent = {name: [] for name in STAGES}

    def timed(name, arm, call):
        start = time.perf_counter()
        out = call()
        spent[name].append(time.perf_counter() - start)
        return out

    measure_stages(monkeypatch, timed)
    benchmark.group = "claims sweep"
    df = benchmark.pedantic(experiment._compute, (CFG, False), rounds=1, warmup_rounds=0)
    assert df.value.notna().all()
    records, checkpoints = spent["_trajectory_rows"], spent["_checkpoint_rows"]
    n_records = len({s for s in range(CFG.steps + 1) if s % CFG.record_every == 0} | set(CFG.checkpoints()))
    assert (len(records), len(checkpoints)) == (n_records * len(CFG.arms), len(CFG.checkpoints()) * len(CFG.arms))
    benchmark.extra_info.update(
        method="sweep",
        steps=CFG.steps,
        train_flops_per_step=sum(train_flops(a, CFG) for a in CFG.arms),
        trajectory_records=len(records),
        trajectory_seconds=sum(records),
        trajectory_flops=sum(trajectory_flops(df, CFG)),
        checkpoints=len(checkpoints),
        checkpoint_seconds=sum(checkpoints),
        probe_flops=sum(checkpoint_flops(df, CFG)),
    )
