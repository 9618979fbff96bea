"""moegeo.hf on tiny random Hugging Face MoE models built offline (float64, eager experts).

Every model type is checked against quantities computed here independently of the adapter:
the block output rebuilt from the captured routing and weights by this file's own expert
formulas, the routing rebuilt from the router weights, Jacobians by autograd.
"""

import functools
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from moegeo import hf, probes  # noqa: E402
from moegeo.cli import main  # noqa: E402
from moegeo.report import probe as probe_report  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
SMALL = dict(
    hidden_size=32,
    intermediate_size=48,
    moe_intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
    max_position_embeddings=64,
)
GROUPED = dict(n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=0, n_shared_experts=1)
#: model type -> config overrides: the six of issue 10, then five more that need no code of their own
CONFIGS = {
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=24),
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, norm_topk_prob=False),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2, pad_token_id=0, eos_token_id=1),
    "deepseek_v3": dict(
        GROUPED,
        n_group=4,
        topk_group=2,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        num_key_value_heads=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    # a small swiglu_limit so that the clamps are active on these tiny activations
    "gpt_oss": dict(
        num_local_experts=8,
        num_experts_per_tok=2,
        head_dim=8,
        swiglu_limit=0.02,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "glm4_moe": dict(GROUPED, n_group=2, topk_group=1),
    "dots1": dict(GROUPED, n_group=2, topk_group=1),
    "ernie4_5_moe": dict(moe_num_experts=8, moe_k=2),
    "phimoe": dict(num_local_experts=8, num_experts_per_tok=2),
    "minimax": dict(num_local_experts=8, num_experts_per_tok=2),
}
SHARED = {"qwen2_moe", "deepseek_v3", "glm4_moe", "dots1", "ernie4_5_moe"}


def build(model_type, **overrides):
    cfg = transformers.AutoConfig.for_model(model_type, **{**SMALL, **CONFIGS[model_type], **overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, experts_implementation="eager")
    with torch.no_grad():  # spread the routers out of their near-uniform initial state
        for m in hf.moe_layers(model):
            router = next(mod for name, mod in m.block.named_children() if name in ("gate", "router"))
            router.weight.mul_(20)
    return model.eval()


def ids(B=4, T=16, seed=0):
    return torch.randint(0, SMALL["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


@functools.cache
def captured(model_type):
    model = build(model_type)
    return model, hf.capture(model, ids())


@functools.cache
def frame(model_type):
    model, _ = captured(model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf.probe_model(model, ids(), progress=False)


# --------------------------------------------------------------------------- this file's own expert formulas
def swiglu(w, x):
    """Every expert's output by the textbook SwiGLU formula: (E, N, d)."""
    h = torch.nn.functional.silu(x @ w.Wg.transpose(1, 2)) * (x @ w.Wu.transpose(1, 2))
    return h @ w.Wd.transpose(1, 2)


def gpt_oss_expert(w, e, limit, alpha):
    """GPT-OSS's expert e (modeling_gpt_oss.GptOssExperts, 5.24): clamped gate and up, gate *
    sigmoid(alpha gate), times (up + 1), biases on both projections. ``(d,) -> (d,)``."""

    def f(x):
        a = (w.Wg[e] @ x + w.bg[e]).clamp(max=limit)
        u = (w.Wu[e] @ x + w.bu[e]).clamp(-limit, limit)
        return w.Wd[e] @ ((u + 1) * a * torch.sigmoid(alpha * a)) + w.bd[e]

    return f


def expert_outputs(model, cap):
    if model.config.model_type == "gpt_oss":
        fns = [
            gpt_oss_expert(cap.weights, e, model.config.swiglu_limit, model.config.swiglu_alpha)
            for e in range(cap.g.shape[1])
        ]
        return torch.stack([torch.func.vmap(f)(cap.x) for f in fns])
    return swiglu(cap.weights, cap.x)


def shared_output(block, x):
    """The shared experts by their own modules: Qwen2-MoE's sigmoid-gated shared expert, the plain
    shared experts of DeepSeek, GLM-4-MoE, dots1 and ERNIE-4.5-MoE."""
    mlp = getattr(block, "shared_expert", None) or block.shared_experts
    out = mlp(x)
    gate = getattr(block, "shared_expert_gate", None)
    return out if gate is None else torch.sigmoid(gate(x)) * out


# --------------------------------------------------------------------------- the oracle, per model type
@pytest.mark.parametrize("model_type", CONFIGS)
def test_captured_routing_and_experts_rebuild_the_block_output(model_type):
    model, caps = captured(model_type)
    assert caps, "no layer captured"
    for cap in caps:
        block = model.get_submodule(cap.name.rpartition(".")[0])
        with torch.no_grad():
            shared = shared_output(block, cap.block_input) if model_type in SHARED else 0
            rebuilt = torch.einsum("ne,end->nd", cap.g, expert_outputs(model, cap)) + shared
        torch.testing.assert_close(rebuilt, cap.output, rtol=1e-9, atol=1e-12)
        assert (cap.shared is not None) == (model_type in SHARED)
        assert (
            (cap.g > 0).sum(1) == model.config.num_experts_per_tok
            if model_type != "ernie4_5_moe"
            else (cap.g > 0).sum(1) == model.config.moe_k
        ).all()


def test_gpt_oss_weights_are_read_interleaved_with_their_clamps_active():
    model, (cap, *_) = captured("gpt_oss")
    raw = model.get_submodule(cap.name).gate_up_proj.detach()  # (E, d, 2h): gate, up, gate, up, ...
    torch.testing.assert_close(cap.weights.Wg, raw[:, :, 0::2].transpose(1, 2))
    torch.testing.assert_close(cap.weights.Wu, raw[:, :, 1::2].transpose(1, 2))
    limit = model.config.swiglu_limit
    a = cap.x @ cap.weights.Wg.transpose(1, 2) + cap.weights.bg[:, None]
    assert (a > limit).any() and (a < limit).any(), "the clamp must bind on some entries for the test to mean anything"
    assert not cap.silu_swiglu


@pytest.mark.parametrize("model_type", [t for t in CONFIGS if t != "gpt_oss"])
def test_closed_form_jacobian_matches_autograd_through_the_models_expert(model_type):
    model, (cap, *_) = captured(model_type)
    assert cap.silu_swiglu
    x = cap.x[:3]
    J = probes.swiglu_jacobians(cap.weights.Wg, cap.weights.Wu, cap.weights.Wd, x)
    for e in range(J.shape[0]):
        full = torch.autograd.functional.jacobian(cap.expert_fn(e), x)  # (N, d, N, d)
        n = torch.arange(len(x))
        torch.testing.assert_close(J[e], full[n, :, n, :], rtol=1e-9, atol=1e-12)
        full[n, :, n, :] = 0
        assert full.abs().max() == 0, "an expert's output must depend on its own token only"


def test_gpt_oss_jacobian_by_autograd_through_its_expert_matches_its_formula():
    model, (cap, *_) = captured("gpt_oss")
    x = cap.x[:6]
    for e in (0, 5):
        f = gpt_oss_expert(cap.weights, e, model.config.swiglu_limit, model.config.swiglu_alpha)
        torch.testing.assert_close(
            hf.tokenwise_jacobians(cap.expert_fn(e), x), torch.func.vmap(torch.func.jacrev(f))(x), rtol=1e-9, atol=1e-12
        )


def test_tokenwise_operator_applies_the_tokenwise_jacobians():
    model, (cap, *_) = captured("gpt_oss")
    x, fn = cap.x[:5], cap.expert_fn(2)
    J, op = hf.tokenwise_jacobians(fn, x), hf.tokenwise_operator(fn, x)
    g = torch.Generator().manual_seed(1)
    v, u = torch.randn(5, 32, generator=g, dtype=torch.float64), torch.randn(5, 32, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), torch.einsum("noi,ni->no", J, v))
    torch.testing.assert_close(op.rmatvec(u), torch.einsum("noi,no->ni", J, u))
    w = torch.rand(5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(hf.tokenwise_jacobians(fn, x, weights=w), torch.einsum("n,noi->oi", w, J) / w.sum())


def test_swiglu_operator_and_mean_jacobian_agree_with_the_dense_jacobians():
    g = torch.Generator().manual_seed(0)
    E, h, d, N = 3, 7, 5, 11
    Wg, Wu, Wd = (torch.randn(E, h, d, generator=g, dtype=torch.float64) for _ in range(3))
    Wd = Wd.transpose(1, 2).contiguous()
    bg, bu = torch.randn(E, h, generator=g, dtype=torch.float64), torch.randn(E, h, generator=g, dtype=torch.float64)
    x, w = torch.randn(N, d, generator=g, dtype=torch.float64), torch.rand(N, E, generator=g, dtype=torch.float64)
    J = probes.swiglu_jacobians(Wg, Wu, Wd, x, bg=bg, bu=bu)
    f = lambda e: lambda xi: Wd[e] @ (torch.nn.functional.silu(Wg[e] @ xi + bg[e]) * (Wu[e] @ xi + bu[e]))  # noqa: E731
    torch.testing.assert_close(J[1], torch.func.vmap(torch.func.jacrev(f(1)))(x))
    op, v = (
        probes.swiglu_jacobian_operator(Wg, Wu, Wd, x, bg=bg, bu=bu),
        torch.randn(E, N, d, generator=g, dtype=torch.float64),
    )
    torch.testing.assert_close(op.matvec(v), torch.einsum("enoi,eni->eno", J, v))
    torch.testing.assert_close(op.rmatvec(v), torch.einsum("enoi,eno->eni", J, v))
    V = torch.randn(2, 4, E, N, d, generator=g, dtype=torch.float64)  # leading dims: one GEMM for all (broadcasts)
    assert op.broadcasts
    torch.testing.assert_close(op.matvec(V), torch.einsum("enoi,abeni->abeno", J, V))
    torch.testing.assert_close(op.rmatvec(V), torch.einsum("enoi,abeno->abeni", J, V))
    torch.testing.assert_close(probes.swiglu_mean_jacobian(Wg, Wu, Wd, x, w, bg=bg, bu=bu), probes.weighted_mean(J, w))
    with pytest.raises(ValueError, match=r"Wu must have shape \(3, 7, 5\)"):
        probes.swiglu_jacobians(Wg, Wu[:, :6], Wd, x)
    with pytest.raises(MemoryError, match="swiglu_jacobian_operator"):
        probes.swiglu_jacobians(Wg, Wu, Wd, x, max_bytes=100)


# --------------------------------------------------------------------------- routing, recomputed from the router
def test_mixtral_routing_is_softmax_top2_renormalised():
    model, caps = captured("mixtral")
    for cap in caps:
        router = model.get_submodule(cap.name.rpartition(".")[0]).gate
        p = torch.softmax(cap.x @ router.weight.T, -1)
        top, idx = p.topk(2, -1)
        want = torch.zeros_like(p).scatter(1, idx, top / top.sum(-1, keepdim=True))
        torch.testing.assert_close(cap.g, want, rtol=1e-5, atol=1e-6)  # the router runs in float32


def _deepseek_routing(x, router, with_bias=True):
    """DeepSeek-V3 (arXiv 2412.19437 §2.1.2): sigmoid affinities, selection on affinity + bias within
    the top groups (each group scored by its two best), weights the affinities without the bias,
    renormalised and scaled."""
    s = torch.sigmoid(x @ router.weight.T.double())  # the router keeps its weight in float32
    choice = s + router.e_score_correction_bias.double() if with_bias else s
    E, G = s.shape[1], router.num_group
    groups = choice.view(-1, G, E // G).topk(2, -1).values.sum(-1).topk(router.topk_group, -1).indices
    allowed = torch.zeros(len(s), G, dtype=torch.bool).scatter(1, groups, True).repeat_interleave(E // G, 1)
    idx = choice.masked_fill(~allowed, float("-inf")).topk(router.top_k, -1).indices
    w = s.gather(1, idx)
    return torch.zeros_like(s).scatter(1, idx, w / w.sum(-1, keepdim=True) * router.routed_scaling_factor)


def test_deepseek_v3_routing_is_sigmoid_group_limited_and_bias_corrected():
    model = build("deepseek_v3")
    g = torch.Generator().manual_seed(3)
    for m in hf.moe_layers(model):
        m.block.gate.e_score_correction_bias.copy_(0.3 * torch.randn(8, generator=g))
    for cap in hf.capture(model, ids()):
        router = model.get_submodule(cap.name.rpartition(".")[0]).gate
        torch.testing.assert_close(cap.g, _deepseek_routing(cap.x, router), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(cap.g, _deepseek_routing(cap.x, router, with_bias=False)), (
            "the planted bias must change the selection"
        )
        assert cap.g.sum(1).mean() == pytest.approx(model.config.routed_scaling_factor, rel=1e-6)


# --------------------------------------------------------------------------- the frame
@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe"])
def test_the_summary_of_a_checkpoint_is_one_row_block_per_layer(model_type):
    """``moegeo.summary_table`` on a checkpoint's frame: per layer the mean over its routed experts
    of each scalar probe, one column named for the model."""
    import moegeo

    df = frame(model_type)
    t = moegeo.summary_table(df)
    assert list(t.columns) == [model_type]
    assert set(t.index.get_level_values("layer")) == set(df.layer[df.layer >= 0])
    for layer in set(df.layer[df.layer >= 0]):
        rows = df[(df.layer == layer) & (df.metric == "sigma1") & (df.reading == "jacobian=pointwise")]
        rows = rows[(rows.expert >= 0) & (rows["index"] == -1)]
        assert t.loc[(layer, "sigma1", "jacobian=pointwise"), model_type] == pytest.approx(rows.value.mean())
    assert not t.isna().all(axis=1).any()


@pytest.mark.parametrize("model_type", CONFIGS)
def test_frame_has_every_layer_expert_and_probe(model_type):
    df, (_model, caps) = frame(model_type), captured(model_type)
    assert set(df["setting"]) == {"hf"} and set(df["model_type"]) == {model_type} == set(df["arm"])
    assert list(df.columns[:10]) == [
        "setting",
        "seed",
        "arm",
        "layer",
        "expert",
        "reading",
        "metric",
        "step",
        "index",
        "value",
    ]
    assert sorted(df["layer"].unique()) == [c.layer for c in caps]
    for cap in caps:
        d = df[df["layer"] == cap.layer]
        live = set(torch.nonzero(cap.g.sum(0) > 0).flatten().tolist())
        assert set(d[d["metric"] == "sigma1"]["expert"]) == live | (
            {hf.SHARED_EXPERT} if model_type in SHARED else set()
        )
        assert set(d[d["metric"] == "excluded"]["expert"]) == set(range(cap.g.shape[1])) - live
        for metric in ("load", "sigma", "energy@10", "cosine", "explained_variance", "cumvar@10", "k@0.9", "geodesic"):
            assert metric in set(d["metric"]), metric
        assert set(d[d["metric"] == "cumvar@10"]["reading"]) >= {"pca_site=input", "pca_site=hidden", "pca_site=output"}
        assert hf.SHARED_EXPERT not in set(d[d["metric"] == "cosine"]["expert"])


def test_frame_sigma1_is_that_of_the_autograd_jacobians():
    model, (cap, *_) = captured("mixtral")
    df = frame("mixtral")
    got = df[(df["layer"] == cap.layer) & (df["metric"] == "sigma1") & (df["reading"] == "jacobian=pointwise")]
    e = int(got["expert"].iloc[0])
    J = hf.tokenwise_jacobians(cap.expert_fn(e), cap.x)
    w = cap.g[:, e]
    assert got["value"].iloc[0] == pytest.approx(float(w @ torch.linalg.matrix_norm(J, 2) / w.sum()), rel=1e-9)


@pytest.mark.parametrize("model_type", ["deepseek_v3", "gpt_oss"])
def test_matrix_free_path_agrees_with_the_dense_one(model_type):
    model = build(model_type)
    x = ids(2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense = hf.probe_model(model, x, layers=[1], progress=False)
        free = hf.probe_model(model, x, layers=[1], progress=False, max_bytes=1_000_000)
    assert dense.query("metric == 'jacobian_path'")["value"].tolist() == [0.0]
    assert free.query("metric == 'jacobian_path'")["value"].tolist() == [1.0]
    assert (free.query("metric == 'sigma1_converged'")["value"] == 1).all()
    # the matrix-free path keeps sigma_1..sigma_K of J̄_e (block Lanczos), the dense one every sigma_j
    top = free[(free["metric"] == "sigma") & (free["expert"] >= 0)]  # a small shared expert is dense
    assert set(top["reading"]) == {"jacobian=mean"} and set(top["index"]) == set(range(1, hf.MEAN_SPECTRUM_K + 1))
    for metric in ("sigma1", "sigma", "cosine", "cumvar@10", "geodesic"):
        a, b = (
            f[
                (f["metric"] == metric)
                & ((f["reading"] == "jacobian=mean") & (f["index"] <= hf.MEAN_SPECTRUM_K) | (metric != "sigma"))
            ]
            .set_index(["expert", "reading", "index"])["value"]
            .sort_index()
            for f in (dense, free)
        )
        assert a.index.equals(b.index), metric
        assert (a - b).abs().max() < 1e-9, metric


def test_probe_groups_and_the_token_cap_on_the_matrix_free_path():
    """``probes``: only the groups asked for; ``spectrum``: sigma_1..sigma_10 per token by block
    Lanczos, their routing-weighted mean against exact SVDs of the autograd Jacobians;
    ``jacobian_tokens``: the first N routed tokens of each expert, in text order."""
    model, (_, cap) = captured("mixtral")
    x, free = ids(), dict(layers=[cap.layer], progress=False, max_bytes=1_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = hf.probe_model(model, x, probes=("spectrum",), **free)
        capped = hf.probe_model(model, x, probes=("pointwise",), jacobian_tokens=3, **free)
        means = hf.probe_model(model, x, probes=("mean", "pca"), **free)
    assert spec.query("metric == 'jacobian_path'")["value"].tolist() == [1.0]
    assert not spec["reading"].str.contains("pca_site|jacobian=mean").any()
    assert not means["reading"].str.contains("jacobian=pointwise").any()
    assert means["reading"].str.contains("pca_site=input").any() and (means["metric"] == "cosine").any()
    assert (spec.query("metric == 'sigma1_converged'")["value"] == 1).all()
    k = hf.MEAN_SPECTRUM_K
    for e in torch.nonzero(cap.g.sum(0) > 0).flatten().tolist():
        w = cap.g[:, e].double()
        s = torch.linalg.svdvals(hf.tokenwise_jacobians(cap.expert_fn(e), cap.x))[:, :k]
        got = spec[(spec.expert == e) & (spec.metric == "sigma")].sort_values("index")["value"].to_numpy()
        np.testing.assert_allclose(got, (w @ s / w.sum()).numpy(), rtol=1e-7)
        first = torch.nonzero(w > 0).flatten()[:3]
        sigma1 = capped[(capped.expert == e) & (capped.metric == "sigma1")]["value"].item()
        assert sigma1 == pytest.approx(float(w[first] @ s[first, 0] / w[first].sum()), rel=1e-7)
        assert capped[(capped.expert == e) & (capped.metric == "jacobian_tokens")]["value"].item() == len(first)
    with pytest.raises(ValueError, match="probes must be a non-empty collection of pointwise, spectrum, mean, pca"):
        hf.probe_model(model, x, probes=("sigma",), **free)
    with pytest.raises(ValueError, match="jacobian_tokens must be an integer >= 1, got 0"):
        hf.probe_model(model, x, jacobian_tokens=0, **free)


# --------------------------------------------------------------------------- errors and checks
def test_a_model_without_moe_layers_is_refused_saying_what_it_holds():
    cfg = transformers.LlamaConfig(
        **{
            k: SMALL[k]
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "vocab_size",
            )
        }
    )
    model = transformers.LlamaForCausalLM(cfg)
    with pytest.raises(ValueError, match=r"LlamaForCausalLM \(model_type 'llama'\) has no MoE layer.*LlamaMLP"):
        hf.probe_model(model, ids())


def test_an_unreadable_expert_layout_is_refused_with_its_shapes():
    experts = torch.nn.Module()
    experts.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 10, 6))  # 2h = 10, but down_proj says h = 4
    experts.down_proj = torch.nn.Parameter(torch.zeros(4, 6, 4))
    with pytest.raises(ValueError, match=r"cannot read gate_up_proj \(4, 10, 6\) and down_proj \(4, 6, 4\)"):
        hf.expert_weights(experts, d=6)
    experts.has_gate = False
    with pytest.raises(ValueError, match="ungated experts"):
        hf.expert_weights(experts, d=6)


def test_a_scaled_block_is_read_and_a_nonlinear_one_refused():
    model = build("qwen3_moe")
    block = hf.moe_layers(model)[0].block
    handle = block.register_forward_hook(lambda mod, args, out: 2.5 * out)
    cap = hf.capture(model, ids(), layers=[0])[0]
    assert cap.scale == pytest.approx(2.5)
    torch.testing.assert_close(torch.einsum("ne,end->nd", cap.g, swiglu(cap.weights, cap.x)), cap.output)
    handle.remove()
    block.register_forward_hook(lambda mod, args, out: torch.tanh(50 * out))
    with pytest.raises(ValueError, match="not a constant times its experts' output"):
        hf.capture(model, ids(), layers=[0])


def test_bad_arguments_are_named_and_no_hook_is_left_behind():
    model = build("olmoe")
    with pytest.raises(ValueError, match=r"layers \[5\] are not MoE layers of this model; its MoE layers are \[0, 1\]"):
        hf.probe_model(model, ids(), layers=[5])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
        hf.capture(model, ids() + 64)
    with pytest.raises(TypeError, match="integer torch.Tensor"):
        hf.capture(model, ids().double())
    model.get_submodule("model.layers.1.mlp").register_forward_hook(
        lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    with pytest.raises(RuntimeError, match="boom"):
        hf.capture(model, ids())
    hooks = [(n, len(m._forward_pre_hooks)) for n, m in model.named_modules() if m._forward_pre_hooks]
    assert hooks == [], hooks
    assert [n for n, m in model.named_modules() if m._forward_hooks] == ["model.layers.1.mlp"]


def test_a_float64_model_on_the_default_experts_kernel_is_probed_on_eager_and_restored():
    cfg = transformers.AutoConfig.for_model("qwen3_moe", **{**SMALL, **CONFIGS["qwen3_moe"]})
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float64)
    assert model.config._experts_implementation != "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = hf.probe_model(model, ids(1, 8), layers=[0], progress=False)
    assert (df["metric"] == "sigma1").any()
    assert model.config._experts_implementation == cfg._experts_implementation != "eager"


def test_max_tokens_keeps_the_first_tokens():
    model, _ = captured("mixtral")
    cap = hf.capture(model, ids(4, 16), layers=[1], max_tokens=20)[0]
    assert cap.x.shape == (20, 32) and cap.g.shape == (20, 8)
    full = hf.capture(model, ids(4, 16), layers=[1], max_tokens=None)[0]
    torch.testing.assert_close(cap.x, full.x[:20])


# --------------------------------------------------------------------------- loading and the CLI
def _word_tokenizer(words):
    """A word-level tokenizer over ``words`` (id 0 is ``<unk>``), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def _save_checkpoint(path, tokenizer=True, model_type="mixtral"):
    """A tiny random model saved as a new user would, with a tokenizer over the most frequent words
    of the shipped WikiText-2 test split (unless ``tokenizer=False``)."""
    from moegeo.data.wikitext import shipped_text

    model = build(model_type)
    model.to(torch.float32).save_pretrained(path)
    if tokenizer:
        counts = {}
        for w in shipped_text("test").split()[:20000]:
            counts[w] = counts.get(w, 0) + 1
        _word_tokenizer(sorted(counts, key=counts.get, reverse=True)[: SMALL["vocab_size"] - 1]).save_pretrained(path)
    return model


TEXT = "the , . of and in " * 20  # 120 tokens, every one in the saved tokenizer's vocabulary


def test_load_gives_a_float64_eager_model_and_refuses_one_too_large(tmp_path, monkeypatch):
    _save_checkpoint(tmp_path, tokenizer=False)
    model = hf.load(tmp_path)
    assert next(model.parameters()).dtype == torch.float64 and model.config._experts_implementation == "eager"
    n, need = hf.estimate_bytes(model.config)
    assert n == sum(p.numel() for p in model.parameters()) and need == 8 * n
    monkeypatch.setattr(hf.checkpoint, "available_memory", lambda: 2**16)
    with pytest.raises(MemoryError, match=r"needs about 0\.0 GiB in torch.float64 but only 0\.0 GiB"):
        hf.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        hf.load(tmp_path / "missing")


def test_a_directory_without_config_json_is_refused_as_such(tmp_path, capsys):
    _word_tokenizer(["the"]).save_pretrained(tmp_path)  # a tokenizer alone is not a checkpoint
    want = f"{tmp_path} has no config.json; expected a Hugging Face checkpoint directory saved with save_pretrained"
    with pytest.raises(FileNotFoundError, match=re.escape(want)):
        hf.load(tmp_path)
    assert main(["probe", "--hf-model", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert want in capsys.readouterr().err


@pytest.mark.parametrize("model_type", ["qwen2_moe", "olmoe", "mixtral"])
def test_a_checkpoint_saved_without_a_tokenizer_is_refused_saying_so(tmp_path, model_type):
    _save_checkpoint(tmp_path, tokenizer=False, model_type=model_type)
    with pytest.raises(
        ValueError,
        match=rf"no usable tokenizer found in {re.escape(str(tmp_path))}: no tokenizer "
        r"file .* save it with the model, e\.g\. tokenizer\.save_pretrained\(DIR\)",
    ):
        hf.tokenize(tmp_path, text=TEXT, tokens=8)


@pytest.mark.parametrize(
    "save, found",
    [
        (
            lambda path: _word_tokenizer([]).save_pretrained(path),
            r"tokenizer files: .*tokenizer\.json.*vocabulary of 1 token",
        ),
        # transformers 5 builds Qwen2's tokenizer with a one-token vocabulary when the files are missing
        (
            lambda path: (path / "tokenizer_config.json").write_text('{"tokenizer_class": "Qwen2Tokenizer"}'),
            r"tokenizer files: tokenizer_config\.json; it loads as Qwen2Tokenizer with a vocabulary of 1 token",
        ),
    ],
    ids=["unk-only-vocabulary", "config-without-vocabulary"],
)
def test_a_tokenizer_with_an_empty_vocabulary_is_refused_saying_so(tmp_path, save, found):
    _save_checkpoint(tmp_path, tokenizer=False, model_type="qwen2_moe")
    save(tmp_path)
    with pytest.raises(ValueError, match=f"no usable tokenizer found in .*: {found}"):
        hf.tokenize(tmp_path, text=TEXT, tokens=8)


def test_cli_without_a_tokenizer_says_so_before_loading_the_model(tmp_path, capsys, monkeypatch):
    _save_checkpoint(tmp_path, tokenizer=False)
    monkeypatch.setattr(
        hf.rows, "load", lambda *a, **k: pytest.fail("the model was loaded before the tokenizer was checked")
    )
    assert main(["probe", "--hf-model", str(tmp_path), "--tokens", "8", "--out", str(tmp_path / "r")]) == 2
    assert f"no usable tokenizer found in {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--context", "0"], "argument --context: must be >= 1, got 0"),
        (["--context", "-3"], "argument --context: must be >= 1, got -3"),
        (["--tokens", "0"], "argument --tokens: must be >= 1, got 0"),
        (["--tokens", "many"], "argument --tokens: expected a positive integer, got 'many'"),
    ],
)
def test_cli_refuses_counts_below_one(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["probe", "--hf-model", "DIR", *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_layer_the_checkpoint_does_not_have_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    _save_checkpoint(tmp_path)
    monkeypatch.setattr(
        hf.rows, "load", lambda *a, **k: pytest.fail("the model was loaded before --layers was checked")
    )
    with pytest.raises(
        ValueError, match=r"layers \[-1, 2\] do not exist: the checkpoint has 2 decoder layers \(0 to 1\)"
    ):
        hf.probe(tmp_path, text=TEXT, tokens=8, layers=[1, 2, -1])
    assert (
        main(["probe", "--hf-model", str(tmp_path), "--layers", "5", "--tokens", "8", "--out", str(tmp_path / "r")])
        == 2
    )
    assert "layers [5] do not exist" in capsys.readouterr().err


def test_exactly_the_requested_tokens_are_probed(tmp_path):
    _save_checkpoint(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown token, no warning
        batch = hf.tokenize(tmp_path, text=TEXT, tokens=30, context=8)
    first = hf.tokenize(tmp_path, text=TEXT, tokens=120, context=60).input_ids.flatten()
    assert batch.input_ids.shape == (4, 8) and batch.n_tokens == 30 and batch.unknown == 0
    assert torch.equal(batch.input_ids.flatten(), first[:32]), (
        "the first 30 tokens, then 2 completing the last sequence"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = hf.probe(tmp_path, text=TEXT, tokens=30, layers=[1], context=8, progress=False)
    assert set(df["layer"]) == {1} and df.query("metric == 'n_tokens'")["value"].tolist() == [30.0]
    assert df.query("metric == 'context'")["value"].tolist() == [8.0]
    assert df.query("metric == 'routed_tokens'")["value"].sum() == 30 * 2, "Top-2 of 30 tokens"
    short = hf.tokenize(tmp_path, text="the , . of and", tokens=30, context=8)
    assert short.n_tokens == 5 and short.input_ids.shape == (1, 5)
    wrapped = hf.tokenize(tmp_path, text="the , . of and", tokens=5, context=3)  # the text ends: its start completes it
    five = short.input_ids.flatten().tolist()
    assert wrapped.n_tokens == 5 and wrapped.input_ids.flatten().tolist() == five + five[:1]
    with pytest.raises(ValueError, match=r"context 65 exceeds the model's max_position_embeddings \(64\)"):
        hf.probe(tmp_path, text=TEXT, tokens=8, context=65)
    with pytest.raises(ValueError, match="gives no tokens"):
        hf.tokenize(tmp_path, text="", tokens=8)


def test_the_tokens_completing_the_last_sequence_do_not_change_the_probed_ones():
    model, _ = captured("mixtral")
    x = ids(3, 16)
    y = x.clone()
    y[-1, 5:] = (y[-1, 5:] + 1) % SMALL["vocab_size"]
    for a, b in zip(*(hf.capture(model, t, max_tokens=2 * 16 + 5) for t in (x, y))):
        assert a.x.shape[0] == 37
        torch.testing.assert_close(a.x, b.x)
        torch.testing.assert_close(a.g, b.g)


def test_cli_probes_a_saved_checkpoint_as_a_new_user_would(tmp_path):
    _save_checkpoint(tmp_path / "tiny-mixtral")
    out = tmp_path / "report"
    env = dict(os.environ, TQDM_DISABLE="1")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "moegeo",
            "probe",
            "--hf-model",
            str(tmp_path / "tiny-mixtral"),
            "--tokens",
            "100",
            "--context",
            "32",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "2 MoE layer(s)" in run.stdout and "PROBE.md" in run.stdout
    said = "on the first 100 tokens of the shipped WikiText-2 test split, run in sequences of 32 tokens"
    report = (out / "PROBE.md").read_text()
    assert said in run.stdout and said in report
    assert "## Layer 0" in report and "## Layer 1" in report and probe_report.LOAD in report
    assert "| expert | tokens | load | σ₁ pointwise |" in report
    assert (out / "figures" / "sigma1.png").stat().st_size > 0 and (out / "figures" / "cosine.png").stat().st_size > 0
    assert (out / "probe.csv").stat().st_size > 0


def test_a_text_of_unknown_words_is_warned_on_stderr_and_in_the_report(tmp_path, capsys):
    _save_checkpoint(tmp_path / "m")
    text = "the zyzzyva , quokka " * 10  # half the words are not in the vocabulary
    (tmp_path / "t.txt").write_text(text)
    with pytest.warns(UserWarning, match="50% of the probed tokens are the tokenizer's unknown token"):
        assert hf.tokenize(tmp_path / "m", text=text, tokens=40).unknown == 0.5
    assert (
        main(
            [
                "probe",
                "--hf-model",
                str(tmp_path / "m"),
                "--text",
                str(tmp_path / "t.txt"),
                "--tokens",
                "16",
                "--out",
                str(tmp_path / "r"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        "moegeo probe: warning: 50% of the probed tokens are the tokenizer's unknown token" in capsys.readouterr().err
    )
    assert "**Warning:** 50% of the probed tokens" in (tmp_path / "r" / "PROBE.md").read_text()


def test_readme_python_example_runs_on_a_saved_checkpoint(tmp_path):
    code = re.search(r"From Python:\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    _save_checkpoint(tmp_path)
    env = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code.replace("path/to/checkpoint", str(tmp_path)), str(README), "exec"), env)
    assert env["df"].query("metric == 'n_tokens'")["value"].tolist() == [256.0, 256.0]
    assert len(env["caps"]) == 2 and env["caps"][0].x.shape == (256, SMALL["hidden_size"])


# --------------------------------------------------------------------------- the report
def test_report_defines_load_and_counts_each_experts_tokens(tmp_path):
    df, (_model, caps) = frame("qwen2_moe"), captured("qwen2_moe")  # norm_topk_prob=False: weights sum below 1
    for cap in caps:
        d = df[df["layer"] == cap.layer]
        count = (cap.g > 0).sum(0)
        assert d[d["metric"] == "routed_tokens"].set_index("expert")["value"].to_dict() == {
            e: float(n) for e, n in enumerate(count.tolist()) if n > 0
        }
        total = d[d["metric"] == "routing_weight_sum"]["value"].item()
        assert d[d["metric"] == "load"]["value"].sum() == pytest.approx(total) and total < 0.99
    report = probe_report.write(df, tmp_path, "qwen2_moe", "a test frame").read_text()
    assert probe_report.LOAD in report and f"Mean Σ_e g_e per token (the sum of the loads): {total:.4g}." in report
    assert "| expert | tokens | load |" in report


def test_experts_with_fewer_tokens_than_d_are_flagged():
    model = build("mixtral")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = hf.probe_model(model, ids(8, 16), layers=[1], progress=False)
    tokens = df[df["metric"] == "routed_tokens"].set_index("expert")["value"]
    few = probe_report.few_token_experts(df, 1)
    assert few == sorted(e for e, n in tokens.items() if n < probe_report.FEW_TOKENS_PER_DIM * SMALL["hidden_size"])
    assert 0 < len(few) < len(tokens), "the test needs experts on both sides of the threshold"
    table = probe_report.layer_table(df, 1)
    assert [i for i in table.index if i.endswith(probe_report.FEW)] == [f"{e}{probe_report.FEW}" for e in few]


def test_figures_label_the_experts_and_the_signed_cosine_and_draw_no_lines():
    import matplotlib.pyplot as plt

    df = frame("mixtral")
    fig = probe_report.cosine_figure(df, [0, 1])
    live = probe_report.cosine_matrix(df, 0).index
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [str(e) for e in live]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [str(e) for e in live]
    assert "signed cosine" in fig.axes[-1].get_ylabel()
    sig = probe_report.sigma1_figure(df, [0, 1])
    assert all(line.get_linestyle() == "None" and line.get_marker() == "o" for line in sig.axes[0].get_lines())
    plt.close("all")


def test_pretrained_claims_take_the_moe_layers_as_units():
    """``pytest claims/ --hf-model``'s claims on a probe frame: one unit per MoE layer, shared
    experts left out, every primary reading tested on every layer."""
    from moegeo.claims import Results, evaluate
    from moegeo.claims import geometric_asymmetry as ga

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = ga.layers_as_seeds(frame("deepseek_v3"))
    assert (df.expert != hf.SHARED_EXPERT).all() and set(df.seed) == {0, 1} and set(df.layer) == {0}
    assert int(df.d_model.iloc[0]) == SMALL["hidden_size"]
    v = evaluate(Results({"hf": df}), ga.PRETRAINED_CLAIMS)
    prim = v[v.primary]
    assert sorted(prim.claim) == sorted(c.id for c in ga.PRETRAINED_CLAIMS)
    assert (prim.n == 2).all() and set(prim.verdict) == {"TOO FEW SEEDS"}  # two layers can never pass
    assert set(prim.family) == {"geometric_asymmetry-pretrained/primary"}


# --------------------------------------------------------------------------- a checkpoint beside its initialisation
def test_a_baseline_probe_is_the_architecture_freshly_initialised(tmp_path):
    """``hf.probe(baseline="init")``: the checkpoint's rows at step 1, the freshly initialised
    architecture's at step 0, on the same tokens; a checkpoint that is that very initialisation
    gives the same rows at both steps, and another seed gives other rows."""
    _save_checkpoint(tmp_path)  # config, tokenizer
    hf.initialised(tmp_path, seed=3).save_pretrained(tmp_path)  # the weights: seed 3's initialisation
    keys = ["layer", "expert", "metric", "reading", "index"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = hf.probe(tmp_path, tokens=48, baseline="init", baseline_seed=3, progress=False)
        other = hf.probe(tmp_path, tokens=48, baseline="init", baseline_seed=4, progress=False)
    assert set(df.step) == {0, 1}
    ckpt = df[(df.step == 1) & ~df.metric.isin(["context", "unknown_tokens"])].sort_values(keys)
    init = df[df.step == 0].sort_values(keys)
    assert len(ckpt) == len(init) > 0
    assert (ckpt[keys].to_numpy() == init[keys].to_numpy()).all()
    np.testing.assert_allclose(ckpt.value.to_numpy(float), init.value.to_numpy(float), rtol=1e-12, atol=1e-14)
    seed4 = other[(other.step == 0) & (other.metric == "sigma1")].sort_values(keys).value.to_numpy(float)
    seed3 = init[init.metric == "sigma1"].value.to_numpy(float)
    assert not (len(seed4) == len(seed3) and np.allclose(seed4, seed3))  # other routers: other live experts too
    with pytest.raises(ValueError, match="baseline must be None or 'init'"):
        hf.probe(tmp_path, tokens=48, baseline="random")


def test_the_claims_command_decides_a_checkpoint_beside_its_initialisation(tmp_path, capsys):
    """`moegeo claims --hf-model DIR --baseline init`: every pretrained-model claim, its verdict
    and its init control's, from the same engine and family as `pytest claims/ --hf-model`."""
    import pandas as pd

    from moegeo.claims import geometric_asymmetry

    _save_checkpoint(tmp_path)
    out_csv = tmp_path / "verdicts.csv"
    argv = ["claims", "--hf-model", str(tmp_path), "--tokens", "48", "--baseline", "init", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    ids = {c.id for c in geometric_asymmetry.PRETRAINED_CLAIMS}
    assert all(i in out for i in ids) and "control init" in out and "MoE layer(s) as units" in out
    v = pd.read_csv(out_csv)
    assert set(v.claim) == ids and set(v[v.primary].family) == {"geometric_asymmetry-pretrained/primary"}
    with pytest.raises(SystemExit) as err:
        main(["claims", "--hf-model", str(tmp_path / "nowhere")])
    assert err.value.code == 2 and "is not a Hugging Face checkpoint directory" in capsys.readouterr().err
