"""REPORT.md: the replication verdict, generated from the results frames and verdict table.

Never hand-edited: ``pytest claims/`` writes it at the end of every run (atomically), with
figures regenerating the paper's Figures 1A-D, 2A-B and 3A-D as PNG files beside it.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .bench_report import existing_section, write_atomic
from .claims import CLAIMS, HOT_TEMPERATURE, offdiag_cosines
from .config import Arm, JacobianSite, Norm, PCASite
from .experiment import reading
from .probes import cosine_null

ARM_COLORS = {"dense": "tab:gray", "dense_matched": "black", "topk": "tab:blue", "soft": "tab:orange"}


# --------------------------------------------------------------------------- figures
def _band(ax, df: pd.DataFrame, x: str, label: str, color: str) -> None:
    """Median over seeds (of expert means) with the 10-90% seed band."""
    per = df.groupby(["seed", x])["value"].mean().unstack(x)
    q = per.quantile([0.1, 0.5, 0.9])
    ax.plot(q.columns, q.loc[0.5], color=color, label=label)
    ax.fill_between(q.columns, q.loc[0.1], q.loc[0.9], color=color, alpha=0.2, lw=0)


def _curves(axes, df, metric, readings_, arms, cumulative=False):
    final = df[(df.metric == metric) & (df.step == df.steps)]
    for ax, rd in zip(axes, readings_):
        for arm in arms:
            sel = final[(final.arm == arm) & (final.reading == rd)]
            if cumulative:
                sel = sel.sort_values("index").assign(value=lambda s: s.groupby(["seed", "expert"])["value"].cumsum())
            _band(ax, sel, "index", arm, ARM_COLORS[arm])
        ax.set_title(rd, fontsize=9)
        ax.set_xlabel("component / direction")
    axes[0].legend(fontsize=8)


def make_figures(frames: dict, outdir: Path) -> dict[str, Path]:
    """The paper's figures from our runs; returns {name: png path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = frames["main"]
    outdir.mkdir(parents=True, exist_ok=True)
    arms = [a.value for a in Arm if a.value in set(df.arm)]
    jac = [reading(jacobian=s) for s in JacobianSite]
    sites = [reading(pca_site=s) for s in PCASite]
    figs = {}

    def save(fig, name):
        fig.tight_layout()
        figs[name] = outdir / f"{name}.png"
        fig.savefig(figs[name], dpi=110)
        plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharex=True)
    traj = df[df.metric == "jacobian_norm"]
    for ax, (site, norm) in zip(axes, [(s, n) for s in JacobianSite for n in Norm]):
        rd = reading(jacobian=site, norm=norm)
        for arm in arms:
            _band(ax, traj[(traj.arm == arm) & (traj.reading == rd)], "step", arm, ARM_COLORS[arm])
        ax.set_title(rd, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_yscale("log")
    axes[0].set_ylabel("expert-mean Jacobian norm")
    axes[0].legend(fontsize=8)
    save(fig, "fig1a_jacobian_norm_trajectory")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    d = int(df.d_model.iloc[0])
    null = cosine_null(d * d)
    grid = np.linspace(-5 / d, 5 / d, 200)
    for arm in ("topk", "soft"):
        c = offdiag_cosines(df, arm).value
        if len(c):
            ax.hist(c, bins=40, density=True, alpha=0.5, color=ARM_COLORS[arm], label=f"{arm} ({len(c)} pairs)")
    ax.plot(grid, null.pdf(grid), "k--", label=f"independent random {d}x{d}")
    ax.axvspan(-0.01, 0.015, color="green", alpha=0.1, label="paper: -0.01 to 0.015")
    ax.set_xlabel("cos(vec J̄_e1, vec J̄_e2)")
    ax.legend(fontsize=7)
    save(fig, "fig1b_cross_expert_cosine")

    for name, metric, cumulative in (("fig1c_jacobian_spectrum", "sigma", False), ("fig1d_jacobian_energy", "energy", False)):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        _curves(axes, df, metric, jac, arms, cumulative)
        axes[0].set_ylabel(metric)
        if metric == "sigma":
            for ax in axes:
                ax.set_yscale("log")
        save(fig, name)

    for name, cumulative, which in (("fig2a_explained_variance", False, arms), ("fig2b_cumulative_variance", True, arms)):
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
        _curves(axes, df, "explained_variance", sites, which, cumulative)
        for ax in axes:
            ax.set_xscale("log")
            if not cumulative:
                ax.set_yscale("log")
        axes[0].set_ylabel("cumulative explained variance" if cumulative else "explained-variance ratio")
        save(fig, name)

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.6))
    _curves(axes[0], df, "explained_variance", sites, ["topk", "soft"])
    _curves(axes[1], df, "explained_variance", sites, ["topk", "soft"], cumulative=True)
    for ax in axes.flat:
        ax.set_xscale("log")
    axes[0, 0].set_ylabel("explained-variance ratio")
    axes[1, 0].set_ylabel("cumulative")
    save(fig, "fig3_topk_vs_soft_pca")
    return figs


# --------------------------------------------------------------------------- the document
def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> str:
    import matplotlib
    import scipy
    import torch

    return (f"moegeo {__version__}, Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
            f"scipy {scipy.__version__}, pandas {pd.__version__}, matplotlib {matplotlib.__version__}")


def _cpu() -> str:
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}; {os.cpu_count()} logical CPUs; torch threads {torch.get_num_threads()}"


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3g}"


