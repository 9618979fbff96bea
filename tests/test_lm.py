"""The language-model setting's model: a seed-stacked Transformer whose FFNs are moegeo's MoE layer."""

import dataclasses

import pandas as pd
import pytest
import torch
from configs import TINY_LM
from hypothesis import given, settings
from hypothesis import strategies as st

from moegeo import lm, probes, train
from moegeo.config import Arm, LMConfig
from moegeo.data import wikitext

TINY = LMConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, context=8, n_experts=4, d_hidden=12)


def tokens(S, B, T, seed=0, V=TINY.vocab_size):
    return torch.randint(0, V, (S, B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arm", [Arm.DENSE, Arm.DENSE_MATCHED, Arm.TOPK, Arm.SOFT])
def test_shapes_and_a_finite_loss(arm):
    model = lm.TransformerLM(arm, TINY, seeds=(0, 1))
    x = tokens(2, 3, 8)
    assert model(x).shape == (2, 3, 8, TINY.vocab_size)
    assert torch.isfinite(model.loss(x, tokens(2, 3, 8, seed=1))).all()


def test_bad_input_is_named():
    model = lm.TransformerLM(Arm.TOPK, TINY, seeds=(0,))
    with pytest.raises(ValueError, match="token ids must lie in"):
        model(torch.full((1, 2, 8), TINY.vocab_size))
    with pytest.raises(ValueError, match="idx must have shape"):
        model(tokens(2, 2, 8))
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(TINY, n_heads=3)


@settings(max_examples=40, deadline=None)
@given(
    S=st.integers(1, 3),
    n=st.integers(1, 9),
    d=st.integers(1, 6),
    V=st.integers(2, 12),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([0.1, 1.0, 30.0]),
)
def test_unembedding_cross_entropy_matches_torch_in_float64(S, n, d, V, seed, scale):
    """Values and both gradients against torch's cross_entropy on the einsum logits, with a
    different upstream gradient per seed (the training sum plus a balance term's weighting)."""
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(S, n, d, generator=g, dtype=torch.float64) * scale).requires_grad_()
    w = torch.randn(S, V, d, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randint(0, V, (S, n), generator=g)
    up = torch.randn(S, generator=g, dtype=torch.float64)
    ref = (
        torch.nn.functional.cross_entropy(
            torch.einsum("snd,svd->snv", h, w).flatten(0, 1), t.flatten(), reduction="none"
        )
        .reshape(S, n)
        .mean(-1)
    )
    ref_grads = torch.autograd.grad((ref * up).sum(), (h, w))
    out = lm.unembedding_cross_entropy(h, w, t)
    grads = torch.autograd.grad((out * up).sum(), (h, w))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_unembedding_cross_entropy_where_the_target_probability_underflows():
    """float32, a target 200 below the top logit: its probability is 0 in float32, the loss is
    still the log-sum-exp minus the target's logit (about 200), as torch's, not inf."""
    h = torch.tensor([[[1.0], [1.0]]])
    w = torch.tensor([[[100.0], [-100.0], [0.0]]])
    t = torch.tensor([[1, 0]])
    out = lm.unembedding_cross_entropy(h, w, t)
    ref = torch.nn.functional.cross_entropy(torch.einsum("snd,svd->snv", h, w)[0], t[0])
    assert torch.isfinite(out).all() and float(out[0]) > 99
    torch.testing.assert_close(out[0], ref)
    with torch.no_grad():  # the evaluation path keeps no gradient
        torch.testing.assert_close(lm.unembedding_cross_entropy(h, w, t), out)


def test_unembedding_cross_entropy_refuses_a_second_derivative():
    """Its backward treats softmax - onehot as a constant, so a double backward must raise rather
    than return a wrong Hessian-vector product (the first-order gradient itself passes gradcheck)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda a, b: lm.unembedding_cross_entropy(a, b, t), (h, w))
    for outer in (torch.sum, lambda loss: loss.square().sum()):  # upstream gradient constant / itself differentiable
        (gh,) = torch.autograd.grad(outer(lm.unembedding_cross_entropy(h, w, t)), h, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
            gh.square().sum().backward()


def test_loss_names_a_targets_shape_mismatch():
    model = lm.TransformerLM(Arm.DENSE, TINY, seeds=(0,))
    with pytest.raises(ValueError, match="targets must have the shape of idx"):
        model.loss(tokens(1, 2, 8), tokens(1, 2, 7))


def test_a_seed_does_not_depend_on_the_other_seeds():
    both = lm.TransformerLM(Arm.SOFT, TINY, seeds=(0, 1))
    alone = lm.TransformerLM(Arm.SOFT, TINY, seeds=(1,))
    x = tokens(1, 2, 8)
    torch.testing.assert_close(both(torch.cat([x, x]))[1], alone(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arm", [Arm.DENSE, Arm.TOPK, Arm.SOFT, Arm.TOPK_AUX, Arm.TOPK_LOSS_FREE, Arm.KMEANS])
def test_seed_batched_training_is_bit_reproducible(arm):
    """Two identical seed-batched training runs give the same losses and end with the same bits
    in every parameter and router buffer."""
    ids = torch.randint(0, TINY.vocab_size, (2000,), generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        model, history = lm.TransformerLM(arm, TINY, seeds=(0, 1, 2)), []
        train.train(
            model,
            train.next_token_loss(model, ids, 4),
            6,
            TINY.lr,
            progress=False,
            record_at=range(7),
            record=lambda step, m, loss: history.append(loss.tolist()),
        )
        runs.append((history, {n: t.detach().clone() for n, t in model.state_dict().items()}))
    (h1, a), (h2, b) = runs
    assert h1 == h2 and a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_causal_attention_does_not_look_ahead():
    model = lm.TransformerLM(Arm.TOPK, TINY, seeds=(0,))
    x = tokens(1, 1, 8)
    y = x.clone()
    y[..., -1] = (y[..., -1] + 1) % TINY.vocab_size
    torch.testing.assert_close(model(x)[..., :-1, :], model(y)[..., :-1, :])


@pytest.mark.parametrize("arm", [Arm.TOPK, Arm.SOFT])
def test_captured_ffn_inputs_and_experts_rebuild_the_models_ffn(arm):
    """What the probes read (each layer's FFN input and the layer's expert tensors) rebuilds the
    layer's own output: sum_e g_e f_e(h) = FFN(h), for every layer."""
    model = lm.TransformerLM(arm, TINY, seeds=(0,))
    with torch.no_grad():
        inputs = model.trace(tokens(1, 2, 8)).moe_inputs
        for layer, h in zip(model.ffn, inputs):
            p = layer.params(0, torch.float32)
            g = p.gates(h[0])
            f = (
                torch.einsum(
                    "eoh,neh->neo", p.W2, torch.nn.functional.gelu(torch.einsum("ehd,nd->neh", p.W1, h[0]) + p.b1)
                )
                + p.b2
            )
            torch.testing.assert_close(torch.einsum("ne,neo->no", g, f), layer(h)[0], rtol=1e-5, atol=1e-5)


def test_captured_jacobians_match_autograd_of_the_ffn():
    """The closed-form Jacobian of the whole MoE layer (A.2: the gated expert Jacobians plus the
    routing term) on captured hidden states equals autograd of the model's own FFN there."""
    model = lm.TransformerLM(Arm.SOFT, TINY, seeds=(0,)).double()
    with torch.no_grad():
        inputs = model.trace(tokens(1, 1, 8)).moe_inputs
    layer, h = model.ffn[1], inputs[1][0].double()[:4]
    p = layer.params(0)
    got = probes.moe_jacobian(p.W1, p.b1, p.W2, p.b2, h, p.gates(h), p.Wr, temperature=p.temperature)
    ref = torch.stack([torch.autograd.functional.jacobian(lambda v: layer(v[None, None])[0, 0], hi) for hi in h])
    torch.testing.assert_close(got, ref)


def test_a_short_run_on_the_shipped_data_beats_the_unigram_baseline():
    corpus = wikitext.load_wikitext(vocab_size=512)
    size = LMConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=2, context=32, n_experts=4, d_hidden=64)
    model = lm.TransformerLM(Arm.TOPK, size, seeds=(0,))
    train.train(model, train.next_token_loss(model, corpus.train, 16), 300, 3e-3, progress=False)
    ppl = float(lm.perplexity(lm.heldout_loss(model, corpus.heldout, windows=64))[0])
    unigram = wikitext.unigram_perplexity(corpus.train, corpus.heldout, 512)
    assert ppl < unigram, (ppl, unigram)


# --------------------------------------------------------------------------- the LM setting's results frame
SMALL = TINY_LM


@pytest.fixture(scope="module")
def small_frame():
    from moegeo.experiment import run

    return run(SMALL, cache=False, progress=False)


def test_lm_frame_is_tidy_with_setting_and_layers(small_frame):
    df = small_frame
    assert set(df.setting) == {"lm"}
    assert set(df.arm) == {a.value for a in SMALL.arms} | {"unigram"}
    probed = df[df.metric == "sigma1"]
    assert set(probed.layer) == {0, 1} and set(probed.step) == {0, SMALL.steps}  # step 0: the init control
    assert set(probed[probed.step == SMALL.steps].control) == {"", "permuted", "router_init"}
    assert set(df[df.metric == "perplexity"].step) == {0, 2, 4}
    assert set(df[df.metric.isin(["loss", "perplexity"])].layer) == {-1}
    for arm in ("topk", "soft"):
        assert (df[(df.arm == arm) & (df.metric == "cosine")].layer.nunique()) == 2


def test_lm_frame_probes_equal_the_probes_of_the_captured_layers(small_frame):
    """The frame's final sigma_1 of every layer and expert is the probe of that layer's own
    experts at its captured FFN input, recomputed here from a model retrained from scratch (so
    it also checks that the LM run is deterministic for a seed)."""
    corpus = wikitext.load_wikitext(vocab_size=SMALL.vocab_size)
    model = lm.TransformerLM(Arm.SOFT, SMALL)
    train.train(
        model, train.next_token_loss(model, corpus.train, SMALL.batch_size), SMALL.steps, SMALL.lr, progress=False
    )
    x, _ = wikitext.heldout_windows(corpus.heldout, SMALL.context)
    with torch.no_grad():
        inputs = model.trace(x[: SMALL.probe_tokens // SMALL.context].expand(2, -1, -1)).moe_inputs
    df = small_frame
    for layer, h in enumerate(inputs):
        for i, seed in enumerate(SMALL.seeds):
            p = model.params(i, layer)
            hd = h[i].double()
            g = p.gates(hd)
            J = probes.expert_jacobians(p.W1, p.b1, p.W2, hd)
            ref = probes.weighted_mean(torch.linalg.svdvals(J)[..., 0], g)  # (E,)
            got = (
                df[
                    (df.arm == "soft")
                    & (df.layer == layer)
                    & (df.seed == seed)
                    & (df.metric == "sigma1")
                    & (df.control == "")
                    & (df.reading == "jacobian=pointwise")
                    & (df.step == SMALL.steps)
                ]
                .sort_values("expert")
                .value.to_numpy()
            )
            torch.testing.assert_close(torch.as_tensor(got), ref, rtol=1e-6, atol=1e-9)


def test_lm_cli_prints_the_probe_table_per_layer(capsys):
    from moegeo.cli import main

    assert main(["--setting", "lm", "--steps", "2", "--no-cache", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "moegeo (lm)" in out and "held-out perplexity" in out and "unigram" in out
    for layer in range(LMConfig().n_layers):
        assert f"\n{layer} " in out or f"\n{layer}  " in out


def test_lm_config_rejects_what_the_setting_cannot_run():
    with pytest.raises(ValueError, match="dense, dense_matched, topk and soft"):
        LMConfig(arms=(Arm.TOPK_DEEP,))
    with pytest.raises(ValueError, match="multiple of context"):
        LMConfig(probe_tokens=100)
    with pytest.raises(ValueError, match="lr must be"):
        LMConfig(lr=float("nan"))


def test_lm_run_names_a_missing_data_directory(tmp_path):
    from moegeo.experiment import run

    with pytest.raises(FileNotFoundError):
        run(dataclasses.replace(SMALL, data=str(tmp_path / "nowhere")), cache=False, progress=False)


def test_pooled_view_is_every_expert_of_every_layer_and_a_layer_view_is_that_layer(small_frame):
    from moegeo.claims import Results

    df, R = small_frame, Results({"lm": small_frame})
    sel = df[
        (df.arm == "soft")
        & (df.metric == "sigma1")
        & (df.reading == "jacobian=mean")
        & (df.step == SMALL.steps)
        & (df.control == "")
    ]
    pooled = R.view("lm", "pooled").per_seed("soft", "sigma1", "jacobian=mean")
    pd.testing.assert_series_equal(pooled, sel.groupby("seed").value.mean(), check_names=False)
    one = R.view("lm", 1).per_seed("soft", "sigma1", "jacobian=mean")
    pd.testing.assert_series_equal(one, sel[sel.layer == 1].groupby("seed").value.mean(), check_names=False)
    with pytest.raises(LookupError, match="no rows"):
        R.view("lm", 7)
