"""Bad input gets a clear error, never a silent NaN."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from moegeo import ExperimentConfig, MLPMoE, probes, validate


def mlp(E=3, h=5, d=4, N=6):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(E, h, d, generator=g),
        torch.randn(E, h, generator=g),
        torch.randn(E, d, h, generator=g),
        torch.randn(N, d, generator=g),
    )


@pytest.mark.parametrize("which", [0, 1, 2, 3])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_weights_or_inputs(which, bad):
    args = list(mlp())
    args[which] = args[which].clone()
    args[which].view(-1)[0] = bad
    with pytest.raises(ValueError, match="NaN/Inf"):
        probes.expert_jacobians(*args)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([0.0, 1.0, -2.5, 6e4, 3e38, -3e38, 1e-45, float("nan"), float("inf"), float("-inf")]),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e5m2]),
    st.booleans(),
)
@example([3e38, 3e38], torch.float32, False)  # finite entries whose sum overflows: not an error
@example([6e4, 6e4], torch.float16, True)
@example([float("inf"), float("-inf")], torch.float32, False)  # the sum is NaN
def test_check_finite_agrees_with_the_elementwise_test(values, dtype, strided):
    """check_finite's one-sum shortcut raises exactly when some entry is NaN or Inf, also when
    finite entries overflow the sum (3e38 + 3e38 is Inf in float32) or Infs cancel to NaN, for
    every floating dtype (float8, which torch cannot sum, takes the elementwise test) and for a
    non-contiguous view."""
    t = torch.tensor(values, dtype=torch.float64).to(dtype)  # out-of-range values become Inf in the cast
    if strided:
        t = t.repeat_interleave(2)[::2]
    if bool(torch.isfinite(t).all()):
        validate.check_finite(t=t)
    else:
        with pytest.raises(ValueError, match=f"t holds {int((~torch.isfinite(t)).sum())} NaN/Inf"):
            validate.check_finite(t=t)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_non_floating_input_is_named_with_its_dtype(dtype):
    W1, b1, W2, x = mlp()
    bad = x.to(dtype)
    with pytest.raises(TypeError, match=f"x must be a floating-point tensor, got dtype {dtype}"):
        probes.expert_jacobians(W1, b1, W2, bad)
    with pytest.raises(TypeError, match=f"h must be a floating-point tensor, got dtype {dtype}"):
        probes.weighted_pca(bad, torch.ones(6))  # it used to cast integers to float64 silently
    with pytest.raises(TypeError, match=f"w must be a floating-point tensor, got dtype {dtype}"):
        probes.weighted_pca(x, torch.ones(6, dtype=dtype))
    with pytest.raises(TypeError, match=f"J must be a floating-point tensor, got dtype {dtype}"):
        probes.singular_values(bad[None])


def test_bad_start_vectors():
    W1, b1, W2, x = mlp()
    op = probes.mlp_jacobian_operator(W1, b1, W2, x)
    with pytest.raises(ValueError, match=r"v0 must have shape \(3, 6, 4\)"):
        probes.lanczos_sigma1(op, v0=torch.ones(6, 4))
    with pytest.raises(ValueError, match="starts must be >= 1"):
        probes.power_iteration_sigma1(op, starts=0)


def test_negative_routing_weights():
    W1, b1, W2, x = mlp()
    g = torch.full((6, 3), 1 / 3)
    g[0] = torch.tensor([1.5, -0.5, 0.0])
    with pytest.raises(ValueError, match="negative"):
        probes.mean_jacobian(W1, b1, W2, x, g)
    with pytest.raises(ValueError, match="negative"):
        probes.weighted_pca(x, g.T)


def test_gates_of_any_scale_give_the_same_mean_jacobian_and_negative_ones_are_refused():
    """J̄_e normalises each expert by its own total: weights need not sum to 1 per point."""
    W1, b1, W2, x = mlp()
    torch.testing.assert_close(
        probes.mean_jacobian(W1, b1, W2, x, torch.full((6, 3), 0.5)),
        probes.mean_jacobian(W1, b1, W2, x, torch.full((6, 3), 1 / 3)),
    )
    with pytest.raises(ValueError, match="negative routing weights"):
        probes.mean_jacobian(W1, b1, W2, x, torch.full((6, 3), -0.5))


def test_expert_with_zero_routing_weight_is_named():
    W1, b1, W2, x = mlp()
    g = torch.zeros(6, 3)
    g[:, 0] = 1.0
    with pytest.raises(ValueError, match=r"expert\(s\) \[1, 2\] received zero total routing weight"):
        probes.mean_jacobian(W1, b1, W2, x, g)
    with pytest.raises(ValueError, match="zero total routing weight"):
        probes.weighted_pca(x, g.T)
    with pytest.raises(ValueError, match="zero total routing weight"):
        probes.weighted_mean(torch.ones(3, 6), g)


def test_shape_mismatches():
    W1, b1, W2, x = mlp()
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 4\)"):
        probes.expert_jacobians(W1, b1, W2, x[:, :3])
    with pytest.raises(ValueError, match="W2 must have shape"):
        probes.expert_jacobians(W1, b1, W2[:2], x)
    with pytest.raises(ValueError, match=r"g must have shape \(6, 3\)"):
        probes.mean_jacobian(W1, b1, W2, x, torch.full((5, 3), 1 / 3))
    with pytest.raises(ValueError, match="h has 6 samples"):
        probes.weighted_pca(x, torch.ones(5))


def test_jacobian_too_large_points_to_matrix_free_path():
    W1, b1, W2, x = mlp()
    with pytest.raises(MemoryError, match=r"would need .* GiB.*mlp_jacobian_operator"):
        probes.expert_jacobians(W1, b1, W2, x, max_bytes=100)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(top_k=0), "1 <= k <= E"),
        (dict(top_k=9), "1 <= k <= E"),
        (dict(temperature=0.0), "temperature"),
        (dict(steps=0), "steps"),
        (dict(seeds=()), "seeds"),
        (dict(seeds=(1, 1)), "seeds"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**kw)


def test_bad_model():
    with pytest.raises(ValueError, match="1 <= k <= E"):
        MLPMoE(n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="routing must be"):
        MLPMoE(routing="hash")
    with pytest.raises(ValueError, match="one expert"):
        MLPMoE(n_experts=4, routing="dense")
    with pytest.raises(ValueError, match="seed dimension"):
        MLPMoE(seeds=(0, 1))(torch.zeros(5, 64))
    with pytest.raises(ValueError, match="x must have shape"):
        MLPMoE()(torch.zeros(5, 32))


def test_cosine_of_zero_matrix():
    with pytest.raises(ValueError, match="zero matrix"):
        probes.cosine_matrix(torch.zeros(2, 3, 3))


def test_module_that_is_not_an_moe():
    from moegeo.model import expert_params

    with pytest.raises(TypeError, match="Linear is not an MoE layer"):
        expert_params(torch.nn.Linear(4, 4))
    with pytest.raises(IndexError, match="holds 1 seeds"):
        expert_params(MLPMoE(), seed_index=3)
    assert expert_params(MLPMoE(n_experts=3, top_k=1)).W1.shape == (3, 128, 64)
