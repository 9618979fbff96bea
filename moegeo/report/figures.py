"""The report's figures (PNG, matplotlib imported lazily): the Dual Jacobian-PCA paper's Figures
1A-D, 2A-B and 3, the language model's and the later papers', with their captions (the sensitivity
maps: ``figures_sensitivity``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..claims import Results, geometric_asymmetry, routers_geometry
from ..claims.dual_jacobian_pca import CLAIMS
from ..config import Arm, JacobianSite, Norm, PCASite
from ..frame import reading
from ..probes import cosine_null

#: what to look at in each figure (REPORT.md prints it under the figure)
CAPTIONS = {
    "fig1a_jacobian_norm_trajectory": "Fig. 1A: the Jacobian norm over training (median over seeds of expert means, "
    "10-90% seed band), per reading. The paper: the dense norm grows steadily from about 5 to over 50, the MoE "
    "norms plateau after about 250 steps (C8a-C8e).",
    "fig1b_cross_expert_cosine": "Fig. 1B: cosines between the experts' mean Jacobians at the final step, against "
    "the null of independent random matrices (dashed) and the paper's range (green). Look at whether the "
    "histogram is narrower than the null (C4, C4n).",
    "fig1c_jacobian_spectrum": "Fig. 1C: singular values of the expert Jacobians at the final step (per-point "
    "spectra, left; of the mean Jacobian, right). The paper: the dense spectrum lies above the MoE's (C1, C1s, C3b).",
    "fig1d_jacobian_energy": "Fig. 1D: cumulative spectral energy. The paper: MoE experts concentrate their energy "
    "in fewer directions (C3a).",
    "fig2a_explained_variance": "Fig. 2A: explained-variance ratio of each weighted PCA at the four sites. At the "
    "literal input site the input is isotropic, so the curves measure the routing weights, not learning (C5, C6).",
    "fig2b_cumulative_variance": "Fig. 2B: cumulative explained variance; the paper: dense reaches 90% with about "
    "three components, experts need more than twenty (C5b, C5c).",
    "fig3_topk_vs_soft_pca": "Fig. 3: Top-k against fully-soft experts, per site (top: ratios, bottom: cumulative). "
    "The paper: Top-k concentrates variance in fewer directions (C7a-C7d).",
    "lm_perplexity": "The language model learns: held-out perplexity and training loss over training, every arm, "
    "against the unigram model (dashed).",
    "lm_jacobian_norm": "The language model's Jacobian norms over training, per FFN layer.",
    "lm_jacobian_spectrum": "The language model's singular spectra at the final step, per FFN layer (C12).",
    "lm_pca_cumulative": "The language model's cumulative explained variance per FFN layer (the C*-lm tests).",
    "lm_cross_expert_cosine": "The language model's cross-expert cosines per FFN layer against the random-matrix "
    "null (C13, G1).",
    "routers_load_over_training": "Each router's load per expert over training (first seed), against the balanced "
    "1/E (dashed): look at how quickly the balancing routers flatten the load (R3).",
    "routers_similarity_matrices": "|cos| between router directions at the final step, per layer and router (R2): "
    "brighter off-diagonals are more similar router directions.",
    "routers_score_vs_activation": "Router score against the expert's activation norm for tokens routed to it "
    "(first seed, middle layer): a rising cloud is R1's correlation.",
    "asymmetry_principal_angles": "Principal angles between expert subspaces at the final step against those of "
    "random subspaces (dashed): smaller angles than random are overlap (G2). The controls in the verdict table "
    "say how much of it the untrained model already has.",
    "asymmetry_alignment_vs_distance": "Per seed (and LM layer): functional alignment against subspace distance, "
    "each relative to its chance level (1 on both axes): the asymmetry (G3) is points left of 1 and below 1.",
    "claims_over_steps": "Each MLP claim's statistic at every checkpoint (median over seeds with its exact CI): "
    "where the verdict would stand had training stopped earlier.",
}


ARM_COLORS = {"dense": "tab:gray", "dense_matched": "black", "topk": "tab:blue", "soft": "tab:orange"}


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


def make_figures(frames: dict, outdir: Path, verdicts: pd.DataFrame | None = None) -> dict[str, Path]:
    """The paper's figures from our runs; returns {name: png path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = {k: v[v.control == ""] if "control" in v else v for k, v in frames.items()}
    df = frames["main"]
    outdir.mkdir(parents=True, exist_ok=True)
    arms = [a.value for a in Arm if a.value in set(df.arm)]
    jac = [reading(jacobian=s) for s in JacobianSite]
    sites = [reading(pca_site=s) for s in PCASite]
    figs = {}

    def save(fig, name):
        if not fig.get_layout_engine():
            fig.tight_layout()
        figs[name] = outdir / f"{name}.png"
        fig.savefig(figs[name], dpi=110, bbox_inches="tight")
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
    final = int(df.steps.iloc[0])
    for arm in ("topk", "soft"):
        c = Results({"main": df}).cosines(arm, "jacobian=mean", final).value
        if len(c):
            ax.hist(c, bins=40, density=True, alpha=0.5, color=ARM_COLORS[arm], label=f"{arm} ({len(c)} pairs)")
    ax.plot(grid, null.pdf(grid), "k--", label=f"independent random {d}x{d}")
    ax.axvspan(-0.01, 0.015, color="green", alpha=0.1, label="paper: -0.01 to 0.015")
    ax.set_xlabel("cos(vec J̄_e1, vec J̄_e2)")
    ax.legend(fontsize=7)
    save(fig, "fig1b_cross_expert_cosine")

    for name, metric, cumulative in (
        ("fig1c_jacobian_spectrum", "sigma", False),
        ("fig1d_jacobian_energy", "energy", False),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        _curves(axes, df, metric, jac, arms, cumulative)
        axes[0].set_ylabel(metric)
        if metric == "sigma":
            for ax in axes:
                ax.set_yscale("log")
        save(fig, name)

    for name, cumulative, which in (
        ("fig2a_explained_variance", False, arms),
        ("fig2b_cumulative_variance", True, arms),
    ):
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

    if "lm" in frames:
        make_lm_figures(frames["lm"], save)
    if "routers" in frames and "lm" in frames:
        make_router_figures(frames, save)
    if "lm" in frames or "main" in frames:
        make_asymmetry_figures(frames, save)

    if verdicts is not None:
        stepped = [c for c in CLAIMS if c.steps and c.frame == "main" and (verdicts.claim == c.id).any()]
        cols = 4
        fig, axes = plt.subplots(
            -(-len(stepped) // cols), cols, figsize=(16, 3.0 * -(-len(stepped) // cols)), squeeze=False
        )
        for ax, c in zip(axes.flat, stepped):
            s = _over_steps(verdicts, c.id)
            ax.errorbar(
                s.step,
                s.effect,
                yerr=[s.effect - s.ci_low, s.ci_high - s.effect],
                marker="o",
                capsize=3,
                label="median over seeds, exact 95% CI",
            )
            if c.kind == "direction":
                ax.axhline(0, color="gray", lw=0.8, ls="--", label="no effect")
                if c.smallest_effect:
                    ax.axhline(c.smallest_effect, color="gray", lw=0.8, ls=":", label="smallest meaningful effect")
            else:
                for b in c.bounds:
                    ax.axhline(
                        b, color="gray", lw=0.8, ls="--", label="the paper's interval" if b == c.bounds[0] else None
                    )
            ax.set_title(f"{c.id}: {c.title}", fontsize=8)
            ax.set_xlabel("checkpoint (training step)", fontsize=8)
            label = f"log({c.statistic})" if c.kind == "magnitude" and c.scale == "log" else c.statistic
            ax.set_ylabel(label if len(label) < 40 else label[:37] + "...", fontsize=7)
        for ax in list(axes.flat)[len(stepped) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=6, loc="best")
        save(fig, "claims_over_steps")
    return figs


def make_lm_figures(df: pd.DataFrame, save) -> None:
    """The language model's figures, one panel per FFN layer: held-out perplexity and training
    loss over training (with the unigram model), Jacobian norms over training, the singular
    spectra, the cross-expert cosines and the weighted-PCA curves at the final step."""
    import matplotlib.pyplot as plt

    arms = [a.value for a in Arm if a.value in set(df.arm)]
    layers = sorted(int(l) for l in set(df.layer) if l >= 0)
    final = int(df.steps.iloc[0])

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("perplexity", "loss")):
        for arm in arms:
            _band(ax, df[(df.arm == arm) & (df.metric == metric) & (df.layer == -1)], "step", arm, ARM_COLORS[arm])
        ax.set_xlabel("training step")
        ax.set_yscale("log")
    unigram = df[(df.arm == "unigram") & (df.metric == "perplexity")].value.median()
    axes[0].axhline(unigram, color="green", ls="--", label=f"unigram ({unigram:.0f})")
    axes[0].set_ylabel("held-out perplexity")
    axes[1].set_ylabel("training loss (nats)")
    axes[0].legend(fontsize=8)
    save(fig, "lm_perplexity")

    panels = {
        "lm_jacobian_norm": (
            "jacobian_norm",
            [
                reading(jacobian=JacobianSite.POINTWISE, norm=Norm.SPECTRAL),
                reading(jacobian="effective", norm=Norm.SPECTRAL),
            ],
            "step",
        ),
        "lm_jacobian_spectrum": ("sigma", [reading(jacobian=s) for s in JacobianSite], "index"),
        "lm_pca_cumulative": (
            "explained_variance",
            [reading(pca_site=s) for s in (PCASite.INPUT, PCASite.HIDDEN)],
            "index",
        ),
    }
    for name, (metric, readings_, x) in panels.items():
        fig, axes = plt.subplots(
            len(readings_), len(layers), figsize=(4.2 * len(layers), 3.2 * len(readings_)), squeeze=False
        )
        for row, rd in zip(axes, readings_):
            for ax, layer in zip(row, layers):
                sel = df[(df.metric == metric) & (df.reading == rd) & (df.layer == layer)]
                if x == "index":
                    sel = sel[sel.step == final]
                if metric == "explained_variance":
                    sel = sel.sort_values("index").assign(value=lambda t: t.groupby(["seed", "expert"]).value.cumsum())
                for arm in arms:
                    if (sel.arm == arm).any():
                        _band(ax, sel[sel.arm == arm], x, arm, ARM_COLORS[arm])
                ax.set_title(f"layer {layer}: {rd}", fontsize=9)
                ax.set_xlabel("training step" if x == "step" else "component / direction")
                if metric != "explained_variance":
                    ax.set_yscale("log")
                else:
                    ax.set_xscale("log")
        axes[0, 0].legend(fontsize=8)
        save(fig, name)

    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.4), squeeze=False)
    d = int(df.d_model.iloc[0])
    grid = np.linspace(-5 / d, 5 / d, 200)
    for ax, layer in zip(axes[0], layers):
        R = Results({"lm": df}).view("lm", layer)
        for arm in ("topk", "soft"):
            if arm in arms:
                c = R.cosines(arm, "jacobian=mean", final).value
                ax.hist(c, bins=40, density=True, alpha=0.5, color=ARM_COLORS[arm], label=f"{arm} ({len(c)} pairs)")
        ax.plot(grid, cosine_null(d * d).pdf(grid), "k--", label=f"independent random {d}x{d}")
        ax.set_title(f"layer {layer}: cross-expert cosine of mean Jacobians", fontsize=9)
        ax.set_xlabel("cos(vec J̄_e1, vec J̄_e2)")
    axes[0, 0].legend(fontsize=7)
    save(fig, "lm_cross_expert_cosine")


