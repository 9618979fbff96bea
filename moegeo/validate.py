"""Input checks, done once at the public boundary, with messages a researcher understands."""

from __future__ import annotations

import math
import numbers
import os

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
            raise TypeError(
                f"{name} must be a floating-point tensor, got dtype {t.dtype} "
                f"(convert it with {name}.double() or {name}.float())"
            )
        # a NaN or Inf entry makes the sum NaN or Inf (IEEE), so a finite sum proves every entry
        # finite in one read-only pass (the elementwise test costs about 4 passes: 16 ms on the
        # 16 MB of weights at d = 1024); a sum that overflows on finite entries, and a dtype torch
        # cannot sum (float8), fall through to it
        summed = t.dtype in SUMMABLE and bool(torch.isfinite(t.detach().sum()))
        if not summed and not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).sum().item()
            raise ValueError(f"{name} holds {bad} NaN/Inf value(s) out of {t.numel()}")


class NonFiniteError(ValueError):
    """A tensor holds NaN or Inf; ``index``: the positions along its leading dimension (e.g. the
    seeds of a seed-stacked batch) that do."""

    def __init__(self, message: str, index: list[int]):
        super().__init__(message)
        self.index = index


def check_finite_rows(name: str, t: torch.Tensor) -> None:
    """Raise ``NonFiniteError`` naming the positions along the leading dimension of ``t`` that
    hold NaN or Inf (one sum when none does)."""
    if t.dtype in SUMMABLE and bool(torch.isfinite(t.detach().sum())):
        return
    bad = torch.nonzero(~torch.isfinite(t.detach()).flatten(1).all(1)).flatten().tolist()
    if bad:
        raise NonFiniteError(
            f"{name} holds NaN/Inf values at index(es) {bad} of its leading dimension "
            f"(size {t.shape[0]}); expected finite values",
            bad,
        )


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


def check_expert_mass(mass: torch.Tensor) -> None:
    """Every expert must receive positive total routing weight N_e = sum_i g_e(x_i) (A.2)."""
    dead = torch.nonzero(mass <= 0).flatten().tolist()
    if dead:
        raise ValueError(
            f"expert(s) {dead} received zero total routing weight (sum g = 0); they have no "
            "local chart. Drop them (moegeo.experiment does so and reports it) or pass other data."
        )


def available_memory() -> int:
    """Bytes of memory available to a new allocation: MemAvailable of /proc/meminfo (Linux), else
    the free physical pages (``os.sysconf``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


#: fraction of the available memory a run or a loaded model may take (the rest is the system's)
MEMORY_FRACTION = 0.8


def check_memory(need: int, what: str, *, fraction: float = MEMORY_FRACTION, have: int | None = None) -> None:
    """Raise ``MemoryError`` when ``need`` bytes exceed ``fraction`` of the available memory
    (``available_memory()``, or ``have``); the message names ``what`` and both sizes."""
    have = available_memory() if have is None else have
    if need > fraction * have:
        raise MemoryError(
            f"{what} needs about {need / 2**30:.3g} GiB ({need:.3g} bytes) but only "
            f"{have / 2**30:.3g} GiB of memory is available (at most {fraction:.0%} of it may be used); "
            "make it smaller or run it on a larger machine"
        )


def check_positive_number(name: str, value, *, allow_zero: bool = False) -> float:
    """``value`` as a float: a real number (not a bool) that is finite and > 0 (>= 0 with
    ``allow_zero``); ``ValueError`` naming ``name`` otherwise."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def check_count(name: str, value, *, least: int | None = 1) -> int:
    """``value`` as an int: an integer (not a bool, not a float) >= ``least`` (None: any);
    ``TypeError`` or ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        bound = "" if least is None else f" >= {least}"
        raise TypeError(f"{name} must be an integer{bound}, got {value!r} ({type(value).__name__})")
    if least is not None and value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value}")
    return int(value)


def check_device(device) -> torch.device:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``) as a ``torch.device``
    that exists here; ``ValueError`` saying what this machine has otherwise (a CUDA device asked
    for where torch sees none, or an index beyond those it sees)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise ValueError(f"device {device!r}: torch sees no CUDA device here (torch {torch.__version__}); use cpu")
    if dev.index is not None and dev.index >= n:
        raise ValueError(f"device {device!r}: torch sees {n} CUDA device(s) here, cuda:0 to cuda:{n - 1}")
    return dev
