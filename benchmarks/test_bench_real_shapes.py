"""One MoE layer of a real model's shape, random weights, 512 tokens: ``hf.layer_rows`` (every
probe of the layer, the matrix-free path, float32 probes: ``hf.default_probe_dtype`` at these
widths) on a one-layer ``transformers`` model of that config, beside the probes' FLOP count
(``hf.estimate_probe``) at this machine's sgemm rate.

Accuracy beside the timing: sigma_1 of the per-token Jacobians of a subsample of routed tokens
by the probe's own float32 block Lanczos, within 1e-4 (relative) of the exact float64 value of
their closed-form Jacobians (the largest Gram eigenvalue, exact to about 1e-15 relative).

Beside it the layer's FLOP floor (``floors.real_layer_flops``: the Krylov products the probe
made, J̄_e and the PCA's Gram matrices, at the run's best sgemm rate) and the peak resident
memory while ``hf.layer_rows`` runs (VmHWM, reset just before it), against the expert weights'
bytes (the issue's targets, ``bench_report.REAL_SHAPE_GOALS``)."""

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from floors import real_layer_flops  # noqa: E402

from moegeo import hf, probes  # noqa: E402

#: name -> (model type, config): one decoder layer, a small vocabulary (the layer is timed, not the model)
SHAPES = {
    "Mixtral-8x7B": (
        "mixtral",
        dict(hidden_size=4096, intermediate_size=14336, num_local_experts=8, num_experts_per_tok=2),
    ),
    "OLMoE-1B-7B": ("olmoe", dict(hidden_size=2048, intermediate_size=1024, num_experts=64, num_experts_per_tok=8)),
    "Qwen3-30B-A3B": (
        "qwen3_moe",
        dict(hidden_size=2048, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True),
    ),
}
TOKENS, SUBSAMPLE = 512, 8
#: decoder layers of the whole model (all MoE), to extrapolate one layer's time to it
LAYERS = {"Mixtral-8x7B": 32, "OLMoE-1B-7B": 16, "Qwen3-30B-A3B": 48}


def _layer(name):
    model_type, shape = SHAPES[name]
    config = transformers.AutoConfig.for_model(
        model_type,
        num_hidden_layers=1,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=1024,
        max_position_embeddings=TOKENS,
        eos_token_id=1,
        pad_token_id=0,
        **shape,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, experts_implementation="eager"
        ).eval()
    ids = torch.randint(0, 1024, (1, TOKENS), generator=torch.Generator().manual_seed(0))
    return config, model, next(hf.captures(model, ids, max_tokens=TOKENS))


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


@pytest.mark.parametrize("name", list(SHAPES))
def test_real_shape_layer(benchmark, name):
    config, model, cap = _layer(name)
    dtype = hf.default_probe_dtype(cap.x.shape[1])
    benchmark.group = "one MoE layer of a real model's shape, 512 tokens"
    calls = []

    def lanczos(op, *args, **kwargs):  # count the Krylov products the probe makes
        res = spectra_block_lanczos(op, *args, **kwargs)
        if op.d_in == op.d_out and kwargs.get("block", 1) == hf.LANCZOS_BLOCK and len(op.batch_shape) == 2:
            calls.append(res.iterations * hf.LANCZOS_BLOCK * op.batch_shape[1])
        return res

    spectra_block_lanczos = probes.block_lanczos_top
    before = _status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as mp:
        warnings.simplefilter("ignore")
        mp.setattr(probes, "block_lanczos_top", lanczos)
        rows = benchmark.pedantic(hf.layer_rows, args=(cap, name), kwargs=dict(dtype=dtype), rounds=1, iterations=1)
    peak = _status("VmHWM:")
    assert rows and all(r["value"] == r["value"] for r in rows)  # no NaN
    assert {r["value"] for r in rows if r["metric"] == "jacobian_path"} == {1.0}  # the matrix-free path
    # accuracy: the probe's float32 Lanczos on a subsample of expert 0's routed tokens against exact float64
    tokens = torch.nonzero(cap.g[:, 0] > 0).flatten()[:SUBSAMPLE]
    w = cap.weights[0:1]
    op = probes.swiglu_jacobian_operator(*(t.to(dtype) for t in (w.Wg, w.Wu, w.Wd)), cap.x[tokens].to(dtype))
    got = hf.large.lanczos(op, cap.x.shape[1], dtype, cap.x.device).values.reshape(-1).double()
    J = probes.swiglu_jacobians(*(t.double() for t in (w.Wg, w.Wu, w.Wd)), cap.x[tokens].double())
    # sigma_1 from the float64 Gram eigenvalues: the largest is exact to about 1e-15 relative
    exact = probes.singular_values(J, method="gram")[..., 0].reshape(-1)
    err = float(((got - exact).abs() / exact).max())
    assert err <= 1e-4
    est = hf.estimate_probe(config, TOKENS, dtype=torch.float32)
    w = cap.weights
    E, d, h = w.Wg.shape[0], w.Wg.shape[2], w.Wg.shape[1]
    benchmark.extra_info.update(
        method=name,
        d=int(d),
        h=int(h),
        experts=int(E),
        layers=int(LAYERS[name]),
        products=float(sum(calls)),
        floor_flops=real_layer_flops(E, d, h, TOKENS, sum(calls)),
        peak_bytes=float(peak),
        rss_before=float(before),
        weight_bytes=float(sum(t.numel() * t.element_size() for t in (w.Wg, w.Wu, w.Wd))),
        estimate_s=est.flops / hf.gemm_rate(dtype),  # hf.estimate_probe: Lanczos at its step cap
        sigma1_rel_err=err,
        probe_dtype=hf.dtype_name(dtype),
    )