def make_router_figures(frames: dict, save) -> None:
    """The routers paper's figures, for the first seed: each router's load per expert over
    training (one panel per layer), its router-direction |cos| matrices, and router score against
    the expert's activation norm for tokens routed to each expert."""
    import matplotlib.pyplot as plt

    routers = routers_geometry.ARMS
    frame = {k: frames[routers_geometry.frame_of(k)] for k in routers}
    seed = {k: int(df[df.arm == routers[k]].seed.min()) for k, df in frame.items()}
    layers = sorted(int(l) for l in set(frames["routers"].layer) if l >= 0)

    def rows(k, metric, **eq):
        df = frame[k]
        sel = (df.arm == routers[k]) & (df.metric == metric) & (df.seed == seed[k])
        for col, v in eq.items():
            sel &= df[col] == v
        return df[sel]

    fig, axes = plt.subplots(
        len(routers), len(layers), figsize=(4 * len(layers), 2.6 * len(routers)), squeeze=False, sharey=True
    )
    for ax_row, k in zip(axes, routers):
        for ax, layer in zip(ax_row, layers):
            t = rows(k, "load_fraction", layer=layer).pivot_table(index="step", columns="expert", values="value")
            ax.plot(t.index, t.to_numpy(), lw=1)
            ax.axhline(1 / t.shape[1], color="k", ls="--", lw=0.8)
            ax.set_title(f"{k}, layer {layer} (seed {seed[k]})", fontsize=9)
        ax_row[0].set_ylabel("fraction of token slots")
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    save(fig, "routers_load_over_training")

    fig, axes = plt.subplots(
        len(layers),
        len(routers),
        figsize=(3.4 * len(routers) + 1.2, 3.0 * len(layers)),
        squeeze=False,
        layout="constrained",
    )
    for ax_row, layer in zip(axes, layers):
        for ax, k in zip(ax_row, routers):
            c = rows(k, "router_cosine", layer=layer)
            c = c[c.step == c.steps].pivot_table(index="expert", columns="index", values="value").abs()
            im = ax.imshow(c.to_numpy(), vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{k}, layer {layer}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="|cos| between router directions", location="right")
    save(fig, "routers_similarity_matrices")

    fig, axes = plt.subplots(1, len(routers), figsize=(3.6 * len(routers), 3.2), squeeze=False)
    layer = layers[len(layers) // 2]
    for ax, k in zip(axes[0], routers):
        s = rows(k, "sample_score", layer=layer)
        a = rows(k, "sample_activation", layer=layer)
        m = s.merge(a, on=["expert", "index", "step"], suffixes=("_s", "_a"))
        m = m[m.step == m.steps_s]
        ax.scatter(m.value_s, m.value_a, c=m.expert, cmap="tab10", s=6)
        ax.set_title(f"{k}, layer {layer}", fontsize=9)
        ax.set_xlabel("router score of the expert")
    axes[0, 0].set_ylabel("||expert hidden activation||")
    save(fig, "routers_score_vs_activation")


def _over_steps(verdicts: pd.DataFrame, claim_id: str) -> pd.DataFrame:
    """A claim's rows at its primary reading's other axes, one per checkpoint."""
    v = verdicts[verdicts.claim == claim_id]
    base = v[v.primary].reading.iloc[0].rsplit(";step=", 1)[0]
    s = v[v.reading.str.rsplit(";step=", n=1).str[0] == base].copy()
    s["step"] = s.reading.str.rsplit("step=", n=1).str[1].astype(int)
    return s.sort_values("step")


def make_asymmetry_figures(frames: dict, save) -> None:
    """The asymmetry paper's figures at the final step, primary site and subspace (input, top 10):
    the principal angles between expert subspaces against those of random subspaces, and per
    seed (and LM layer) the functional alignment against the subspace distance, each relative to
    its chance level."""
    import matplotlib.pyplot as plt

    from ..probes import grassmann

    ga, rd = geometric_asymmetry, "pca_site=input;subspace=r10"
    settings = [(s, n) for s, n in (("language model", "lm"), ("MLP-MoE", "main")) if n in frames]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.6), squeeze=False)
    for ax, (title, name) in zip(axes[0], settings):
        df = frames[name]
        df = df[
            (df.step == df.steps) & (df.reading == rd) & df.metric.str.startswith("angle@") & (df.expert < df["index"])
        ]
        for arm in ga.MOE:
            a = df[df.arm == arm].value
            ax.hist(
                np.degrees(a),
                bins=45,
                range=(0, 90),
                density=True,
                alpha=0.5,
                color=ARM_COLORS[arm],
                label=f"{arm} ({len(a)} angles)",
            )
        D = int(frames[name].d_model.iloc[0])
        null = grassmann.random_subspace_null(D, 10, n_samples=2000)
        ax.hist(
            np.degrees(null.angles.flatten().numpy()),
            bins=45,
            range=(0, 90),
            density=True,
            histtype="step",
            color="black",
            ls="--",
            label=f"random 10-dim subspaces of R^{D}",
        )
        ax.set_title(f"{title}: principal angles between expert subspaces", fontsize=9)
        ax.set_xlabel("principal angle [degrees]")
    axes[0, 0].legend(fontsize=7)
    save(fig, "asymmetry_principal_angles")

    fig, ax = plt.subplots(figsize=(6, 4.4))
    for (title, name), marker in zip(settings, ("o", "s")):
        layers = sorted(int(l) for l in set(frames[name].layer) if l >= 0)
        for layer in layers:
            R = Results(frames).view(name, layer) if name == "lm" else Results(frames)
            for arm in ga.MOE:
                fun = ga.alignment(R, arm, {}) / ga.alignment_chance(R)
                geo = ga.mean_over_pairs(R, arm, "geodesic", rd, {}) / ga.mean_over_pairs(
                    R, arm, "geodesic_null", rd, {}
                )
                ax.scatter(
                    fun,
                    geo.reindex(fun.index),
                    s=14,
                    marker=marker,
                    color=ARM_COLORS[arm],
                    alpha=0.6,
                    label=f"{title}, {arm}" if layer == layers[0] else None,
                )
    ax.axvline(1, color="gray", ls="--", lw=0.8)
    ax.axhline(1, color="gray", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("functional alignment: mean |cos| of J̄_e / its chance level")
    ax.set_ylabel("mean geodesic distance\n/ random-subspace mean")
    ax.set_title("one point per seed (and LM layer); chance at 1 on both axes", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "asymmetry_alignment_vs_distance")
