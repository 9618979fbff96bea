"""Input checks, done once at the public boundary, with messages a researcher understands."""
from __future__ import annotations

import torch


SUMMABLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # check_finite's one-sum test


def check_finite(**tensors: torch.Tensor) -> None:
    """Raise ``TypeError`` naming the first tensor that is not a floating-point tensor, and
    ``ValueError`` naming the first that holds NaN or Inf.

    The probes compute in floating point: an integer or bool tensor would otherwise fail deep
    inside torch ("expected scalar type ...") or be converted silently by some probes only.
    """
    for name, t in tensors.items():
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype} "
                            f"(convert it with {name}.double() or {name}.float())")
        # a NaN or Inf entry makes the sum NaN or Inf (IEEE), so a finite sum proves every entry
        # finite in one read-only pass (the elementwise test costs about 4 passes: 16 ms on the
        # 16 MB of weights at d = 1024); a sum that overflows on finite entries, and a dtype torch
        # cannot sum (float8), fall through to it
        summed = t.dtype in SUMMABLE and bool(torch.isfinite(t.detach().sum()))
        if not summed and not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).sum().item()
            raise ValueError(f"{name} holds {bad} NaN/Inf value(s) out of {t.numel()}")


def check_shape(name: str, t: torch.Tensor, expected: tuple, what: str = "") -> None:
    """Check ``t.shape`` against ``expected`` (``None`` entries match any size)."""
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {want}{what}, got {tuple(t.shape)}")


def check_weights(name: str, w: torch.Tensor) -> None:
    """Sample weights must be finite and non-negative."""
    check_finite(**{name: w})
    if (w < 0).any():
        raise ValueError(f"{name} holds negative routing weights (min {w.min().item():.3g})")


def check_gates(g: torch.Tensor, atol: float = 1e-5) -> None:
    """Gates ``g: (N, E)`` must be points of the simplex Delta^{E-1} (A.1)."""
    check_weights("g", g)
    err = (g.sum(-1) - 1).abs().max().item()
    if err > atol:
        raise ValueError(f"routing weights g must sum to 1 over experts per sample (max |sum-1| = {err:.3g})")


def check_expert_mass(mass: torch.Tensor) -> None:
    """Every expert must receive positive total routing weight N_e = sum_i g_e(x_i) (A.2)."""
    dead = torch.nonzero(mass <= 0).flatten().tolist()
    if dead:
        raise ValueError(
            f"expert(s) {dead} received zero total routing weight (sum g = 0); they have no "
            "local chart. Drop them (moegeo.experiment does so and reports it) or pass other data."
        )
