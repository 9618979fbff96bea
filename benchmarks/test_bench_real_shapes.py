"""One MoE layer of a real model's shape, random weights, 512 tokens: ``hf.layer_rows`` (every
probe of the layer, the matrix-free path, float32 probes: ``hf.default_probe_dtype`` at these
widths) on a one-layer ``transformers`` model of that config, beside the probes' FLOP count
(``hf.estimate_probe``) at this machine's sgemm rate.

Accuracy beside the timing: sigma_1 of the per-token Jacobians of a subsample of routed tokens
by the probe's own float32 Lanczos, within 1e-4 (relative) of an exact float64 SVD of their
closed-form Jacobians.

Mixtral-8x7B's layer (d = 4096, h = 14336, E = 8, k = 2) is declared but runs only with
``MOEGEO_BENCH_MIXTRAL=1``: its float32 weights alone are 5.6 GiB, and its probes' arithmetic
(``hf.estimate_probe``) is several times the other two layers'."""

import os
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

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


@pytest.mark.parametrize("name", list(SHAPES))
def test_real_shape_layer(benchmark, name):
    if name == "Mixtral-8x7B" and os.environ.get("MOEGEO_BENCH_MIXTRAL") != "1":
        pytest.skip("Mixtral-8x7B's layer runs only with MOEGEO_BENCH_MIXTRAL=1 (5.6 GiB of float32 weights)")
    config, model, cap = _layer(name)
    dtype = hf.default_probe_dtype(cap.x.shape[1])
    benchmark.group = "one MoE layer of a real model's shape, 512 tokens"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = benchmark.pedantic(hf.layer_rows, args=(cap, name), kwargs=dict(dtype=dtype), rounds=1, iterations=1)
    assert rows and all(r["value"] == r["value"] for r in rows)  # no NaN
    assert {r["value"] for r in rows if r["metric"] == "jacobian_path"} == {1.0}  # the matrix-free path
    # accuracy: the probe's float32 Lanczos on a subsample of expert 0's routed tokens against exact float64
    tokens = torch.nonzero(cap.g[:, 0] > 0).flatten()[:SUBSAMPLE]
    w = cap.weights[0:1]
    op = probes.swiglu_jacobian_operator(*(t.to(dtype) for t in (w.Wg, w.Wu, w.Wd)), cap.x[tokens].to(dtype))
    got = hf.rows._lanczos(op, cap.x.shape[1], dtype, cap.x.device).values.reshape(-1).double()
    exact = torch.linalg.svdvals(
        probes.swiglu_jacobians(*(t.double() for t in (w.Wg, w.Wu, w.Wd)), cap.x[tokens].double())
    )[..., 0].reshape(-1)
    err = float(((got - exact).abs() / exact).max())
    assert err <= 1e-4
    est = hf.estimate_probe(config, TOKENS, dtype=torch.float32)
    benchmark.extra_info.update(
        method=name,
        d=int(cap.x.shape[1]),
        experts=int(cap.g.shape[1]),
        estimate_s=est.flops / hf.gemm_rate(dtype),  # hf.estimate_probe: Lanczos at its step cap
        sigma1_rel_err=err,
        probe_dtype=hf.dtype_name(dtype),
    )
