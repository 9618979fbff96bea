"""FLOP floors of the training steps of both settings and of the claims sweep's probe stages.

A floor counts the arithmetic the code cannot avoid, as a lower bound: the matrix products it
runs (2 m n k FLOPs each) and the eigensolves of the Jacobians' Gram matrices. It divides by the
best sgemm rate of the run (``bench_report.sgemm_rate``). ``tests/test_bench_floors.py``
checks every count against ``torch.utils.flop_counter.FlopCounterMode`` and counted eigensolves.
"""

import pandas as pd

from moegeo import experiment
from moegeo.config import Arm, ExperimentConfig, JacobianSite, LMConfig, Norm, Router
from moegeo.frame import reading

#: the sweep's two probe stages, per arm: every trajectory record, every checkpoint's probes
STAGES = ("_trajectory_rows", "_checkpoint_rows")

#: eigenvalues only (``torch.linalg.eigvalsh``) of a symmetric n x n matrix: the Householder
#: reduction to tridiagonal form, 4/3 n^3 FLOPs (Golub & Van Loan, 4th ed., 8.3.1); the
#: tridiagonal eigenvalues that follow cost O(n^2)
EIGVALSH = 4 / 3


def measure_stages(monkeypatch, measure) -> None:
    """Route every call of the sweep's probe stages (``STAGES`` in ``moegeo.experiment``) through
    ``measure(name, arm, call)``, which must return ``call()``: the benchmark times them, the
    floors' test counts their FLOPs. ``train_arm`` looks the stages up at call time, so it sees
    the wrappers."""
    for name in STAGES:
        fn = getattr(experiment, name)

        def wrapper(arm, *args, _name=name, _fn=fn):
            return measure(_name, arm, lambda: _fn(arm, *args))

        monkeypatch.setattr(experiment, name, wrapper)


def hidden_width(arm: Arm, cfg: ExperimentConfig | LMConfig) -> int:
    """The hidden width of one expert of the arm (the dense arms: their one FFN)."""
    return cfg.d_hidden * (cfg.n_experts if arm is Arm.DENSE_MATCHED else 1)


def train_flops(arm: Arm, cfg: ExperimentConfig) -> float:
    """Matrix-product FLOPs of one full-batch step for all seeds. Each expert product of F FLOPs
    costs 5 F: W1 and W2 forward; backward W2's two gradients (its input's and its own) and only
    W1's own (the data need none). The router's product costs 2 of its own (forward, its weight's
    gradient); the K-Means router's scores 1 (no weight, no gradient). Top-k counts only routed
    compute (k experts per token), which its sparse dispatch approaches from above (its blocks
    are padded)."""
    S, N, d = len(cfg.seeds), cfg.n_samples, cfg.d_model
    expert_product = 2 * S * N * d * hidden_width(arm, cfg) * _experts_per_token(arm, cfg)
    router = 2 * S * N * d * cfg.n_experts if arm.is_moe else 0
    return 5 * expert_product + (1 if arm.router is Router.KMEANS else 2) * router


def _experts_per_token(arm: Arm, cfg: ExperimentConfig | LMConfig) -> int:
    """Experts each token's FFN computes: k for Top-k (routed compute only), all for soft, 1 dense."""
    return cfg.top_k if arm.routing == "topk" else (cfg.n_experts if arm.routing == "soft" else 1)


def jacobian_flops(n_points: int, d: int, h: int) -> tuple[float, float]:
    """(products, eigensolves) of one expert's Jacobians at ``n_points`` points and their spectra:
    J = W2 diag(a) W1 (2 d h d each), J^T J (2 d^3) and its eigenvalues (EIGVALSH d^3)."""
    return n_points * (2 * d * h * d + 2 * d**3), n_points * EIGVALSH * d**3


def checkpoint_flops(df: pd.DataFrame, cfg: ExperimentConfig) -> tuple[float, float]:
    """(products, eigensolves) of every checkpoint's probes in the results frame ``df`` of
    ``cfg`` (``rows.probe_rows``): each live expert's Jacobians at all N points and their
    spectra. Live experts are counted from the frame (one pointwise ``sigma1`` row each)."""
    rows = df[(df.metric == "sigma1") & (df.reading == reading(jacobian=JacobianSite.POINTWISE))]
    rows = rows[rows.step.isin(cfg.checkpoints())]
    return _per_expert(rows, cfg, cfg.n_samples)