def render(verdicts: pd.DataFrame, configs: dict, wall_time: float, figures: dict[str, Path],
           report_path: Path) -> str:
    """The Markdown text of the report."""
    n_rep = (verdicts.verdict == "REPLICATED").sum()
    lines = [
        "# moegeo replication report: Dual Jacobian-PCA (Liu, 2025)",
        "",
        "Generated by `pytest claims/`; do not edit by hand.",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- git revision: {_git_revision()}",
        f"- versions: {_versions()}",
        f"- CPU: {_cpu()}",
        f"- wall time of this run: {wall_time:.0f} s (cached runs are reused)",
    ]
    for name, cfg in configs.items():
        lines.append(f"- config `{name}`: `{cfg.to_dict()}` (key {cfg.key()})")
    lines += [
        "",
        f"**{n_rep} of {len(verdicts)} claim x reading tests replicated.** Seeds are the unit of analysis: "
        "every test is an exact one-sided sign test over seeds, Holm-corrected over the whole family at "
        "alpha = 0.05; magnitudes compare our percentile-bootstrap 95% CI of the median with the paper's interval.",
        "",
        "## Summary by claim",
        "",
        "| claim | what the paper says | replicated readings | verdicts |",
        "|---|---|---|---|",
    ]
    for c in CLAIMS:
        v = verdicts[verdicts.claim == c.id]
        if v.empty:
            continue
        counts = ", ".join(f"{k}: {n}" for k, n in v.verdict.value_counts().items())
        reps = v[v.verdict == "REPLICATED"].reading.tolist()
        lines.append(f"| {c.id} {c.title} | \"{c.quote}\" ({c.source}) | {len(reps)}/{len(v)} | {counts} |")
    lines += ["", "## Plain-language summary", ""]
    lines += _plain_summary(verdicts)
    lines += ["", "## Verdict table", "",
              "| claim | reading | statistic | per-arm medians | effect (median) [95% CI] | paper | p adj. | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for row in verdicts.itertuples():
        c = next(c for c in CLAIMS if c.id == row.claim)
        paper = f"[{c.interval[0]:g}, {c.interval[1]:g}]" if c.interval else "> 0"
        lines.append(f"| {row.claim} | {row.reading} | {c.statistic} | {row.medians} | {_fmt(row.effect)} "
                     f"[{_fmt(row.ci_low)}, {_fmt(row.ci_high)}] | {paper} | {_fmt(row.p_adj)} | {row.verdict} |")
    lines += ["", "## Readings: how much the verdict depends on each ambiguity", ""]
    lines += _readings_section(verdicts)
    lines += ["", "## Claims, quotes and thresholds", ""]
    for c in CLAIMS:
        lines.append(f"- **{c.id} {c.title}** ({c.source}): \"{c.quote}\". Statistic per seed: {c.statistic}. "
                     f"Test: {c.kind}. Threshold: {c.threshold}.")
    lines += ["", "## Figures", "",
              "Medians over seeds of expert means, with 10-90% seed bands.", ""]
    for name, path in figures.items():
        rel = os.path.relpath(path, report_path.parent)
        lines += [f"### {name}", "", f"![{name}]({rel})", ""]
    return "\n".join(lines) + "\n"


def _plain_summary(verdicts: pd.DataFrame) -> list[str]:
    out = []
    for c in CLAIMS:
        v = verdicts[verdicts.claim == c.id]
        if v.empty:
            continue
        reps = v[v.verdict == "REPLICATED"]
        contra = v[v.verdict == "CONTRADICTED"]
        few = v[v.verdict == "TOO FEW SEEDS"]
        if len(few) == len(v):
            s = "too few seeds for a verdict."
        elif len(reps) == len(v):
            s = "replicated under every reading."
        elif len(reps) == 0 and len(contra) == len(v):
            s = "contradicted under every reading: the effect is significant in the opposite direction."
        elif len(reps) == 0:
            s = f"not replicated under any reading ({len(contra)} of {len(v)} readings contradict it)."
        else:
            s = f"replicated only under {', '.join(f'`{r}`' for r in reps.reading)}; {len(contra)} readings contradict it."
        out.append(f"- **{c.id} {c.title}**: {s}")
    return out


def _readings_section(verdicts: pd.DataFrame) -> list[str]:
    out = ["Share of tests replicated, split by each reading option (claims tested under that axis only).", "",
           "| axis | option | replicated / tests |", "|---|---|---|"]
    parts = verdicts.reading.str.split(";").explode().str.split("=", expand=True)
    parts.columns = ["axis", "option"]
    parts["replicated"] = (verdicts.verdict == "REPLICATED").reindex(parts.index).to_numpy()
    for (axis, option), g in parts.groupby(["axis", "option"]):
        out.append(f"| {axis} | {option} | {int(g.replicated.sum())} / {len(g)} |")
    out += ["", "Axes: `jacobian` = which Jacobian the spectrum is of (per-point vs the averaged J̄_e); "
            "`pca_site` = which hidden state is PCA'd (`input` is the paper's literal h(x)); `dense` = the dense "
            "baseline's width (`expert`: as B.1 says, `matched`: E x d_hidden parameters); `norm` = the trajectory's "
            f"norm; `moe` = routing. The C9 claims compare against soft routing at temperature {HOT_TEMPERATURE:g}."]
    return out


def write_report(path: Path, frames: dict, verdicts: pd.DataFrame, configs: dict, wall_time: float) -> Path:
    """Figures into ``<report dir>/figures/``, then the Markdown, written atomically; the
    benchmark section of an existing report is kept."""
    path = Path(path)
    stem = "figures" if path.stem == "REPORT" else f"figures-{path.stem}"
    figures = make_figures(frames, path.parent / stem)
    text = render(verdicts, configs, wall_time, figures, path)
    if path.exists():  # keep the benchmark section, which `pytest --benchmark-only` owns
        section = existing_section(path.read_text())
        text = text + ("\n" + section if section else "")
    return write_atomic(path, text)
