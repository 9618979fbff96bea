"""The probe report of ``python -m moegeo probe``: a markdown file with one table per MoE layer
and two figures, rendered from the tidy frame of ``moegeo.hf.probe_model`` alone (matplotlib is
imported lazily, only here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: the per-expert columns of a layer's table: (metric, reading, header)
TABLE = (
    ("load", "", "load"),
    ("sigma1", "jacobian=pointwise", "σ₁ pointwise"),
    ("sigma1", "jacobian=mean", "σ₁(J̄)"),
    ("k@0.9", "pca_site=input", "k@0.9 input"),
    ("cumvar@10", "pca_site=input", "cum-var@10 input"),
    ("k@0.9", "pca_site=hidden", "k@0.9 hidden"),
)


def expert_label(e: int) -> str:
    return "shared" if e == -2 else str(e)


def layer_table(df: pd.DataFrame, layer: int) -> pd.DataFrame:
    """One row per expert of ``layer`` (the shared experts last), the ``TABLE`` columns that exist."""
    d = df[(df["layer"] == layer) & (df["index"] == -1) & (df["expert"] != -1)]
    cols = {}
    for metric, reading, header in TABLE:
        s = d[(d["metric"] == metric) & (d["reading"] == reading)].set_index("expert")["value"]
        if len(s):
            cols[header] = s
    t = pd.DataFrame(cols)
    t = t.loc[sorted(t.index, key=lambda e: (e < 0, e))]
    t.index = [expert_label(e) for e in t.index]
    t.index.name = "expert"
    return t


def cosine_matrix(df: pd.DataFrame, layer: int) -> pd.DataFrame:
    """The cross-expert cosine of the mean Jacobians J̄_e of ``layer`` (A.3), experts x experts."""
    c = df[(df["layer"] == layer) & (df["metric"] == "cosine") & (df["reading"] == "jacobian=mean")]
    return c.pivot(index="expert", columns="index", values="value")


def _markdown(t: pd.DataFrame) -> str:
    head = "| " + " | ".join([t.index.name or ""] + list(t.columns)) + " |"
    rule = "|" + "---|" * (len(t.columns) + 1)
    body = ["| " + " | ".join([str(i)] + [f"{v:.4g}" for v in row]) + " |" for i, row in zip(t.index, t.to_numpy())]
    return "\n".join([head, rule, *body])


def _figures(df: pd.DataFrame, layers: list[int], figdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    names = []
    s = df[(df["metric"] == "sigma1") & (df["reading"] == "jacobian=pointwise") & (df["expert"] >= 0)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for layer in layers:
        d = s[s["layer"] == layer].sort_values("expert")
        ax.plot(d["expert"], d["value"], "o-", ms=3, label=f"layer {layer}")
    ax.set(xlabel="routed expert", ylabel="σ₁ (routing-weighted mean over tokens)", title="Expert Jacobian norm")
    if len(layers) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figdir / "sigma1.png", dpi=120)
    plt.close(fig)
    names.append("sigma1.png")
    mats = [(layer, cosine_matrix(df, layer)) for layer in layers]
    mats = [(layer, m) for layer, m in mats if len(m)]
    if mats:
        cols = min(4, len(mats))
        rows = -(-len(mats) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        for ax in axes.flat[len(mats):]:
            ax.axis("off")
        for ax, (layer, m) in zip(axes.flat, mats):
            im = ax.imshow(m.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
            ax.set_title(f"layer {layer}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="cosine of the mean Jacobians")
        fig.savefig(figdir / "cosine.png", dpi=120)
        plt.close(fig)
        names.append("cosine.png")
    return names


def write(df: pd.DataFrame, out: Path, title: str, source: str) -> Path:
    """Write ``PROBE.md``, ``probe.csv`` and ``figures/`` to ``out``; returns the markdown path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "probe.csv", index=False)
    layers = sorted(int(v) for v in df["layer"].unique())
    figs = _figures(df, layers, out / "figures")
    lines = [f"# Probe report: {title}", "", source, "",
             "σ₁ pointwise: routing-weighted mean over tokens of the spectral norm of each expert's "
             "Jacobian; σ₁(J̄): of the routing-weighted mean Jacobian; k@0.9 / cum-var@10: weighted PCA "
             "of the tokens routed to the expert (input: the hidden states entering the experts; hidden: "
             "the expert's gated activation). `shared`: the shared expert(s), weight 1 on every token. "
             "The full tidy frame is `probe.csv`.", ""]
    excluded = df[df["metric"] == "excluded"]
    for layer in layers:
        c = cosine_matrix(df, layer)
        off = c.to_numpy()[~np.eye(len(c), dtype=bool)] if len(c) > 1 else np.array([])
        lines += [f"## Layer {layer}", ""]
        if len(off):
            lines += [f"Cross-expert |cos| of the mean Jacobians: mean {np.abs(off).mean():.3g}, "
                      f"max {np.abs(off).max():.3g} over {len(c)} experts.", ""]
        gone = sorted(excluded[excluded["layer"] == layer]["expert"].tolist())
        if gone:
            lines += [f"Excluded (no routing weight on these tokens): experts {gone}.", ""]
        lines += [_markdown(layer_table(df, layer)), ""]
    lines += ["## Figures", ""] + [f"![{n}](figures/{n})" for n in figs] + [""]
    path = out / "PROBE.md"
    path.write_text("\n".join(lines))
    return path