def trajectory_flops(df: pd.DataFrame, cfg: ExperimentConfig) -> tuple[float, float]:
    """(products, eigensolves) of every trajectory record in ``df`` (``rows._trajectory_layer``):
    on the first ``trajectory_points`` points, each live expert's Jacobians and their spectra
    (one pointwise spectral-norm row each), and for an MoE layer the effective Jacobian (one row
    per seed and record), which forms every expert's Jacobians again and takes one spectrum."""
    norm = df[df.metric == "jacobian_norm"]
    products, eig = _per_expert(
        norm[norm.reading == reading(jacobian=JacobianSite.POINTWISE, norm=Norm.SPECTRAL)], cfg, cfg.trajectory_points
    )
    P, d = cfg.trajectory_points, cfg.d_model
    effective = int((norm.reading == reading(jacobian="effective", norm=Norm.SPECTRAL)).sum())
    return (
        products + effective * (cfg.n_experts * P * 2 * d * cfg.d_hidden * d + P * 2 * d**3),
        eig + effective * P * EIGVALSH * d**3,
    )


def _per_expert(rows: pd.DataFrame, cfg: ExperimentConfig, n_points: int) -> tuple[float, float]:
    products = eig = 0.0
    for arm, n in rows.groupby("arm").size().items():
        p, e = jacobian_flops(n_points, cfg.d_model, hidden_width(Arm(arm), cfg))
        products, eig = products + n * p, eig + n * e
    return products, eig


def lm_attention_flops(cfg: LMConfig) -> float:
    """The attention products' share of ``lm_flops``: QK^T and the weighted sum of V over the
    causal pairs only, 4 B d T (T + 1) / 2 per layer and seed, forward and backward (x 3). Only
    those pairs are needed: the full 4 B T^2 d would count masked work a floor must leave out,
    whether or not a kernel skips it."""
    return 3 * len(cfg.seeds) * cfg.n_layers * 2 * cfg.batch_size * cfg.context * (cfg.context + 1) * cfg.d_model


def lm_flops(arm: Arm | None, cfg: LMConfig) -> float:
    """Matrix-product FLOPs of one LM training step for all seeds (forward x 3 for forward +
    backward: every product's input needs its gradient, down to the embeddings): per layer the
    attention projections (8 n d^2), the attention products (``lm_attention_flops``) and the FFN
    (4 n d width, Top-k counting only its k routed experts) with its router (2 n d E; x 2 for
    the K-Means router, which has no weight); then the tied unembedding (2 n d V). n = B T
    tokens. ``arm=None``: without the FFN (the parts every arm shares)."""
    S, B, T, d = len(cfg.seeds), cfg.batch_size, cfg.context, cfg.d_model
    n = B * T
    ffn = 0.0
    if arm is not None:
        ffn = 3 * S * cfg.n_layers * 4 * n * d * hidden_width(arm, cfg) * _experts_per_token(arm, cfg)
        if arm.is_moe:
            ffn += (2 if arm.router is Router.KMEANS else 3) * S * cfg.n_layers * 2 * n * d * cfg.n_experts
    rest = 3 * S * (cfg.n_layers * 8 * n * d * d + 2 * n * d * cfg.vocab_size)
    return rest + lm_attention_flops(cfg) + ffn


def real_layer_flops(E: int, d: int, h: int, N: int, products: float) -> float:
    """The FLOP floor of ``hf.layer_rows`` on one SwiGLU layer's matrix-free path: its ``products``
    J^T J products (12 d h each: W_g, W_u, W_d and their transposes, counted as the probe made
    them), J̄_e (2 d^2 h per expert) and the Gram matrices of the PCA at its four sites (2 E N^2 D,
    N < D). The Krylov bases' reorthogonalisation, the small eigensolves and the elementwise work
    are not counted, so it is a lower bound."""
    return 12.0 * d * h * products + 2.0 * E * d * d * h + sum(2.0 * E * N * N * D for D in (d, h, h, d))
