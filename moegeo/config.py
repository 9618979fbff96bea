"""Experiment configuration and the named readings of the paper's ambiguities.

Every default cites its source in the Dual Jacobian-PCA paper (Liu, 2025; "the paper").
The whole config goes into every result row and every cache key.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ._version import __version__
from .validate import check_count, check_memory, check_positive_number


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


#: the Switch Transformer's load-balancing loss coefficient (Fedus et al. 2022, §2.2: "alpha = 10^-2
#: ... throughout this work"), for Router.AUX_LOSS
AUX_COEF = 0.01
#: DeepSeek-V3's bias update speed (DeepSeek-AI 2024, §4.2: "the bias update speed gamma is set to
#: 0.001"), for Router.LOSS_FREE and the K-Means router's balancing biases
BIAS_RATE = 0.001
#: the online K-Means router's per-step EMA rate of each centroid toward the mean of the hidden
#: states routed to it in that step (not given in the routers paper's abstract; declared: a time
#: constant of 20 steps, a tenth of the language model's 200-step run, so the centroids follow
#: the moving hidden states)
CENTROID_EMA = 0.05


class Router(str, Enum):
    """How a Top-k layer picks its experts (the routers paper, arXiv 2605.12476)."""

    LEARNED = "learned"  # a linear router, softmax over the top k, no balancing (B.3)
    AUX_LOSS = "aux_loss"  # + the Switch Transformer load-balancing loss, AUX_COEF
    LOSS_FREE = "loss_free"  # + DeepSeek-V3 per-expert selection biases, sign-updated at BIAS_RATE
    KMEANS = "kmeans"  # parameter-free: cosine to EMA centroids (CENTROID_EMA) + sign-updated biases


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
    # the routers paper's balancing routers (Top-k; ``topk`` is its learned router)
    TOPK_AUX = "topk_aux"
    TOPK_LOSS_FREE = "topk_loss_free"
    KMEANS = "kmeans"

    @property
    def is_moe(self) -> bool:
        return self is not Arm.DENSE and self is not Arm.DENSE_MATCHED

    @property
    def routing(self) -> str:
        return "soft" if self is Arm.SOFT else ("topk" if self.is_moe else "dense")

    @property
    def router(self) -> Router:
        return {Arm.TOPK_AUX: Router.AUX_LOSS, Arm.TOPK_LOSS_FREE: Router.LOSS_FREE, Arm.KMEANS: Router.KMEANS}.get(
            self, Router.LEARNED
        )

    @property
    def n_layers(self) -> int:
        return 2 if self is Arm.TOPK_DEEP else 1

    @property
    def residual(self) -> bool:
        return self is Arm.TOPK_COUPLED


DENSE_ARM = {DenseWidth.EXPERT: Arm.DENSE, DenseWidth.MATCHED: Arm.DENSE_MATCHED}


class RunConfig:
    """What every run's config shares: its setting's name, its checkpoints, its dict and its
    cache key. Subclasses are frozen dataclasses with ``steps``, ``seeds``, ``arms`` and
    ``probe_steps``."""

    setting = ""

    def _check(self) -> None:
        """Validate and normalise the shared fields: every ``int`` field an integer >= 1 (not a
        bool, not a float), every ``float`` field a finite number > 0, ``1 <= top_k <= n_experts``,
        ``seeds`` distinct integers >= 0, ``arms`` distinct and non-empty, ``probe_steps``
        integers >= 0. Raises ``TypeError`` (a wrong type) or ``ValueError`` (a wrong value)
        naming the field."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                object.__setattr__(self, f.name, check_count(f.name, value, least=None if f.name == "top_k" else 1))
            elif f.type == "float":
                object.__setattr__(self, f.name, check_positive_number(f.name, value))
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must satisfy 1 <= k <= E = {self.n_experts}, got k = {self.top_k}")
        seeds = _integers("seeds", self.seeds, least=0)
        if len(seeds) == 0 or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be non-empty and distinct, got {self.seeds}")
        if isinstance(self.arms, (str, Arm)) or not self.arms:
            raise ValueError(
                f"arms must be a non-empty tuple of arms ({', '.join(a.value for a in Arm)}), got {self.arms!r}"
            )
        arms = tuple(Arm(a) for a in self.arms)
        twice = sorted({a.value for a in arms if arms.count(a) > 1})
        if twice:
            raise ValueError(f"arms must be distinct, got {twice} more than once in {[a.value for a in arms]}")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "probe_steps", tuple(sorted(set(_integers("probe_steps", self.probe_steps, least=0)))))

    def describe(self) -> str:
        """The config as its class and the fields that differ from the defaults, e.g.
        ``ExperimentConfig(lr=1000.0, seeds=(0, 1))``: how an error names the run."""
        default = type(self)()
        shown = self.to_dict()
        diff = [
            f"{f.name}={tuple(shown[f.name]) if isinstance(shown[f.name], list) else shown[f.name]!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]
        return f"{type(self).__name__}({', '.join(diff)})"

    def estimate_bytes(self, *, workers: int | None = None) -> dict[str, int]:
        """The largest tensors a run of this config holds at once, in bytes, by part (see the
        subclasses); ``workers``: seeds probed side by side (default: torch's thread count, as
        ``moegeo.experiment.per_seed`` runs them)."""
        raise NotImplementedError

    def check_memory(self, *, workers: int | None = None) -> None:
        """Raise ``MemoryError`` naming the estimated bytes (``estimate_bytes``, by part) when the
        run would take more than ``moegeo.validate.MEMORY_FRACTION`` of the available memory."""
        parts = self.estimate_bytes(workers=workers)
        detail = ", ".join(f"{name} {b / 2**30:.3g} GiB" for name, b in parts.items())
        check_memory(sum(parts.values()), f"{self.describe()} ({detail})")

    def checkpoints(self) -> tuple[int, ...]:
        """The checkpoints, the readings over training: ``probe_steps`` up to ``steps``, and
        ``steps`` itself (the final step, the claims' primary reading)."""
        return tuple(sorted({s for s in self.probe_steps if 0 < s < self.steps} | {self.steps}))

    def probe_steps_all(self) -> tuple[int, ...]:
        """Every step at which the full probes are taken: step 0 (the claims' initialisation
        control) and the ``checkpoints``."""
        return (0, *self.checkpoints())

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["arms"] = [a.value for a in self.arms]
        d["probe_steps"] = list(self.probe_steps)
        d["seeds"] = list(self.seeds)
        return d

    def key(self) -> str:
        """The cache key: a hash of the setting, the full config, the content digest of the data it
        reads (``data_digest``), the package version and the package's source, so results
        computed by other code or on other data are never mistaken for this code's."""
        payload = json.dumps(
            {
                "setting": self.setting,
                "config": self.to_dict(),
                "data": self.data_digest(),
                "version": __version__,
                "code": source_digest(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def data_digest(self) -> str | None:
        """sha256 of the data files a run reads from disk (None: the data are generated from the seeds)."""
        return None


def _integers(name: str, values, *, least: int) -> tuple[int, ...]:
    """``values`` as a tuple of ints, each an integer >= ``least`` (not a bool, not a float)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a tuple of integers, got {values!r}")
    return tuple(check_count(f"{name} entry", v, least=least) for v in values)


@dataclass(frozen=True)
class ExperimentConfig(RunConfig):
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

    setting = "mlp"

    def __post_init__(self):
        self._check()

    def estimate_bytes(self, *, workers: int | None = None) -> dict[str, int]:
        """The largest tensors of a run, in bytes: the data (x and y, float32, every seed), the
        widest arm's parameters with their gradients and Adam state (float32, every seed), its
        training activations (every expert on every point for soft routing), and the probes of
        ``workers`` seeds at once (float64: the per-point Jacobians, E N d^2 8 bytes per seed,
        twice for a residual arm, and the PCA sites' states, E N h)."""
        S, E, N, d, h = len(self.seeds), self.n_experts, self.n_samples, self.d_model, self.d_hidden
        workers = min(S, workers or _threads())
        layers = max(a.n_layers for a in self.arms)
        weights = E * (2 * h * d + h + 2 * d + 1)
        jac = E * N * d * d * 8 * (2 if any(a.residual for a in self.arms) else 1)
        return {
            "data": 2 * S * N * d * 4,
            "weights and Adam state": 4 * S * layers * weights * 4,
            "training activations": 3 * S * layers * N * E * h * 4,
            "per-point Jacobians": workers * jac,
            "probe states": workers * 4 * E * N * (h + d) * 8,
        }


@dataclass(frozen=True)
class LMConfig(RunConfig):
    """The language-model setting of the paper's later version ("Experiments on a 3-layer
    transformer with WikiText", abstract): a pre-LayerNorm decoder whose every FFN is the MLP
    setting's MoE layer, trained on word-level WikiText-2 (``moegeo.lm``, ``moegeo.wikitext``).

    The paper gives no sizes for it; each default's reason is beside it. Every size below is a
    budget choice, not the paper's (how they were sized: docs/decisions.md).
    """

    vocab_size: int = 2048  # the 2,047 most frequent training words + <unk> (17% unk on the valid split)
    d_model: int = 64  # the MLP setting's d_model (B.1), so the probes compare like with like
    n_layers: int = 3  # the later version: "a 3-layer transformer"
    n_heads: int = 4  # head width 16
    context: int = 32  # half of 64: the cost rule (docs/decisions.md); 32 words is enough to beat unigram clearly
    n_experts: int = 8  # B.1 "E=8"
    d_hidden: int = 128  # B.1 expert width
    top_k: int = 2  # A.5 "k=2 unless otherwise specified"
    temperature: float = 1.0  # B.3
    batch_size: int = 16  # windows per step and seed: 512 tokens, B.1's "512 tokens"
    lr: float = 3e-3  # Adam; the highest of 1e-3 / 3e-3 that trained stably in the sizing runs
    steps: int = 200  # the cost rule (docs/decisions.md)
    record_every: int = 50  # loss, held-out perplexity and Jacobian norms over training
    eval_windows: int = 64  # held-out windows for each perplexity record (2,048 tokens; cost)
    probe_tokens: int = 512  # held-out tokens whose FFN inputs are probed (B.1's 512)
    trajectory_points: int = 64  # tokens per seed for per-point norms in the trajectory (cost)
    data: str | None = None  # None: the shipped WikiText-2 (train on valid, hold out test); else a directory
    seeds: tuple[int, ...] = (0,)
    arms: tuple[Arm, ...] = (Arm.DENSE, Arm.DENSE_MATCHED, Arm.TOPK, Arm.SOFT)
    probe_steps: tuple[int, ...] = ()  # full probes at the final step only

    setting = "lm"

    def __post_init__(self):
        self._check()
        if self.data is not None:
            if not isinstance(self.data, (str, os.PathLike)) or not str(self.data).strip():
                raise ValueError(
                    f"data must be a directory holding WikiText-2 (None: the shipped copy), got {self.data!r}"
                )
            from .data.wikitext import split_files

            root = Path(self.data).expanduser().resolve()
            split_files(root)  # FileNotFoundError / ValueError naming what is missing
            object.__setattr__(self, "data", str(root))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model = {self.d_model} must be divisible by n_heads = {self.n_heads}")
        bad = [a.value for a in self.arms if a.n_layers != 1 or a.residual]
        if bad:
            raise ValueError(f"the LM setting runs the arms dense, dense_matched, topk and soft; got {bad}")
        if self.probe_tokens % self.context:
            raise ValueError(
                f"probe_tokens = {self.probe_tokens} must be a multiple of context = {self.context} "
                "(whole held-out windows)"
            )

    def data_digest(self) -> str:
        """sha256 of the WikiText files this run reads (``moegeo.data.wikitext.data_digest``: the
        shipped copy, or the split files of ``data``)."""
        from .data.wikitext import data_digest

        return data_digest(self.data)

    def estimate_bytes(self, *, workers: int | None = None) -> dict[str, int]:
        """The largest tensors of a run, in bytes: the parameters with their gradients and Adam
        state (float32, every seed), the training activations (the logits and their softmax, every
        layer's attention and FFN states), and the probes of ``workers`` seeds at once (float64:
        the per-point Jacobians, E N d^2 8 bytes per seed for N = probe_tokens, and the PCA sites)."""
        S, V, T, d, L = len(self.seeds), self.vocab_size, self.context, self.d_model, self.n_layers
        E, h, B, N = self.n_experts, self.d_hidden, self.batch_size, self.probe_tokens
        workers = min(S, workers or _threads())
        params = V * d + T * d + L * (4 * d * d + E * (2 * h * d + h + 2 * d + 1) + 4 * d)
        tokens = S * B * T
        return {
            "weights and Adam state": 4 * S * params * 4,
            "training activations": tokens * (3 * V + L * (12 * d + 3 * E * h)) * 4 + S * B * T * T * L * 4,
            "per-point Jacobians": workers * E * N * d * d * 8,
            "probe states": workers * 4 * E * N * (h + d) * 8,
        }


#: the parts of the package whose code never runs inside ``moegeo.experiment.run`` (they only read
#: its results, or are another data source): left out of the cache key. Every other module is in
#: it, so a module added anywhere else can only cause a recomputation, never a stale hit
#: (``tests/test_experiment.py`` checks that a run imports none of these)
READ_ONLY = ("claims", "report", "hf", "cli.py", "cli_common.py", "cli_hf.py", "cli_sweep.py", "__main__.py")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


@functools.cache
def source_digest() -> str:
    """sha256 over the source of every module of the package except ``READ_ONLY``."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] not in READ_ONLY:
            h.update(rel.as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
