"""The controlled experiment end to end: training, tidy frame, determinism, cache."""

import dataclasses

import pandas as pd
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from moegeo import Arm, ExperimentConfig, MLPMoE, cache, experiment, frame
from moegeo.cli import main
from moegeo.data import make_data
from moegeo.model import ExpertParams, block_rows
from moegeo.routers import route, topk_route
from moegeo.rows import probe_rows

TINY = ExperimentConfig(
    n_experts=4, d_model=8, d_hidden=16, n_samples=64, steps=20, record_every=10, trajectory_points=16, seeds=(0, 1)
)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGEO_CACHE", str(tmp_path / "cache"))


def test_stacked_training_matches_a_plain_per_expert_loop():
    """The seed-stacked, expert-batched trainer equals a literal loop over experts for one seed."""
    cfg = dataclasses.replace(TINY, seeds=(3,), steps=5)
    x, y = make_data(3, n_samples=cfg.n_samples, d_model=cfg.d_model)
    ref = experiment.build_model(Arm.TOPK, cfg)
    layer = ref.layers[0]
    params = [
        p.detach()[0].clone().requires_grad_()
        for p in (layer.W1, layer.b1, layer.W2, layer.b2, layer.router.Wr, layer.router.br)
    ]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    for _ in range(cfg.steps):
        W1, b1, W2, b2, Wr, br = params
        g = route(x @ Wr.T + br, "topk", top_k=cfg.top_k)
        out = sum(
            g[:, e : e + 1] * (torch.nn.functional.gelu(x @ W1[e].T + b1[e]) @ W2[e].T + b2[e])
            for e in range(cfg.n_experts)
        )
        opt.zero_grad()
        ((out - y) ** 2).mean().backward()
        opt.step()
    model, _ = experiment.train_arm(Arm.TOPK, cfg, x[None], y[None], progress=False)
    mine_layer = model.layers[0]
    for mine, theirs in zip(
        (mine_layer.W1, mine_layer.b1, mine_layer.W2, mine_layer.b2, mine_layer.router.Wr, mine_layer.router.br), params
    ):
        torch.testing.assert_close(mine[0].detach(), theirs.detach(), rtol=1e-5, atol=1e-6)


def test_same_seed_gives_bit_identical_results():
    a = experiment.run(TINY, cache=False, progress=False)
    b = experiment.run(TINY, cache=False, progress=False)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.parametrize("arm", [Arm.TOPK, Arm.SOFT, Arm.TOPK_LOSS_FREE, Arm.KMEANS])
def test_seed_batched_training_is_bit_reproducible(arm):
    """Two identical seed-batched training runs end with the same bits in every parameter and
    router buffer (stable sorts and serial scatters only in the Top-k dispatch)."""
    cfg = dataclasses.replace(TINY, seeds=(0, 1, 2), steps=10)
    x, y = (
        torch.stack(t) for t in zip(*(make_data(s, n_samples=cfg.n_samples, d_model=cfg.d_model) for s in cfg.seeds))
    )
    runs = [experiment.train_arm(arm, cfg, x, y, progress=False)[0] for _ in range(2)]
    a, b = (m.state_dict() for m in runs)  # parameters and router buffers (biases, centroids)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_seed_does_not_depend_on_the_other_seeds_in_the_sweep():
    both = experiment.run(TINY, cache=False, progress=False)
    alone = experiment.run(dataclasses.replace(TINY, seeds=(1,)), cache=False, progress=False)
    keys = ["arm", "layer", "expert", "reading", "metric", "step", "index", "control"]
    m = both[both.seed == 1].merge(alone, on=keys, suffixes=("_both", "_alone"))
    assert len(m) == len(alone)
    pd.testing.assert_series_equal(m.value_both, m.value_alone, check_names=False, rtol=1e-4, atol=1e-6)


def test_frame_holds_every_arm_under_every_reading():
    df = experiment.run(TINY, cache=False, progress=False)
    assert set(df.columns) >= set(frame.COLUMNS) | {"n_experts", "steps", "config_key"}
    final = df[df.step == TINY.steps]
    for arm in TINY.arms:
        readings = set(final[final.arm == arm.value].reading)
        assert {
            "jacobian=pointwise",
            "jacobian=mean",
            "pca_site=input",
            "pca_site=pre_activation",
            "pca_site=hidden",
            "pca_site=output",
        } <= readings, arm
    traj = df[df.metric == "jacobian_norm"]
    assert traj.step.nunique() == TINY.steps // TINY.record_every + 1
    assert set(traj[traj.arm == "dense"].reading) == {
        f"jacobian={j};norm={n}" for j in ("pointwise", "mean") for n in ("spectral", "frobenius")
    }
    assert {"jacobian=effective;norm=spectral", "jacobian=effective;norm=frobenius"} <= set(
        traj[traj.arm == "topk"].reading
    )
    assert set(df[df.metric == "sigma1"].step) == set(TINY.probe_steps_all()) == {0, *TINY.checkpoints()}
    assert set(df[df.metric == "cosine_abs_mean"].step) == set(traj.step)  # from step 0: the init null of C4n
    cos = df[df.metric == "cosine"]
    assert set(cos.arm) == {"topk", "soft"}
    assert df.value.notna().all()


