"""The benchmarks' FLOP floors (``benchmarks/floors.py``) are lower bounds of the arithmetic the
code runs: each count against ``torch.utils.flop_counter.FlopCounterMode`` (every matrix product
the step or stage dispatches) and against the eigensolves it makes, counted as they are called.
A floor above what the code does would flatter every "x of floor" ratio in REPORT."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moegeo import ExperimentConfig, experiment, lm
from moegeo.config import Arm, LMConfig
from moegeo.data import make_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import floors  # noqa: E402

CFG = ExperimentConfig(
    n_experts=4,
    d_model=16,
    d_hidden=24,
    n_samples=64,
    top_k=2,
    steps=4,
    record_every=2,
    trajectory_points=16,
    seeds=(0, 1),
    probe_steps=(2,),
)


def counted(fn) -> float:
    with FlopCounterMode(display=False) as mode:
        fn()
    return mode.get_total_flops()


@pytest.mark.parametrize("arm", CFG.arms, ids=[a.value for a in CFG.arms])
def test_mlp_training_floor_is_the_step_s_products(arm):
    x, y = (
        torch.stack(t) for t in zip(*(make_data(s, n_samples=CFG.n_samples, d_model=CFG.d_model) for s in CFG.seeds))
    )
    model = experiment.build_model(arm, CFG)

    def step():
        ((model(x) - y) ** 2).mean(dim=(1, 2)).sum().backward()

    floor, ran = floors.train_flops(arm, CFG), counted(step)
    assert floor <= ran
    if arm is not Arm.TOPK:  # dense compute: the floor is the step's products but for the gates' bias term
        assert ran <= 1.05 * floor, (ran, floor)


@pytest.mark.parametrize("arm", [Arm.DENSE, Arm.DENSE_MATCHED, Arm.TOPK, Arm.SOFT, Arm.KMEANS], ids=lambda a: a.value)
def test_lm_training_floor_is_the_step_s_products(arm):
    cfg = LMConfig(
        vocab_size=64,
        d_model=16,
        n_layers=2,
        n_heads=2,
        context=8,
        n_experts=4,
        d_hidden=12,
        batch_size=4,
        seeds=(0, 1),
    )
    model = lm.TransformerLM(arm, cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.batch_size, cfg.context), generator=torch.Generator().manual_seed(0))

    def step():
        (model.loss(idx, idx) + model.balance_loss()).sum().backward()

    # FlopCounterMode does not count the CPU attention kernel (scaled_dot_product_attention): the
    # rest is compared, and the attention term is the causal pairs' share of the full T x T products
    floor, ran = floors.lm_flops(arm, cfg) - floors.lm_attention_flops(cfg), counted(step)
    assert floor <= ran, (floor, ran)
    if arm.routing != "topk":  # dense compute: the step's products but for the soft gates' bias term
        assert ran <= 1.05 * floor, (floor, ran)
    full = 3 * 2 * cfg.n_layers * 4 * cfg.batch_size * cfg.context**2 * cfg.d_model
    assert floors.lm_attention_flops(cfg) == pytest.approx(full * (cfg.context + 1) / (2 * cfg.context))


def test_probe_stage_floors_are_at_most_what_the_stages_run(monkeypatch):
    """The sweep's two probe stages, run serially (FlopCounterMode sees its own thread only), each
    under its own counter; eigensolves are counted at EIGVALSH n^3 per n x n matrix."""
    ran = {}
    eigvalsh = torch.linalg.eigvalsh

    def counting_eigvalsh(A, *args, **kwargs):
        ran["eig"] = ran.get("eig", 0.0) + A[..., 0, 0].numel() * floors.EIGVALSH * A.shape[-1] ** 3
        return eigvalsh(A, *args, **kwargs)

    def flops(name, arm, call):
        with FlopCounterMode(display=False) as mode:
            out = call()
        ran[name] = ran.get(name, 0.0) + mode.get_total_flops()
        return out

    monkeypatch.setattr(experiment, "per_seed", lambda fn, jobs: [row for job in jobs for row in fn(*job)])
    monkeypatch.setattr(torch.linalg, "eigvalsh", counting_eigvalsh)
    floors.measure_stages(monkeypatch, flops)
    df = experiment._compute(CFG, False)
    traj, ckpt = floors.trajectory_flops(df, CFG), floors.checkpoint_flops(df, CFG)
    assert traj[0] > 0 and ckpt[0] > 0
    assert traj[0] <= ran["_trajectory_rows"] and ckpt[0] <= ran["_checkpoint_rows"]
    assert traj[1] + ckpt[1] <= ran["eig"]
    # and they are the dominant part, not a token lower bound
    assert traj[0] + ckpt[0] >= 0.5 * (ran["_trajectory_rows"] + ran["_checkpoint_rows"])


def test_probe_floors_count_live_experts_only():
    """An expert excluded at a checkpoint (zero routing weight) has no sigma1 row and costs nothing."""
    df = experiment._compute(dataclasses.replace(CFG, arms=(Arm.SOFT,)), False)
    full = floors.checkpoint_flops(df, CFG)
    one = df[(df.metric == "sigma1") & (df.reading == "jacobian=pointwise") & df.step.isin(CFG.checkpoints())].index[:1]
    fewer = floors.checkpoint_flops(df.drop(one), CFG)
    per_expert = floors.jacobian_flops(CFG.n_samples, CFG.d_model, CFG.d_hidden)
    assert full[0] - fewer[0] == pytest.approx(per_expert[0]) and full[1] - fewer[1] == pytest.approx(per_expert[1])
