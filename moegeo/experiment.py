"""config -> data -> model -> train -> probes -> one tidy results frame.

The frame (columns ``seed, arm, expert, reading, metric, step, index, value`` plus the full
config) is the single interface the claims and the report read. ``expert = -1`` marks a
whole-model quantity (the loss), ``index`` the position in a curve (1-based) or the partner
expert of a cosine, ``-1`` for scalars.
"""
from __future__ import annotations

import ctypes
import warnings

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import probes
from .cache import cached
from .config import Arm, ExperimentConfig, JacobianSite, Norm, PCASite
from .model import MLPMoE, make_data

#: PCA thresholds of the paper: k@0.9 and cum-var@10 (A.4, B.5).
PCA_TAU, PCA_K = 0.9, 10
#: Jacobian decay summaries: energy reached by 10 directions, sigma_10 / sigma_1, k at 90% energy.
ENERGY_K, ENERGY_TAU = 10, 0.9

COLUMNS = ["seed", "arm", "expert", "reading", "metric", "step", "index", "value"]


def reading(**choices) -> str:
    """The reading label stored with every number, e.g. ``jacobian=mean;norm=spectral``."""
    return ";".join(f"{k}={getattr(v, 'value', v)}" for k, v in choices.items())


def build_model(arm: Arm, cfg: ExperimentConfig) -> MLPMoE:
    """The model of one arm for all of ``cfg.seeds``."""
    if arm.is_moe:
        return MLPMoE(cfg.n_experts, cfg.d_model, cfg.d_hidden, arm.value, cfg.top_k, cfg.temperature,
                      cfg.seeds, stream=f"init/{arm.value}")
    width = cfg.d_hidden * (cfg.n_experts if arm is Arm.DENSE_MATCHED else 1)
    return MLPMoE(1, cfg.d_model, width, "dense", seeds=cfg.seeds, stream=f"init/{arm.value}")


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None hides bars when output is not a terminal (and TQDM_DISABLE=1)."""
    return None if progress is None else not progress


# --------------------------------------------------------------------------- training
def train_arm(arm: Arm, cfg: ExperimentConfig, x: torch.Tensor, y: torch.Tensor, progress: bool | None = None):
    """Full-batch MSE with Adam (B.6) for every seed at once; ``x, y: (S, N, d)``.

    The loss is the sum over seeds of each seed's mean squared error, so each seed's gradient
    (and hence its Adam update, which is elementwise) is that of its own independent run.
    Returns the trained model and the trajectory rows (loss and Jacobian norms, Fig. 1A).
    """
    torch.manual_seed(0)  # nothing random should draw from the global generator; pin it anyway
    model = build_model(arm, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rows = []
    bar = tqdm(range(cfg.steps + 1), desc=f"train {arm.value}", disable=_quiet(progress), leave=False)
    for step in bar:
        loss = ((model(x) - y) ** 2).mean(dim=(1, 2))  # (S,)
        if step % cfg.record_every == 0 or step == cfg.steps:
            rows += _loss_rows(arm, cfg, step, loss)
            rows += _trajectory_rows(arm, cfg, model, x, step)
        if step == cfg.steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    return model, rows


def _loss_rows(arm, cfg, step, loss):
    return [dict(seed=s, arm=arm.value, expert=-1, reading="", metric="loss", step=step, index=-1, value=float(l))
            for s, l in zip(cfg.seeds, loss.tolist())]


@torch.no_grad()
def _trajectory_rows(arm, cfg, model, x, step):
    """Jacobian norms of every expert under the four readings (Jacobian site x norm).

    The mean Jacobian J̄_e uses the whole batch; per-point norms use its first
    ``cfg.trajectory_points`` points (x is i.i.d., so these are a random subsample), exactly.
    """
    rows = []
    for i, seed in enumerate(cfg.seeds):
        p = model.params(i, torch.float32)
        sub = x[i][: cfg.trajectory_points]
        g, g_sub = p.gates(x[i]), p.gates(sub)
        live, live_sub = probes.expert_mass(g) > 0, probes.expert_mass(g_sub) > 0
        jbar = probes.mean_jacobian(p.W1[live], p.b1[live], p.W2[live], x[i], g[:, live])
        J = probes.expert_jacobians(p.W1[live_sub], p.b1[live_sub], p.W2[live_sub], sub)
        norms = {
            (JacobianSite.MEAN, Norm.SPECTRAL, live): torch.linalg.matrix_norm(jbar, ord=2),
            (JacobianSite.MEAN, Norm.FROBENIUS, live): torch.linalg.matrix_norm(jbar),
            (JacobianSite.POINTWISE, Norm.SPECTRAL, live_sub): probes.weighted_mean(probes.singular_values(J, "gram")[..., 0], g_sub[:, live_sub]),
            (JacobianSite.POINTWISE, Norm.FROBENIUS, live_sub): probes.weighted_mean(torch.linalg.matrix_norm(J), g_sub[:, live_sub]),
        }
        for (site, norm, mask), vals in norms.items():
            r = reading(jacobian=site, norm=norm)
            experts = torch.nonzero(mask).flatten().tolist()
            rows += [dict(seed=seed, arm=arm.value, expert=e, reading=r, metric="jacobian_norm", step=step,
                          index=-1, value=float(v)) for e, v in zip(experts, vals.tolist())]
    return rows


# --------------------------------------------------------------------------- final probes
def probe_rows(p, x: torch.Tensor, seed: int, arm: Arm, step: int) -> list[dict]:
    """Every probe of §2.2/Appendix A on one trained layer ``p`` (float64) and its batch ``x``.

    Experts that receive zero total routing weight have no local chart: they get one
    ``excluded`` row and no other rows.
    """
    g = p.gates(x)
    mass = probes.expert_mass(g)
    live = torch.nonzero(mass > 0).flatten()
    rows = []

    def add(metric, r, values, index=None):
        """values: (E_live,) or (E_live, K) per live expert."""
        for e, v in zip(live.tolist(), values):
            if v.dim() == 0:
                rows.append(dict(seed=seed, arm=arm.value, expert=e, reading=r, metric=metric, step=step,
                                 index=-1, value=float(v)))
            else:
                idx = index if index is not None else range(1, len(v) + 1)
                rows.extend(dict(seed=seed, arm=arm.value, expert=e, reading=r, metric=metric, step=step,
                                 index=int(k), value=float(val)) for k, val in zip(idx, v.tolist()))

    for e in torch.nonzero(mass <= 0).flatten().tolist():
        warnings.warn(f"seed {seed}, arm {arm.value}: expert {e} received zero routing weight; excluded")
        rows.append(dict(seed=seed, arm=arm.value, expert=e, reading="", metric="excluded", step=step, index=-1, value=1.0))
    add("load", "", mass[live] / x.shape[0])

    W1, b1, W2, gl = p.W1[live], p.b1[live], p.W2[live], g[:, live]
    # Jacobian spectra under both readings of which Jacobian (§2.2 vs B.4)
    J = probes.expert_jacobians(W1, b1, W2, x)
    s_point = probes.singular_values(J, "gram")  # (E, N, d); float64, so Gram is accurate here
    jbar = probes.mean_jacobian(W1, b1, W2, x, gl)
    spectra = {
        JacobianSite.POINTWISE: (probes.weighted_mean(s_point, gl),
                                 probes.weighted_mean(probes.energy_curve(s_point), gl)),
        JacobianSite.MEAN: (probes.singular_values(jbar), None),
    }
    for site, (s, energy) in spectra.items():
        energy = probes.energy_curve(s) if energy is None else energy
        r, k = reading(jacobian=site), min(ENERGY_K, s.shape[-1])
        add("sigma", r, s)
        add("sigma1", r, s[:, 0])
        add(f"sigma_ratio@{k}", r, s[:, k - 1] / s[:, 0])
        add("energy", r, energy)
        add(f"energy@{k}", r, probes.value_at(energy, k))
        add(f"energy_k@{ENERGY_TAU}", r, probes.k_at(energy, ENERGY_TAU).double())
    if len(live) > 1:  # cross-expert cosine of vec(J̄_e) (A.3)
        add("cosine", reading(jacobian=JacobianSite.MEAN), probes.cosine_matrix(jbar), index=live.tolist())

    # weighted PCA at each site (A.4/B.5)
    pre = probes.expert_preactivations(W1, b1, x)
    hidden = probes.gelu(pre)
    sites = {
        PCASite.INPUT: x,
        PCASite.PRE_ACTIVATION: pre,
        PCASite.HIDDEN: hidden,
        PCASite.OUTPUT: torch.einsum("edh,enh->end", W2, hidden) + p.b2[live][:, None],
    }
    for site, h in sites.items():
        pca = probes.weighted_pca(h, gl.T)
        r, k = reading(pca_site=site), min(PCA_K, h.shape[-1])
        add("explained_variance", r, pca.explained_variance_ratio)
        add(f"cumvar@{k}", r, pca.cumvar_at(k))
        add(f"k@{PCA_TAU}", r, pca.k_at(PCA_TAU).double())
    return rows


# --------------------------------------------------------------------------- the whole run
def run(cfg: ExperimentConfig = ExperimentConfig(), cache: bool = True, progress: bool | None = None) -> pd.DataFrame:
    """Train every arm of ``cfg`` for every seed and probe it: the tidy results frame.

    Results are cached on disk under the config's hash (see ``moegeo.cache``); ``cache=False``
    recomputes. ``progress``: None shows bars only on a terminal, False never.
    """
    return cached(cfg, lambda: _compute(cfg, progress)) if cache else _compute(cfg, progress)


def _compute(cfg: ExperimentConfig, progress) -> pd.DataFrame:
    _keep_freed_memory()
    data = [make_data(s, cfg.n_samples, cfg.d_model) for s in cfg.seeds]
    x = torch.stack([d[0] for d in data])
    y = torch.stack([d[1] for d in data])
    rows = []
    for arm in tqdm(cfg.arms, desc="arms", disable=_quiet(progress)):
        model, traj = train_arm(arm, cfg, x, y, progress)
        rows += traj
        for i, seed in enumerate(cfg.seeds):
            rows += probe_rows(model.params(i), x[i].double(), seed, arm, cfg.steps)
    df = pd.DataFrame(rows, columns=COLUMNS)
    for k, v in cfg.to_dict().items():
        if k not in ("seeds", "arms"):
            df[k] = v
    df["config_key"] = cfg.key()
    return df


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of returning it to the OS after every tensor.

    Training allocates and frees the same large activations every step; by default glibc
    mmaps/munmaps each of them, and the page faults cost more than the arithmetic (measured
    2.2x slower per step on the 2-core CI machine). Results are unaffected.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 2**30)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Final-step scalar probes averaged over experts and seeds: rows (metric, reading), columns arms."""
    final = df[(df["index"] == -1) & (df["step"] == df["steps"]) & (df["metric"] != "excluded")]
    final = final[~final["metric"].isin(["jacobian_norm", "load"])]
    t = final.groupby(["metric", "reading", "arm"])["value"].mean().unstack("arm")
    return t[[a for a in (x.value for x in Arm) if a in t.columns]]