def test_cache_is_reused_and_corrupt_entries_are_recomputed(monkeypatch):
    first = experiment.run(TINY, progress=False)
    calls = []
    real = experiment._compute
    monkeypatch.setattr(experiment, "_compute", lambda *a: calls.append(1) or real(*a))
    pd.testing.assert_frame_equal(experiment.run(TINY, progress=False), first)
    assert calls == []
    path = cache.entry_path(TINY.key())
    path.write_bytes(path.read_bytes()[:-10])  # truncated write
    with pytest.warns(cache.CacheWarning, match="is not used"):
        again = experiment.run(TINY, progress=False)
    assert calls == [1]
    pd.testing.assert_frame_equal(again, first)


def test_entry_stored_under_another_key_is_not_trusted():
    other = dataclasses.replace(TINY, steps=21)
    cache.store(TINY.key(), pd.DataFrame({"x": [1]}))
    cache.entry_path(TINY.key()).rename(cache.entry_path(other.key()))
    with pytest.warns(cache.CacheWarning, match="holds key"):
        assert cache.load(other.key()) is None


def test_config_key_changes_with_every_field():
    base = ExperimentConfig()
    for f in dataclasses.fields(base):
        v = getattr(base, f.name)
        new = {int: lambda v: v + 1, float: lambda v: v * 2, tuple: lambda v: v[:1] if len(v) > 1 else (v[0] + 1,)}[
            type(v)
        ](v)
        assert dataclasses.replace(base, **{f.name: new}).key() != base.key(), f.name


