"""Experiment configuration and the named readings of the paper's ambiguities.

Every default cites its source in the Dual Jacobian-PCA paper (Liu, 2025; "the paper").
The whole config goes into every result row and every cache key.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class PCASite(str, Enum):
    """Which hidden state the weighted PCA of A.4/B.5 is computed on.

    The paper says "hidden states entering the MoE layer" (h(x), §2.1, A.4), which in the
    controlled MLP-MoE is the input x itself; its reported numbers (dense reaching 90% variance
    with ~3 components, §3.2) are impossible for isotropic x, so the expert-internal states are
    run as alternative readings.
    """

    INPUT = "input"  # the paper's literal h(x): the MoE input
    PRE_ACTIVATION = "pre_activation"  # W1 x + b1 of each expert
    HIDDEN = "hidden"  # GELU(W1 x + b1) of each expert
    OUTPUT = "output"  # f_e(x) of each expert


class JacobianSite(str, Enum):
    """Which Jacobian the singular spectrum is taken of.

    §2.2 aggregates per-point spectra with routing weights; B.4 takes spectra "of J̄_e".
    """

    POINTWISE = "pointwise"  # routing-weighted mean over points of sigma(J_e(x_i))
    MEAN = "mean"  # sigma of the routing-weighted average Jacobian J̄_e (A.2/B.4)


class Norm(str, Enum):
    """The "Jacobian norm" of the training trajectory (Fig. 1A): spectral (A.2 calls
    sigma_1 "the Jacobian norm") or Frobenius (the other common meaning)."""

    SPECTRAL = "spectral"
    FROBENIUS = "frobenius"


class DenseWidth(str, Enum):
    """What "matched capacity" means for the dense baseline."""

    EXPERT = "expert"  # B.1: "identical hidden dimension ... to the MoE experts" (d_hidden)
    MATCHED = "matched"  # parameter-matched: hidden width E * d_hidden


class Arm(str, Enum):
    """The trained models of one seed. All arms share that seed's data."""

    DENSE = "dense"  # one FFN, hidden width d_hidden (DenseWidth.EXPERT)
    DENSE_MATCHED = "dense_matched"  # one FFN, hidden width E * d_hidden (DenseWidth.MATCHED)
    TOPK = "topk"  # Top-k routing, A.1/B.3
    SOFT = "soft"  # fully-soft routing, A.1/B.3
    # §4 expected failure mode 2, "residual connections, or shared normalization layers": the
    # Top-k layer inside a pre-LayerNorm residual block, x + MoE(LN(x))
    TOPK_COUPLED = "topk_coupled"
    # §4 expected failure mode 4, "Deep or multi-layer MoEs": two Top-k layers stacked
    TOPK_DEEP = "topk_deep"

    @property
    def is_moe(self) -> bool:
        return self is not Arm.DENSE and self is not Arm.DENSE_MATCHED

    @property
    def routing(self) -> str:
        return "soft" if self is Arm.SOFT else ("topk" if self.is_moe else "dense")

    @property
    def n_layers(self) -> int:
        return 2 if self is Arm.TOPK_DEEP else 1

    @property
    def residual(self) -> bool:
        return self is Arm.TOPK_COUPLED


DENSE_ARM = {DenseWidth.EXPERT: Arm.DENSE, DenseWidth.MATCHED: Arm.DENSE_MATCHED}


@dataclass(frozen=True)
class ExperimentConfig:
    """The controlled MLP-MoE experiment of Appendix B.

    ``steps`` is not given by the paper. The probes are recorded at every step of
    ``checkpoints()`` of one run (each a sensitivity reading), and the claims' primary reading
    is the final step (the paper's Figures 1B-D, 2 and 3 are "at the final training step").
    The default, 1000, makes the Fig. 1A plateau "after approximately 250 iterations" the first
    quarter of the run (README, "Training length"); ``--steps 3000`` runs longer.
    """

    n_experts: int = 8  # B.1 "Number of experts: E=8"
    d_model: int = 64  # B.1
    d_hidden: int = 128  # B.1 "Expert hidden dimension (same as dense FFN)"
    n_samples: int = 512  # B.1 "Batch size: 512 tokens"
    top_k: int = 2  # A.5/B.3 "k=2 unless otherwise specified"
    temperature: float = 1.0  # B.3 "Temperature: 1.0"
    lr: float = 1e-3  # B.6 "Adam ... learning rate of 1e-3"
    steps: int = 1000  # not in the paper; see class docstring
    record_every: int = 100  # trajectory resolution for Fig. 1A (not in the paper); also at each checkpoint
    trajectory_points: int = 64  # points per seed for per-point norms in the trajectory (cost)
    seeds: tuple[int, ...] = (0,)
    arms: tuple[Arm, ...] = (Arm.DENSE, Arm.DENSE_MATCHED, Arm.TOPK, Arm.SOFT)
    #: steps at which the full probes are taken besides the final one (those <= steps are kept)
    probe_steps: tuple[int, ...] = (250, 500, 1000, 2000)

    def __post_init__(self):
        for name in ("n_experts", "d_model", "d_hidden", "n_samples", "steps", "record_every", "trajectory_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(
                f"top_k must satisfy 1 <= k <= E = {self.n_experts}, got k = {self.top_k}"
            )
        for name in ("temperature", "lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if len(self.seeds) == 0 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be non-empty and distinct, got {self.seeds}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "arms", tuple(Arm(a) for a in self.arms))
        object.__setattr__(self, "probe_steps", tuple(sorted({int(s) for s in self.probe_steps})))

    def checkpoints(self) -> tuple[int, ...]:
        """The steps at which the full probes are taken: ``probe_steps`` up to ``steps``, and
        ``steps`` itself (the final step, the claims' primary reading)."""
        return tuple(sorted({s for s in self.probe_steps if 0 < s < self.steps} | {self.steps}))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["arms"] = [a.value for a in self.arms]
        d["probe_steps"] = list(self.probe_steps)
        d["seeds"] = list(self.seeds)
        return d

    def key(self) -> str:
        """The cache key: a hash of the full config, the package version and the package's
        source, so results computed by other code are never mistaken for this code's."""
        from . import __version__

        payload = json.dumps({"config": self.to_dict(), "version": __version__, "code": source_digest()},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]


#: the modules whose code decides the numbers of a run (claims and report only read them)
RESULT_MODULES = ("cache.py", "config.py", "experiment.py", "model.py", "probes.py", "validate.py")


@functools.cache
def source_digest() -> str:
    """sha256 over the sources of the modules that compute results."""
    h = hashlib.sha256()
    for name in RESULT_MODULES:
        h.update(name.encode() + (Path(__file__).parent / name).read_bytes())
    return h.hexdigest()
