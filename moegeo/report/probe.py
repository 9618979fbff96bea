"""The probe report of ``python -m moegeo probe``: a markdown file with one table per MoE layer
and two figures, rendered from the tidy frame of ``moegeo.hf.probe`` alone (matplotlib
is imported lazily, only here)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import gammaln

from ..hf import SHARED_EXPERT, UNKNOWN_TOKENS_WARN, unknown_tokens_warning

#: the per-expert columns of a layer's table: (metric, reading, header)
TABLE = (
    ("routed_tokens", "", "tokens"),
    ("load", "", "load"),
    ("sigma1", "jacobian=pointwise", "σ₁ pointwise"),
    ("sigma1", "jacobian=mean", "σ₁(J̄)"),
    ("k@0.9", "pca_site=input", "k@0.9 input"),
    ("cumvar@10", "pca_site=input", "cum-var@10 input"),
    ("k@0.9", "pca_site=hidden", "k@0.9 hidden"),
)
#: an expert routed fewer tokens than FEW_TOKENS_PER_DIM x d (d the width of the layer input) is
#: flagged: its weighted PCA then rests on fewer points than dimensions (a covariance of rank < d,
#: so k@0.9 and cum-var are capped by the token count), and its σ₁ and J̄ average over fewer points
#: than the input has directions
FEW_TOKENS_PER_DIM = 1
#: the marker of a flagged expert in the tables
FEW = "*"
#: how "load" and the routing weights are read (the report's definitions)
LOAD = (
    "load: the expert's mean routing weight over the probed tokens, (1/N) Σ_i g_e(x_i), where g are "
    "the routing weights exactly as the model applies them to the expert outputs (0 where the expert is not "
    "selected). A token's weights need not sum to 1 (e.g. Qwen2-MoE and OLMoE with norm_topk_prob=False keep the "
    "un-renormalised softmax probabilities of their Top-k; sigmoid routers; DeepSeek-V3 scales them), so a layer's "
    "loads sum to its mean Σ_e g_e, stated per layer. tokens: the tokens routed to the expert (g_e > 0)."
)


def expert_label(e: int) -> str:
    """An expert id as the report writes it (the shared experts: ``shared``)."""
    return "shared" if e == SHARED_EXPERT else str(e)


def layer_value(df: pd.DataFrame, layer: int, metric: str) -> float | None:
    """The single per-layer value of ``metric`` (e.g. ``n_tokens``, ``d_model``), None if absent."""
    v = df[(df["layer"] == layer) & (df["metric"] == metric) & (df["expert"] == -1)]["value"]
    return float(v.iloc[0]) if len(v) else None


def few_token_experts(df: pd.DataFrame, layer: int) -> list[int]:
    """The routed experts of ``layer`` with fewer than ``FEW_TOKENS_PER_DIM * d`` routed tokens."""
    d = layer_value(df, layer, "d_model")
    t = df[(df["layer"] == layer) & (df["metric"] == "routed_tokens")]
    return sorted(int(e) for e in t[t["value"] < FEW_TOKENS_PER_DIM * d]["expert"]) if d else []


def layer_table(df: pd.DataFrame, layer: int) -> pd.DataFrame:
    """One row per expert of ``layer`` (the shared experts last), the ``TABLE`` columns that exist;
    experts with few tokens (``few_token_experts``) are marked ``FEW``."""
    d = df[(df["layer"] == layer) & (df["index"] == -1) & (df["expert"] != -1)]
    cols = {}
    for metric, reading, header in TABLE:
        s = d[(d["metric"] == metric) & (d["reading"] == reading)].set_index("expert")["value"]
        if len(s):
            cols[header] = s
    t = pd.DataFrame(cols)
    t = t.loc[sorted(t.index, key=lambda e: (e < 0, e))]
    few = set(few_token_experts(df, layer))
    t.index = [expert_label(e) + (FEW if e in few else "") for e in t.index]
    t.index.name = "expert"
    return t


def cosine_matrix(df: pd.DataFrame, layer: int) -> pd.DataFrame:
    """The cross-expert cosine of the mean Jacobians J̄_e of ``layer`` (A.3), experts x experts."""
    c = df[(df["layer"] == layer) & (df["metric"] == "cosine") & (df["reading"] == "jacobian=mean")]
    return c.pivot(index="expert", columns="index", values="value")


def chance_abs_cosine(d: int) -> float:
    """The random-matrix null of the cross-expert cosine at width ``d``: the mean |cos| between two
    independent random d x d matrices whose directions are uniform in R^(d^2) (e.g. Gaussian
    matrices): E|u_1| of a uniform unit vector in R^n, n = d^2, which is
    Gamma(n/2) / (sqrt(pi) Gamma((n+1)/2)), about sqrt(2 / (pi n)). Structured random matrices
    (products of an architecture's initial weights) are only near it: the init control is the
    baseline for a given architecture."""
    n = d * d
    return math.exp(gammaln(n / 2) - gammaln((n + 1) / 2)) / math.sqrt(math.pi)


def offdiag(df: pd.DataFrame, layer: int, metric: str, reading: str) -> pd.Series:
    """A pairwise ``metric`` (e.g. ``cosine``, ``overlap``) over the ordered pairs of distinct
    experts of ``layer`` (absolute values for ``cosine``); empty when there is no pair."""
    m = df[(df["layer"] == layer) & (df["metric"] == metric) & (df["reading"] == reading)]
    m = m[m["expert"] != m["index"]]["value"].astype(float)
    return m.abs() if metric == "cosine" else m


def mean_offdiag(df: pd.DataFrame, layer: int, metric: str, reading: str) -> float | None:
    """The mean of ``offdiag``, None when there is no pair."""
    m = offdiag(df, layer, metric, reading)
    return float(m.mean()) if len(m) else None


#: the subspaces PROBE.md compares with their random-subspace null: each expert's top-10 PCA
#: directions of the hidden states routed to it
SUBSPACE_READING = "pca_site=input;subspace=r10"


def chance_lines(df: pd.DataFrame, layer: int, init: pd.DataFrame | None, seed: int | None) -> list[str]:
    """A layer's cosine and subspace figures beside their chance levels (the random-matrix null at
    the layer's d, ``chance_abs_cosine``; random subspaces of the same dimensions, the frame's
    ``overlap_null``) and, when ``init`` (the baseline probe) is given, beside the same
    architecture at initialisation."""
    d = layer_value(df, layer, "d_model")
    out = []
    off = offdiag(df, layer, "cosine", "jacobian=mean")
    at_init = lambda metric, reading: None if init is None else mean_offdiag(init, layer, metric, reading)  # noqa: E731
    if len(off) and d:
        c0 = at_init("cosine", "jacobian=mean")
        out.append(
            f"Cross-expert |cos| of the mean Jacobians: mean {off.mean():.3g}, max {off.max():.3g} over "
            f"{len(cosine_matrix(df, layer))} experts; chance (two independent random d x d matrices, d = {int(d)}): mean "
            f"{chance_abs_cosine(int(d)):.3g}"
            + (f"; at initialisation (seed {seed}, same tokens): {c0:.3g}" if c0 is not None else "")
            + "."
        )
    ov = mean_offdiag(df, layer, "overlap", SUBSPACE_READING)
    null = mean_offdiag(df, layer, "overlap_null", SUBSPACE_READING)
    if ov is not None and null is not None:
        o0 = at_init("overlap", SUBSPACE_READING)
        out.append(
            f"Mean overlap index of the experts' top-10 input subspaces over expert pairs: {ov:.3g}; chance "
            f"(random subspaces of the same dimensions): {null:.3g}"
            + (f"; at initialisation: {o0:.3g}" if o0 is not None else "")
            + "."
        )
    return out


def source_line(
    df: pd.DataFrame, checkpoint: str, dtype: str, text: str | None, requested: int, *, device: str = "cpu"
) -> str:
    """The report's sentence on what was probed: checkpoint, load dtype, the probes' dtype (the
    frame's ``probe_float64`` rows), where it ran, the tokens actually probed (and why fewer than
    ``requested`` if so), the sequence length, and the text."""
    layer = int(df["layer"].iloc[0])
    n, context = int(layer_value(df, layer, "n_tokens")), layer_value(df, layer, "context")
    short = f" (the text has only {n}; {requested} were asked for)" if n < requested else ""
    seq = f", run in sequences of {int(context)} tokens" if context else ""
    flags = set(df.loc[df["metric"] == "probe_float64", "value"].astype(float))
    probes = {frozenset({1.0}): "float64", frozenset({0.0}): "float32"}.get(frozenset(flags), "float64 and float32")
    where = "device_map auto" if device == "auto" else device
    return (
        f"Checkpoint `{checkpoint}` ({df['model_type'].iloc[0]}, loaded in {dtype}, probes in {probes}, on "
        f"{where}) on the first {n} tokens{short} of {text or 'the shipped WikiText-2 test split'}{seq}."
    )


def _markdown(t: pd.DataFrame) -> str:
    head = "| " + " | ".join([t.index.name or ""] + list(t.columns)) + " |"
    rule = "|" + "---|" * (len(t.columns) + 1)
    body = [
        "| " + " | ".join([str(i)] + ["–" if np.isnan(v) else f"{v:.4g}" for v in row]) + " |"
        for i, row in zip(t.index, t.to_numpy())
    ]
    return "\n".join([head, rule, *body])


def _ticks(ax, experts: list[int]) -> None:
    """Expert ids as the tick labels of a heat map's axes (every k-th when there are many)."""
    step = -(-len(experts) // 16)
    pos = np.arange(0, len(experts), step)
    labels = [expert_label(experts[i]) for i in pos]
    ax.set_xticks(pos, labels, fontsize=6, rotation=90 if len(experts) > 8 else 0)
    ax.set_yticks(pos, labels, fontsize=6)


def sigma1_figure(df: pd.DataFrame, layers: list[int]):
    """σ₁ of the per-token Jacobians per routed expert, one marker series per layer (no lines: they
    would join experts across excluded ones). Returns the matplotlib figure, None when the frame
    has no per-token σ₁ (``--probes`` without ``pointwise``)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    s = df[(df["metric"] == "sigma1") & (df["reading"] == "jacobian=pointwise") & (df["expert"] >= 0)]
    if s.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for layer in layers:
        d = s[s["layer"] == layer].sort_values("expert")
        ax.plot(d["expert"], d["value"], "o", ms=4, label=f"layer {layer}")
    ax.set(
        xlabel="routed expert",
        ylabel="σ₁ (routing-weighted mean\nover the expert's tokens)",
        title="Spectral norm of each expert's Jacobian",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(layers) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def cosine_figure(df: pd.DataFrame, layers: list[int]):
    """The signed cosine matrix of the mean Jacobians per layer, expert ids on the axes; None when
    no layer has two live experts. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    mats = [(layer, cosine_matrix(df, layer)) for layer in layers]
    mats = [(layer, m) for layer, m in mats if len(m)]
    if not mats:
        return None
    cols = min(4, len(mats))
    rows = -(-len(mats) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols + 1.2, 2.8 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(mats) :]:
        ax.axis("off")
    for i, (ax, (layer, m)) in enumerate(zip(axes.flat, mats)):
        im = ax.imshow(m.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"layer {layer}", fontsize=9)
        _ticks(ax, [int(e) for e in m.index])
        ax.set_xlabel("expert", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("expert", fontsize=8)
    fig.colorbar(
        im,
        ax=axes.ravel().tolist(),
        shrink=0.8,
        label="signed cosine of the mean Jacobians\n⟨J̄_a, J̄_b⟩ / (‖J̄_a‖ ‖J̄_b‖)",
    )
    return fig


def _figures(df: pd.DataFrame, layers: list[int], figdir: Path) -> list[str]:
    """Save ``sigma1.png`` and ``cosine.png`` (when there is one) to ``figdir``; their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    names = []
    for name, fig in (("sigma1.png", sigma1_figure(df, layers)), ("cosine.png", cosine_figure(df, layers))):
        if fig is not None:
            fig.savefig(figdir / name, dpi=120)
            plt.close(fig)
            names.append(name)
    return names


def write(df: pd.DataFrame, out: Path, title: str, source: str, *, baseline_seed: int | None = None) -> Path:
    """Write ``PROBE.md``, ``probe.csv`` and ``figures/`` to ``out``; returns the markdown path.
    ``source`` is the sentence on what was probed (``source_line``). A frame with a baseline
    (``hf.probe(baseline="init")``: the checkpoint at step 1, its initialisation at step 0) is
    reported for the checkpoint, with the initialisation's values beside the chance levels."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "probe.csv", index=False)
    init = None
    if set(df["step"]) == {0, 1}:
        init, df = df[df["step"] == 0], df[df["step"] == 1]
    layers = sorted(int(v) for v in df["layer"].unique())
    figs = _figures(df, layers, out / "figures")
    lines = [f"# Probe report: {title}", "", source, ""]
    unknown = layer_value(df, layers[0], "unknown_tokens")
    if unknown is not None and unknown > UNKNOWN_TOKENS_WARN:  # hf.tokenize warned on stderr
        lines += [f"**Warning:** {unknown_tokens_warning(unknown)}.", ""]
    lines += [
        LOAD,
        "",
        "σ₁ pointwise: routing-weighted mean over tokens of the spectral norm of each expert's "
        "Jacobian; σ₁(J̄): of the routing-weighted mean Jacobian; k@0.9 / cum-var@10: weighted PCA "
        "of the tokens routed to the expert (input: the hidden states entering the experts; hidden: "
        "the expert's gated activation). `shared`: the shared expert(s), weight 1 on every token. "
        f"{FEW}: fewer routed tokens than the width d of the layer input (its PCA rests on fewer points than "
        "dimensions: k@0.9 and cum-var are capped by the token count). –: not defined (the shared experts "
        "are not routed and have no hidden site; a single token has no variance). The full tidy frame is "
        "`probe.csv`.",
        "",
    ]
    excluded = df[df["metric"] == "excluded"]
    for layer in layers:
        lines += [f"## Layer {layer}", ""]
        total = layer_value(df, layer, "routing_weight_sum")
        if total is not None:
            lines += [f"Mean Σ_e g_e per token (the sum of the loads): {total:.4g}.", ""]
        for line in chance_lines(df, layer, init, baseline_seed):
            lines += [line, ""]
        gone = sorted(excluded[excluded["layer"] == layer]["expert"].tolist())
        if gone:
            lines += [f"Excluded (no routing weight on these tokens): experts {gone}.", ""]
        few = few_token_experts(df, layer)
        if few:
            lines += [
                f"Few tokens ({FEW}, fewer than d = {int(layer_value(df, layer, 'd_model'))}): experts {few}.",
                "",
            ]
        lines += [_markdown(layer_table(df, layer)), ""]
    lines += ["## Figures", ""] + [f"![{n}](figures/{n})" for n in figs] + [""]
    path = out / "PROBE.md"
    path.write_text("\n".join(lines))
    return path