def test_dead_expert_is_excluded_and_reported():
    E, h, d = 3, 5, 6
    x, _ = make_data(0, n_samples=32, d_model=d, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    t = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    p = ExpertParams(
        W1=t(E, h, d),
        b1=t(E, h),
        W2=t(E, d, h),
        b2=t(E, d),
        Wr=t(E, d) * 0,
        br=torch.tensor([0.0, 0.0, -1e9], dtype=torch.float64),
        routing="topk",
        top_k=2,
        temperature=1.0,
    )
    with pytest.warns(UserWarning, match="expert 2 received zero routing weight"):
        rows = pd.DataFrame(probe_rows(p, x, seed=0, arm=Arm.TOPK, step=0))
    assert rows[rows.metric == "excluded"].expert.tolist() == [2]
    assert set(rows[rows.metric != "excluded"].expert) == {-1, 0, 1}  # -1: the layer's routing entropy


def test_failure_mode_arms_carry_layers_and_coupled_charts():
    """§4 arms: the coupled arm's cosines through the shared LayerNorm; the deep arm's two layers."""
    df = experiment.run(dataclasses.replace(TINY, arms=(Arm.TOPK_COUPLED, Arm.TOPK_DEEP)), cache=False, progress=False)
    cos = df[df.metric == "cosine"]
    assert set(cos[cos.arm == "topk_coupled"].reading) == {
        "jacobian=mean",
        "jacobian=mean;chart=ln",
        "jacobian=mean;chart=residual",
    }
    assert set(df[(df.arm == "topk_deep") & (df.metric == "sigma1")].layer) == {0, 1}
    assert set(df[df.metric == "loss"].layer) == {-1}


@pytest.mark.parametrize("arm", [Arm.TOPK, Arm.TOPK_COUPLED, Arm.TOPK_DEEP])
def test_captured_layers_reconstruct_the_models_output(arm):
    """The hidden states the probes read (each layer's input) and the layers' own parameters
    rebuild the model's output: sum_e g_e f_e(h) (+ the residual stream) = model(x)."""
    model = experiment.build_model(arm, dataclasses.replace(TINY, seeds=(0,)))
    x = make_data(0, n_samples=TINY.n_samples, d_model=TINY.d_model)[0][None]
    with torch.no_grad():
        trace, stream = model.trace(x), x[0]
        for l in range(len(model.layers)):
            h = trace.moe_inputs[l][0]
            p = model.params(0, l, torch.float32)
            g = p.gates(h)
            f = (
                torch.einsum(
                    "eoh,neh->neo", p.W2, torch.nn.functional.gelu(torch.einsum("ehd,nd->neh", p.W1, h) + p.b1)
                )
                + p.b2
            )
            y = torch.einsum("ne,neo->no", g, f)
            stream = stream + y if model.residual else y
        torch.testing.assert_close(stream, model(x)[0], rtol=1e-5, atol=1e-5)


def test_cli_prints_all_arms(capsys):
    assert main(["--steps", "2", "--quiet", "--no-cache"]) == 0
    out = capsys.readouterr().out
    for arm in ExperimentConfig().arms:
        assert arm.value in out
    for r in ("pca_site=input", "pca_site=hidden", "jacobian=mean", "jacobian=pointwise"):
        assert r in out


@pytest.mark.parametrize("skewed", [False, True], ids=["one-block-per-group", "small-blocks"])
@pytest.mark.parametrize("router", ["learned", "aux_loss", "loss_free", "kmeans"])
def test_sparse_topk_dispatch_equals_the_dense_compute_reference(router, skewed):
    """Top-k computes each expert only on its routed tokens, packed in blocks (``MLPMoE.dispatch``);
    output and the gradient of every parameter (experts and router) equal the dense-compute
    reference (every expert on every token, gated) at float64, under every router (selection
    biases and centroids drawn at random so they change the selection). ``skewed``: one expert
    takes most tokens and some get none, so the blocks are smaller than the busiest group and
    copy their weights (checked, so the test cannot drift to the other path)."""
    N = 300 if skewed else 40
    layer = MLPMoE(
        n_experts=6, d_model=5, d_hidden=7, routing="topk", top_k=2, seeds=(0, 1, 2), dtype=torch.float64, router=router
    ).eval()
    g = torch.Generator().manual_seed(2)
    if getattr(layer.router, "bias", None) is not None:
        layer.router.bias = torch.randn(3, 6, generator=g, dtype=torch.float64)
    if getattr(layer.router, "centroids", None) is not None:
        layer.router.centroids = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    x = torch.randn(3, N, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, N, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if skewed:  # the selection: expert 0 always, expert 5 never, the others by the router
        skew = torch.tensor([50.0, 0, 0, 0, 0, -50.0], dtype=torch.float64).expand(3, 6).clone()
        if hasattr(layer.router, "bias"):
            layer.router.bias = skew
        else:  # the learned router has no selection bias: skew its scores instead
            layer.router.br.data += skew
        idx = topk_route(layer.scores(x), 2, bias=layer.router.selection_bias())[1]
        counts = torch.bincount((idx + 6 * torch.arange(3)[:, None, None]).flatten(), minlength=18)
        assert (counts == 0).any() and block_rows(counts) < counts.max()
    names = [n for n, _ in layer.named_parameters()]
    assert {"W1", "b1", "W2", "b2"} <= set(names) and (router == "kmeans") == ("router.Wr" not in names)
    grads = []
    for forward in (layer, lambda v: layer.mix(v, layer.gates(v))):
        layer.zero_grad()
        x.grad = None
        out = forward(x)
        ((out - y) ** 3).sum().backward()
        grads.append([out.detach(), x.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@settings(deadline=None, max_examples=40)
@given(st.lists(st.integers(0, 150), min_size=1, max_size=6).filter(any))
@example([64, 0, 32, 32])
@example([40, 40, 40, 40])
@example([200, 1, 1, 0])
def test_topk_dispatch_with_planted_group_counts(counts):
    """Planted loads (k = 1, tokens sent to experts by hand, in any order of size) against the
    gated reference at float64, output and gradients. (64, 0, 32, 32) gets blocks of 32: as many
    blocks as groups but not one per group (expert 0 has two, expert 1 none), which must still
    copy weights."""
    counts = tuple(counts)
    E = len(counts)
    layer = MLPMoE(n_experts=E, d_model=3, d_hidden=5, routing="topk", top_k=1, seeds=(0,), dtype=torch.float64)
    idx = torch.repeat_interleave(torch.arange(E), torch.tensor(counts))[None, :, None]
    N = idx.shape[1]
    x = torch.randn(1, N, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    w = torch.rand(1, N, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gate = torch.zeros(1, N, E, dtype=torch.float64).scatter(-1, idx, w)
    results = []
    for out in (layer.dispatch(x, w, idx), layer.mix(x, gate)):
        results.append(
            [out.detach()] + list(torch.autograd.grad(out.square().sum(), [x, layer.W1, layer.b1, layer.W2, layer.b2]))
        )
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if counts == (64, 0, 32, 32):
        assert block_rows(torch.tensor(counts)) == 32


def test_topk_dispatch_refuses_bad_indices_and_shapes():
    """An expert index outside [0, E) would silently pick another seed's expert (the groups are
    seed-major); a shape mismatch would fail deep inside a reshape. Both are refused up front."""
    layer = MLPMoE(n_experts=3, d_model=4, d_hidden=5, routing="topk", top_k=1, seeds=(0, 1), dtype=torch.float64)
    x, w = torch.randn(2, 6, 4, dtype=torch.float64), torch.ones(2, 6, 1, dtype=torch.float64)
    for bad in (3, -1):
        idx = torch.zeros(2, 6, 1, dtype=torch.long)
        idx[0, 2, 0] = bad
        with pytest.raises(ValueError, match="expert indices"):
            layer.dispatch(x, w, idx)
    with pytest.raises(ValueError, match=r"x must have shape \(S=2, N, d=4\), got \(1, 6, 4\)"):
        layer.dispatch(x[:1], w[:1], torch.zeros(1, 6, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must have shape \(S=2, N, d=4\), got \(6, 4\)"):
        layer.dispatch(x[0], w[0], torch.zeros(6, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="dispatch needs"):
        layer.dispatch(x, w[:, :5], torch.zeros(2, 6, 1, dtype=torch.long))


def test_block_rows_keeps_one_block_per_group_when_balanced_and_splits_a_skewed_load():
    """Balanced loads (every group near the mean) keep one block per group; a skewed load (one
    busy group per seed, others empty or small) gets blocks far smaller than the busiest group,
    which pad fewer than half the rows of one block per group; no routed token still gives at
    least one row per block."""
    g = torch.Generator().manual_seed(0)
    balanced = 128 + torch.randint(-30, 55, (160,), generator=g)
    assert block_rows(balanced) == balanced.max()
    skewed = torch.tensor([476, 300, 100, 80, 40, 20, 8, 0] * 12)
    rows = block_rows(skewed)
    assert rows < 128
    padded = int(((skewed + rows - 1) // rows).sum()) * rows
    assert padded < 0.5 * int((skewed > 0).sum()) * int(skewed.max())
    assert block_rows(torch.zeros(4, dtype=torch.long)) >= 1  # no routed token: no division by zero


def test_dense_ffn_is_the_plain_two_layer_mlp():
    """A dense layer skips the (all-ones) gate; it must equal the gated formula exactly."""
    layer = MLPMoE(n_experts=1, d_model=5, d_hidden=9, routing="dense", seeds=(0, 1), dtype=torch.float64)
    x = torch.randn(2, 11, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.mix(x, layer.gates(x)), rtol=1e-12, atol=1e-12)


def test_a_run_imports_none_of_the_modules_left_out_of_the_cache_key():
    """``config.READ_ONLY`` leaves modules out of the cache key on the promise that their code never
    runs inside ``experiment.run``: a run in a fresh interpreter must not even import them."""
    import subprocess
    import sys

    from moegeo.config import READ_ONLY

    code = (
        "import sys, dataclasses, moegeo.experiment as x; from moegeo import ExperimentConfig, LMConfig; "
        "x.run(ExperimentConfig(n_experts=4, d_model=8, d_hidden=8, n_samples=32, steps=2, record_every=1, "
        "trajectory_points=8, probe_steps=()), cache=False, progress=False); "
        "x.run(LMConfig(vocab_size=64, d_model=8, n_layers=1, n_heads=2, context=8, n_experts=2, d_hidden=8, "
        "batch_size=2, steps=2, record_every=1, eval_windows=2, probe_tokens=16, trajectory_points=8), cache=False, "
        "progress=False); print(' '.join(sorted(m for m in sys.modules if m.startswith('moegeo'))))"
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.split(".")[1] for m in out.stdout.split() if "." in m}
    assert not loaded & {name.removesuffix(".py") for name in READ_ONLY}, loaded


def test_a_compact_frame_holds_the_same_values_in_less_memory():
    """``frame.compact``: labels as categories, integers in 32 bits, every value as it was; the
    claims read the compact frame exactly as the original (``Results`` compacts what it gets)."""
    df = experiment.run(TINY)
    small = frame.compact(df)
    assert small.memory_usage(deep=True).sum() < df.memory_usage(deep=True).sum() / 2
    assert isinstance(small["reading"].dtype, pd.CategoricalDtype) and small["d_model"].dtype == "int32"
    assert small["seed"].dtype == df["seed"].dtype  # the schema's integers keep their type
    pd.testing.assert_frame_equal(small.astype(df.dtypes.to_dict()), df)
    assert frame.compact(small) is small
    big = pd.DataFrame({"n_samples": [0, 2**40]})
    assert frame.compact(big)["n_samples"].dtype == "int64"  # a value beyond int32 keeps its width
