"""The benchmark section of REPORT.md, rendered from pytest-benchmark's JSON.

``python benchmarks/bench_report.py [benchmarks/results.json] [--report REPORT.md]``; run
automatically at the end of ``pytest --benchmark-only``. The section sits between markers, so
the claims report and this one each regenerate only their own part.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from moegeo.config import Arm
from moegeo.report.markdown import BENCHMARK_MARKERS, existing_section, splice, write_atomic  # noqa: F401 (part of its API)

BEGIN, END = BENCHMARK_MARKERS
#: issue 11: the default claims sweep within 2x of its FLOP floor, measured in full (a run that timed
#: fewer steps cannot meet it)
SWEEP_GOAL = 2
#: issue 29: the best matrix-free sigma_1 at d = 1024 within this factor of its own product-rate
#: floor (its J^T J products at one product's fastest measured round), replacing the retired 50x
PRODUCT_FLOOR_GOAL = 1.5


def load(path: Path) -> tuple[pd.DataFrame, dict]:
    """One row per benchmark: group, method, median/min seconds, extra_info fields."""
    raw = json.loads(Path(path).read_text())
    rows = [
        dict(
            group=b["group"],
            name=b["name"],
            median=b["stats"]["median"],
            min=b["stats"]["min"],
            rounds=b["stats"]["rounds"],
            **b.get("extra_info", {}),
        )
        for b in raw["benchmarks"]
    ]
    df = pd.DataFrame(rows)
    # a method timed on a subset carries `scale`: its time for the whole problem is median x scale
    df["time"] = df["median"] * (df["scale"].fillna(1.0) if "scale" in df else 1.0)
    return df, raw.get("machine_info", {})


def _ratio_table(g: pd.DataFrame) -> list[str]:
    base = g[g["baseline"] == True] if "baseline" in g else g.iloc[:0]  # noqa: E712 (a run may set it nowhere)
    t0 = float(base["time"].iloc[0]) if len(base) else float(g["time"].max())
    out = ["| method | median time | speed-up vs baseline | max rel. error | iterations |", "|---|---|---|---|---|"]
    for r in g.sort_values("time").itertuples():
        t = r.time
        note = f" (x{r.time / r.median:g}, extrapolated from a subset)" if r.time != r.median else ""
        err = getattr(r, "max_rel_error", float("nan"))
        it = getattr(r, "iterations", float("nan"))
        out.append(
            f"| {r.method}{' (baseline)' if getattr(r, 'baseline', False) is True else ''} | {_t(t)}{note} | "
            f"{t0 / t:.2f}x | {'' if err != err else f'{err:.1e}'} | {'' if it != it or it is None else int(it)} |"
        )
    return out


def _sweep_row(r, rate: float) -> str:
    """The target row of the whole main-arms sweep, measured in full, against its FLOP floor at
    ``rate`` (the sum of its parts' floors), with where the time goes: training, trajectory
    records, checkpoint probes, each against its own floor. Training is what the sweep's time
    leaves after the two timed probe stages, so it also holds the little else the sweep does."""

    def has(key):
        return r.get(key) is not None and r.get(key) == r.get(key)  # present and not NaN

    if not has("trajectory_seconds") and not has("steps_timed"):
        return f"| the main-arms sweep of `pytest claims/` within {SWEEP_GOAL:g}x of its FLOP floor: this run recorded no measurement (the benchmark failed) | n/a | no |"
    if not has("trajectory_seconds"):  # results.json of a run before 2026-11-27's full measurement
        return (
            f"| the main-arms sweep of `pytest claims/` within {SWEEP_GOAL:g}x of its FLOP floor: this run timed "
            f"{r.steps_timed:.0f} steps only, which cannot decide the target (it asks for the sweep measured in full) "
            f"| n/a | no |"
        )
    probes = r.trajectory_seconds + r.checkpoint_seconds
    parts = {
        f"{r.steps:.0f} training steps and the rest (data, models, the results frame)": (
            r["median"] - probes,
            r.steps * r.train_flops_per_step,
        ),
        "trajectory records": (r.trajectory_seconds, r.trajectory_flops),
        "checkpoint probes": (r.checkpoint_seconds, r.probe_flops),
    }
    floor = sum(f for _, f in parts.values()) / rate
    where = "; ".join(f"{name} {_t(t)} against {_t(f / rate)} ({t * rate / f:.1f}x)" for name, (t, f) in parts.items())
    ratio = r["median"] / floor
    return (
        f"| the main-arms sweep of `pytest claims/` within {SWEEP_GOAL:g}x of its FLOP floor, measured in full "
        f"(one run: {r.trajectory_records:.0f} trajectory records and {r.checkpoints:.0f} checkpoint probe stages "
        f"over all arms): {_t(r['median'])} vs floor {_t(floor)} at the best sustained sgemm rate "
        f"{rate / 1e9:.0f} GFLOP/s; {where} | {ratio:.2f}x of floor at {rate / 1e9:.0f} GFLOP/s | "
        f"{'yes' if ratio <= SWEEP_GOAL else 'no'} |"
    )


#: issue 28's goals for one Mixtral-8x7B-shaped layer (d 4096, h 14336, E 8, k 2; 512 tokens) on
#: this 2-core CPU: seconds at most, times its FLOP floor at most, and peak resident memory at
#: most 2 x the layer's expert weights plus O(E d^2), the O(E d^2) declared as 4 float64 d x d
#: matrices per expert (J̄_e, the PCA's eigenvectors at two sites and their QR)
REAL_SHAPE_GOALS = {"Mixtral-8x7B": dict(seconds=600, floor_ratio=2, weight_factor=2, ed2_float64=4)}
REAL_SHAPE_GROUP = "one MoE layer of a real model's shape"
#: the whole model's floor on one GPU, not measured: the FLOP floor at an H100 SXM's nominal dense
#: float32 rate (NVIDIA's data sheet, without tensor cores)
GPU_FLOAT32_RATE = 67e12


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def _real_shape_rows(df: pd.DataFrame, rate: float) -> list[str]:
    """One target row per real-shape layer: time against the goal and the FLOP floor, peak memory
    against the weights, and the whole model extrapolated (layers x one layer) on this CPU."""
    out = []
    for r in df[df.group.str.startswith(REAL_SHAPE_GROUP)].itertuples():
        goal = REAL_SHAPE_GOALS.get(r.method)
        floor = r.floor_flops / rate
        limit = (
            goal["weight_factor"] * r.weight_bytes + goal["ed2_float64"] * r.experts * r.d**2 * 8
            if goal
            else float("nan")
        )
        what = (
            f"| {r.method}-shaped layer (d {r.d:.0f}, h {r.h:.0f}, E {r.experts:.0f}), 512 tokens, the default probes "
            f"(float32, matrix-free; sigma_1 rel. err. {r.sigma1_rel_err:.1e} on 8 tokens, asserted <= 1e-4): "
            f"{_t(r.median)} against its FLOP floor {_t(floor)} ({r.products:.0f} J^T J products, J̄_e and the PCA's "
            f"Gram matrices at {rate / 1e9:.0f} GFLOP/s); peak memory {_gib(r.peak_bytes)} with expert weights of "
            f"{_gib(r.weight_bytes)}; the whole model ({r.layers:.0f} MoE layers) on this CPU about "
            f"{r.median * r.layers / 60:.0f} min, and on one GPU at least {_t(r.layers * r.floor_flops / GPU_FLOAT32_RATE)} "
            f"(its FLOP floor at an H100's nominal {GPU_FLOAT32_RATE / 1e12:.0f} TFLOP/s float32; not run: no GPU in "
            "this session)"
        )
        if goal:
            met = r.median <= goal["seconds"] and r.median / floor <= goal["floor_ratio"] and r.peak_bytes <= limit
            out.append(
                f"{what} (goals: <= {goal['seconds'] / 60:.0f} min, <= {goal['floor_ratio']}x of floor, peak <= "
                f"{_gib(limit)}) | {r.median / 60:.1f} min, {r.median / floor:.2f}x of floor, peak "
                f"{_gib(r.peak_bytes)} | {'yes' if met else 'no'} |"
            )
        else:
            out.append(f"{what} | {r.median / floor:.2f}x of floor | n/a (no goal: measured) |")
    return out


def _t(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def scaling_plot(df: pd.DataFrame, out: Path) -> tuple[Path, str]:
    """Log-log time against d with the crossover where matrix-free methods overtake exact ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = df[df.group.str.startswith("sigma1 scaling")]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, g in s.groupby("method"):
        g = g.sort_values("d")
        ax.loglog(g.d, g["median"], "o-", label=method)
    exact = s[s.method.str.startswith("closed_form")].groupby("d")["median"].min()
    free = s[s.method.str.startswith("matrix_free")].groupby("d")["median"].min()
    both = pd.concat([exact, free], axis=1, keys=["exact", "free"]).dropna()
    cross = both[both.free < both.exact].index
    text = (
        f"matrix-free methods are faster than the best exact method from d = {int(cross.min())} on"
        if len(cross)
        else "matrix-free methods never overtake the best exact method in this range"
    )
    if len(cross):
        ax.axvline(cross.min(), color="gray", ls=":", label=f"crossover d={int(cross.min())}")
    ax.set_xlabel("d (h = 2d, E = 1, N = 8)")
    ax.set_ylabel("median time for sigma_1 of all N Jacobians [s]")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out, text


GROWTH = "probe pipeline cost growth"


def growth_plot(df: pd.DataFrame, out: Path) -> tuple[Path, list[str]]:
    """Cost growth of the probe pipeline: per axis (N, E, d), the least-squares line of log time
    against log size (``scipy.stats.linregress``), drawn log-log with its exponent, one panel per
    axis. Returns the figure and a markdown table of the fitted exponents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np
    import scipy.stats

    g = df[df.group == GROWTH]
    axes = list(dict.fromkeys(g["axis"]))
    fig, panels = plt.subplots(1, len(axes), figsize=(3.4 * len(axes), 3.4), squeeze=False)
    table = ["| axis | sizes | fixed | time | fitted exponent (time ~ size^k) | R^2 |", "|---|---|---|---|---|---|"]
    for ax, axis in zip(panels[0], axes):
        a = g[g["axis"] == axis].sort_values(axis)
        size, t = a[axis].to_numpy(float), a["time"].to_numpy(float)
        ax.loglog(size, t, "o", label="measured")
        slope = r2 = float("nan")
        if len(set(size)) > 1:  # a partial run may hold one size only: nothing to fit
            fit = scipy.stats.linregress(np.log(size), np.log(t))
            slope, r2 = fit.slope, fit.rvalue**2
            ax.loglog(size, np.exp(fit.intercept) * size**slope, "-", label=f"fit: exponent {slope:.2f}")
        fixed = ", ".join(f"{k}={int(a[k].iloc[0])}" for k in ("N", "E", "d") if k != axis)
        ax.set_xlabel(f"{axis} ({fixed})")
        ax.set_ylabel("probe_rows time [s]")
        # one labelled tick per measured size, none on the minor ticks (a range under a decade
        # would otherwise label every minor tick, overlapping)
        ax.set_xticks(size, [str(int(v)) for v in size])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7)
        table.append(
            f"| {axis} | {', '.join(str(int(v)) for v in size)} | {fixed} | {_t(t.min())} - {_t(t.max())} | "
            f"{slope:.2f} | {r2:.3f} |"
        )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out, table


def sgemm_rate(df: pd.DataFrame) -> float:
    """The FLOP floor's rate, FLOP/s: FLOPs over the *fastest* round of every sgemm benchmark in the
    run (it times one at its start and one near its end), the best sustained rate of the machine.
    A median is dragged down by a busy neighbour (issue 11 measured 128 and 70 GFLOP/s on one
    machine); the fastest round is what the hardware can do. NaN without an sgemm benchmark."""
    gemm = df[df.method.astype(str).str.startswith("sgemm")] if "method" in df else df.iloc[:0]
    return float((gemm.flops / gemm["min"]).max()) if len(gemm) else float("nan")


def _product_floor_row(product, read: pd.DataFrame, its: float, exact: float, rate: float) -> str:
    """The d = 1024 row of what bounds a matrix-free method: ``its`` J^T J products over all N
    points (a product over fewer points, once some have stopped, counts as its share, which
    assumes a narrower GEMM is no faster per column) at the product's own fastest round, and at
    the square sgemm's rate, beside the time to read its weights."""
    t1, flops = float(product["min"]), float(product.get("flops", float("nan")))
    at_product = exact / (its * t1)
    row = f"| d = 1024 floor: {its:g} J^T J products over all N points x one product ({_t(t1)}, the fastest round"
    if flops == flops:
        row += f": {flops / 1e6:.0f} MFLOP at {flops / t1 / 1e9:.0f} GFLOP/s, GEMMs of only N = 8 columns"
    if len(read):
        t_read, size = float(read["min"].iloc[0]), float(read.bytes.iloc[0])
        share = (
            "so memory traffic is not the bound"
            if t_read <= t1 / 2
            else "so memory traffic is a large part of the product's time"
        )
        row += f"; reading its {size / 2**20:.0f} MiB of weights alone takes {_t(t_read)} ({size / t_read / 1e9:.0f} GB/s), {share}"
    row += f") = {_t(its * t1)}, at most {at_product:.1f}x over the best exact method"
    if flops == flops and rate == rate:
        at_sgemm = exact / (its * flops / rate)
        row += (
            f"; at the square sgemm's {rate / 1e9:.0f} GFLOP/s the {its:g} products would take {_t(its * flops / rate)}, "
            f"at most {at_sgemm:.0f}x | {at_product:.1f}x possible at the product's rate, {at_sgemm:.0f}x at the sgemm rate"
        )
    else:  # no sgemm benchmark (or no product FLOPs) in this run: no second bound
        row += f" | {at_product:.1f}x possible at the product's rate"
    return row + " | n/a (what bounds it; the 50x goal was retired by issue 29) |"


def targets(df: pd.DataFrame) -> list[str]:
    """The issue's speed targets, each as measured in this run."""

    def med(group_prefix, method):
        sel = df[df.group.str.startswith(group_prefix) & (df.method == method)]
        return float(sel["median"].iloc[0]) if len(sel) else float("nan")

    rows = ["| target | measured | met |", "|---|---|---|"]

    def add(name, value, goal):
        rows.append(f"| {name} | {value:.2f}x | {'yes' if value >= goal else 'no'} |")

    add(
        "closed-form Jacobians vs vmap(jacrev), paper size (goal >= 3x)",
        med("jacobians [E=8 d=64 h=128 N=512]", "vmap_jacrev") / med("jacobians [E=8 d=64 h=128 N=512]", "closed_form"),
        3,
    )
    g = df[df.group.str.startswith("sigma1 of all")]
    base = med("sigma1 of all", "vmap_jacrev+svdvals")
    best = g[g.method != "vmap_jacrev+svdvals"].sort_values("time").iloc[0] if len(g) > 1 else None
    if best is not None:
        add(
            f"sigma_1 of all E*N Jacobians, best method ({best.method}) vs vmap(jacrev)+svdvals (goal >= 10x)",
            base / best["time"],
            10,
        )
    s = df[df.group.str.startswith("sigma1 scaling") & (df.get("d") == 1024)]
    if len(s):
        exact = s[s.method.str.startswith("closed_form")]["median"].min()
        free = s[s.method.str.startswith("matrix_free")].sort_values("median").iloc[0]
        product = df[df.method == "gram_product"] if "method" in df else df.iloc[:0]
        if len(product):
            its = free.get("products", float("nan"))  # runs before cca39c5 recorded iterations only
            its = float(its if its == its else free.iterations)
            floor = its * float(product.iloc[0]["min"])
            ratio = free["median"] / floor
            rows.append(
                f"| d = 1024: the best matrix-free sigma_1 ({free.method}, {_t(free['median'])}, "
                f"{exact / free['median']:.1f}x over the best exact method; max rel. error "
                f"{free.max_rel_error:.1e}, asserted <= 1e-4) within {PRODUCT_FLOOR_GOAL:g}x of its own product-rate "
                f"floor ({its:g} J^T J products x one product's fastest round = {_t(floor)}) | {ratio:.2f}x | "
                f"{'yes' if ratio <= PRODUCT_FLOOR_GOAL else 'no'} |"
            )
            rows.append(
                _product_floor_row(
                    product.iloc[0],
                    df[df.method == "weights_read"],
                    its,
                    exact,
                    sgemm_rate(df),
                )
            )
    topk, soft = med("one training step, main arms", "topk"), med("one training step, main arms", "soft")
    pair = df[df.method == "topk+soft"] if "method" in df else df.iloc[:0]
    pair_topk, pair_soft = (
        (float(pair.topk_median.iloc[0]), float(pair.soft_median.iloc[0]))
        if len(pair)
        else (float("nan"), float("nan"))
    )
    if topk == topk and soft == soft:
        # declared at 2026-11-27, before the first run with the interleaved benchmark: met only if both
        # measurements, the separate benchmarks and the interleaved rounds, are at or below 0.5x
        both = topk / soft <= 0.5 and (not len(pair) or pair_topk / pair_soft <= 0.5)
        rows.append(
            f"| one Top-k training step of the MLP setting (main arms, seeds batched): {topk * 1e3:.1f} ms vs the soft step "
            f"{soft * 1e3:.1f} ms (goal <= 0.5x{', in both this and the interleaved measurement' if len(pair) else ''}) | "
            f"{topk / soft:.2f}x | {'yes' if both else 'no'} |"
        )
    if len(pair):
        where = (
            "counted in the row above"
            if topk == topk and soft == soft
            else "n/a: the target needs the separate Top-k and soft benchmarks too, not in this run"
        )
        rows.append(
            f"| one Top-k training step of the MLP setting against the soft step, measured in alternating rounds "
            f"(one of each per round, medians of each): {pair_topk * 1e3:.1f} ms vs {pair_soft * 1e3:.1f} ms | "
            f"{pair_topk / pair_soft:.2f}x | {where} |"
        )
    sw = df[df.group == "claims sweep"]
    rate = sgemm_rate(df)
    if len(sw) and rate == rate:
        rows.append(_sweep_row(sw.iloc[0], rate))
    if rate == rate and "floor_flops" in df:
        rows += _real_shape_rows(df, rate)
    steps_lm = df[df.group.str.startswith("one LM training step")]
    if len(steps_lm) and rate == rate:
        for r in steps_lm.itertuples():
            floor = r.flops / rate
            rows.append(
                f"| one LM training step, arm {r.method} ({r.group.split(', ')[-1]}): {r.median * 1e3:.0f} ms vs its "
                f"FLOP floor {floor * 1e3:.0f} ms at {rate / 1e9:.0f} GFLOP/s (goal <= 3x) "
                f"| {r.median / floor:.1f}x of floor at {rate / 1e9:.0f} GFLOP/s "
                f"| {'yes' if r.median / floor <= 3 else 'no'} |"
            )
        shared = df[df.group.str.startswith("LM shared parts")]
        moe = steps_lm[steps_lm.method.isin([a.value for a in Arm if a.routing == "topk"])]
        if len(shared) and len(moe):
            sh, top = shared.iloc[0], moe.sort_values("median").iloc[0]  # the fastest Top-k arm
            goal, ffn_floor = 3 * top.flops / rate, (top.flops - sh.flops) / rate
            left = goal - sh["median"]
            budget = (
                f"leaves its FFN layers {left * 1e3:.0f} ms"
                if left > 0
                else f"is already spent by these parts ({-left * 1e3:.0f} ms over)"
            )
            rows.append(
                f"| LM: the parts every arm shares (the step with every FFN zero: attention, LayerNorms, embedding, "
                f"tied unembedding and cross-entropy, Adam on their parameters) take {sh['median'] * 1e3:.0f} ms, "
                f"{sh['median'] / (sh.flops / rate):.1f}x their FLOP floor {sh.flops / rate * 1e3:.0f} ms; the "
                f"fastest Top-k arm's goal ({top.method}: 3 x {top.flops / rate * 1e3:.0f} ms = {goal * 1e3:.0f} ms) "
                f"{budget}; they take {(top['median'] - sh['median']) * 1e3:.0f} ms (with their routers and Adam on "
                f"their weights; their FLOP floor, the routed experts' and routers' products, {ffn_floor * 1e3:.0f} ms) "
                f"| FFN layers {(top['median'] - sh['median']) / ffn_floor:.1f}x of their floor, "
                f"{max(left, 0) / ffn_floor:.1f}x allowed | n/a (where the time goes) |"
            )
    return rows


def render(df: pd.DataFrame, machine: dict, plot: Path | None, plot_text: str, report_dir: Path) -> str:
    lines = [
        BEGIN,
        "## Benchmarks",
        "",
        "Generated by `pytest --benchmark-only` (pytest-benchmark; medians of several rounds, all methods measured "
        "side by side in one run). Every fast method is checked against exact float64 SVD inside its benchmark "
        "(max relative error of sigma_1 <= 1e-4).",
        "",
        f"Machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
        f"{machine.get('cpu', {}).get('count', '?')} CPUs, Python {machine.get('python_version', '?')}.",
        "",
        "### Targets",
        "",
    ]
    lines += targets(df)
    lines += ["", "**Which method, at which size.** " + plot_text + ".", ""]
    if plot is not None:
        lines += [f"![sigma_1 time against d]({os.path.relpath(plot, report_dir)})", ""]
    if (df.group == GROWTH).any():
        fig, table = growth_plot(df, report_dir / "figures" / "bench_probe_cost_growth.png")
        lines += [
            f"### {GROWTH}",
            "",
            "`moegeo.rows.probe_rows` on one soft MLP-MoE layer (h = 2d), one axis "
            "varied at a time; exponent of the least-squares line of log time against log size.",
            "",
        ]
        lines += table + ["", f"![probe pipeline time against N, E, d]({os.path.relpath(fig, report_dir)})", ""]
    for group, g in df.groupby("group", sort=False):
        if group == GROWTH:
            continue
        if group == "sigma1 scaling in d (h=2d, E=1, N=8)":
            lines += [
                f"### {group}",
                "",
                "| d | method | median time | max rel. error | iterations |",
                "|---|---|---|---|---|",
            ]
            for r in g.sort_values(["d", "median"]).itertuples():
                lines.append(
                    f"| {int(r.d)} | {r.method} | {_t(r.median)} | {r.max_rel_error:.1e} | {int(r.iterations)} |"
                )
        elif group.startswith("peak memory"):
            lines += [
                f"### {group}",
                "",
                "| method | d | peak growth | one N x d x d float32 tensor |",
                "|---|---|---|---|",
            ]
            for r in g.itertuples():
                lines.append(f"| {r.method} | {int(r.d)} | {r.peak_mb:.0f} MB | {r.n_d_d_tensor_mb:.0f} MB |")
        else:
            lines += [f"### {group}", ""] + _ratio_table(g)
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def update_report(results: Path, report: Path) -> Path:
    df, machine = load(results)
    plot, text = (None, "no scaling series in this run")
    if df.group.str.startswith("sigma1 scaling").any():
        plot, text = scaling_plot(df, report.parent / "figures" / "bench_sigma1_scaling.png")
    section = render(df, machine, plot, text, report.parent)
    old = report.read_text() if report.exists() else "# moegeo report\n"
    return write_atomic(report, splice(old, section))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_report.py", description=__doc__)
    ap.add_argument("results", nargs="?", default="benchmarks/results.json")
    ap.add_argument("--report", default="REPORT.md")
    a = ap.parse_args(argv)
    print(f"benchmark section written to {update_report(Path(a.results), Path(a.report))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
