"""The sensitivity maps of a declared grid (PNG, matplotlib imported lazily): where each claim
holds at every grid point, and per claim its statistic over E x k and against each axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..claims import sensitivity

OUTCOME_COLORS = {
    "holds": "tab:green",
    "fails": "tab:red",
    "negligible": "tab:olive",
    "by construction": "tab:blue",
    "undecided": "0.85",
    "not readable": "white",
}


def _centre_slice(tab: pd.DataFrame, centre, free: tuple[str, ...]) -> pd.DataFrame:
    """The rows whose axes other than ``free`` are at the centre's values."""
    keep = np.ones(len(tab), dtype=bool)
    for axis in sensitivity.AXES:
        if axis not in free:
            keep &= np.isclose(tab[axis].to_numpy(dtype=float), float(getattr(centre, axis)))
    return tab[keep]


def seed_range(grid) -> str:
    """Whether ``grid`` runs on the confirmatory seeds (never used while the declarations were
    written) or on exploratory ones, and from which seed."""
    from ..claims.dual_jacobian_pca import CONFIRMATORY_OFFSET

    first = min(cfg.seeds[0] for cfg in grid.configs.values())
    return f"{'confirmatory' if first >= CONFIRMATORY_OFFSET else 'exploratory'} seeds from {first}"


def sensitivity_figures(tab: pd.DataFrame, grid, outdir: Path) -> dict[str, Path]:
    """The overview (every claim's grid-corrected outcome at every point) and, per claim, the heat
    map of its statistic over E x k at the final step and its statistic against each axis (the
    other axes at the centre, one line per checkpoint); PNGs in ``outdir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    outdir.mkdir(parents=True, exist_ok=True)
    by_id = {c.id: c for c in sensitivity.IN_GRID}
    claims = list(dict.fromkeys(tab.claim))
    points = grid.points()
    codes = list(OUTCOME_COLORS)
    out = {}

    mat = np.full((len(claims), len(points)), codes.index("not readable"))
    for r in tab.itertuples():
        mat[claims.index(r.claim), points.index((r.config, r.step))] = codes.index(
            sensitivity.outcome(r.grid_verdict, r.raw_verdict, r.control_init)
        )
    fig, ax = plt.subplots(figsize=(1.6 + 0.32 * len(points), 1.2 + 0.28 * len(claims)))
    ax.imshow(mat, cmap=ListedColormap(list(OUTCOME_COLORS.values())), vmin=0, vmax=len(codes) - 1, aspect="auto")
    ax.set_xticks(range(len(points)), [f"{c} @{s}" for c, s in points], rotation=90, fontsize=7)
    ax.set_yticks(range(len(claims)), [c + ("" if by_id[c].diagnostic else " (n)") for c in claims], fontsize=7)
    ax.set_xticks(np.arange(len(points)) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(claims)) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    for code, color in OUTCOME_COLORS.items():
        ax.scatter([], [], marker="s", color=color, edgecolor="0.5", label=code)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_title(
        f"grid {grid.name}: where each claim holds\n({seed_range(grid)}; Holm across the grid per claim and per point)",
        fontsize=8,
    )
    fig.tight_layout()
    out["overview"] = outdir / f"sensitivity_{grid.name}_overview.png"
    fig.savefig(out["overview"], dpi=110)
    plt.close(fig)

    centre = grid.configs["centre"]
    axes_run = [a for a in sensitivity.AXES if _centre_slice(tab, centre, (a,))[a].nunique() > 1]
    for cid in claims:
        c, t = by_id[cid], tab[tab.claim == cid]
        fig, axs = plt.subplots(1, 1 + len(axes_run), figsize=(3.2 * (1 + len(axes_run)), 3.0))
        axs = np.atleast_1d(axs)
        heat = _centre_slice(t, centre, ("n_experts", "top_k"))
        heat = heat[heat.step == heat.steps]
        E, k = sorted(set(heat.n_experts)), sorted(set(heat.top_k))
        val = np.full((len(E), len(k)), np.nan)
        for r in heat.itertuples():
            i, j = E.index(r.n_experts), k.index(r.top_k)
            val[i, j] = r.effect
            mark = sensitivity.outcome(r.grid_verdict, r.raw_verdict, r.control_init).replace("undecided", "")
            axs[0].text(j, i, f"{r.effect:.3g}\n{mark}", ha="center", va="center", fontsize=7)
        im = axs[0].imshow(val, cmap="viridis", aspect="auto")
        fig.colorbar(im, ax=axs[0], fraction=0.05)
        axs[0].set_xticks(range(len(k)), k)
        axs[0].set_yticks(range(len(E)), E)
        axs[0].set(xlabel="k", ylabel="E", title=f"{cid} at the final step")
        for ax, axis in zip(axs[1:], axes_run):
            line = _centre_slice(t, centre, (axis,))
            for step, g in line.groupby("step"):
                g = g.sort_values(axis)
                err = np.vstack([g.effect - g.ci_low, g.ci_high - g.effect])
                shown = ax.errorbar(g[axis], g.effect, yerr=err, capsize=2, label=f"step {step}", alpha=0.8)
                outcomes = np.array(
                    [sensitivity.outcome(gv, v, c) for gv, v, c in zip(g.grid_verdict, g.raw_verdict, g.control_init)]
                )
                for call, marker, face in (
                    ("holds", "o", None),
                    ("fails", "x", None),
                    ("negligible", "s", "white"),
                    ("undecided", "o", "white"),
                ):
                    pts = g[outcomes == call]
                    ax.scatter(
                        pts[axis],
                        pts.effect,
                        marker=marker,
                        color=shown.lines[0].get_color(),
                        zorder=3,
                        **({"facecolor": face} if face else {}),
                    )
            bounds = c.bounds if c.kind != "direction" else (0.0,)
            for b in bounds:
                ax.axhline(b, color="0.4", linestyle=":", linewidth=0.8)
            if axis == "lr":
                ax.set_xscale("log")
            ticks = sorted(set(line[axis]))
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
            ax.minorticks_off()
            ax.set(xlabel=sensitivity.LABELS[axis], title=f"{cid} against {sensitivity.LABELS[axis]}")
        axs[1 if len(axs) > 1 else 0].legend(
            fontsize=6, title="filled: holds, x: fails, square: negligible", title_fontsize=6
        )
        fig.suptitle(f"{cid} {c.title}: {c.statistic} (median over seeds, exact CI)", fontsize=8)
        fig.subplots_adjust(left=0.05, right=0.98, bottom=0.17, top=0.8, wspace=0.5)  # tight_layout: 3x slower
        out[cid] = outdir / f"sensitivity_{grid.name}_{cid}.png"
        fig.savefig(out[cid], dpi=80)
        plt.close(fig)
    return out
