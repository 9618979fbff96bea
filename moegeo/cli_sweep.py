"""``moegeo sweep``: a grid of configs as independent tasks on an executor (``moegeo.sweeps``), its
final-step table per config and arm; ``moegeo sensitivity small|full``: a declared grid of
``moegeo.claims.sensitivity``, its per-point verdict table and its section of REPORT.md."""

from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd

from .cli_common import RUN_ERRORS, TABLE_DISPLAY, _check_cache, _check_outputs, _fail, _seeds, _setting_and_seeds
from .config import Arm, ExperimentConfig, LMConfig


def _field_value(cls, name: str, text: str):
    """The value of config field ``name`` of ``cls`` written as ``text`` (tuples joined by ``+``,
    ``none`` for None); ValueError naming the field."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "seeds"]
    if name not in names:
        raise ValueError(
            f"{cls.__name__} has no field {name!r} to set (seeds: --seeds, --seed-offset); fields: {', '.join(names)}"
        )
    default = getattr(cls(), name)
    try:
        if isinstance(default, tuple):
            parts = tuple(p for p in text.split("+") if p)
            return parts if name == "arms" else tuple(int(p) for p in parts)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ValueError(f"{name} takes {type(default).__name__} values, got {text!r}") from None
    return None if text.lower() == "none" else text


def _assignments(items, many: bool) -> dict:
    """``FIELD=VALUE`` (``--set``) or ``FIELD=V1,V2`` (``--grid``) strings as a dict."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"expected FIELD={'V1,V2,...' if many else 'VALUE'}, got {item!r}")
        if name in out:
            raise ValueError(f"field {name!r} given twice")
        out[name] = value.split(",") if many else value
    return out


def sweep_main(argv) -> int:
    """``python -m moegeo sweep``: a grid of configs of one setting, every combination of the
    ``--grid`` axes, computed as independent tasks (a config x a chunk of its seeds) on an
    executor, cached task by task (a rerun computes only what is missing). Prints one table of a
    final-step metric (mean over layers, experts and seeds) per config and arm."""
    import itertools

    from . import executors, sweeps

    ap = argparse.ArgumentParser(
        prog="python -m moegeo sweep",
        description=sweep_main.__doc__,
        epilog="executors: serial; processes:N (local processes); dask://host:port (a running Dask scheduler, the "
        "[dask] extra); dask-local:N (a Dask LocalCluster started here); slurm[:partition] (submitit, the "
        "[slurm] extra). Example: python -m moegeo sweep --seeds 4 --set steps=500 --grid top_k=1,2 "
        "temperature=0.5,1,2 --executor dask-local:2",
    )
    _setting_and_seeds(ap, "mlp (default) or lm", "number of seeds of every config (default 1)")
    ap.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="fixed config fields, e.g. steps=500 n_experts=4 arms=topk+soft (tuples joined by +)",
    )
    ap.add_argument(
        "--grid",
        nargs="+",
        default=[],
        metavar="FIELD=V1,V2",
        help="one axis per field, e.g. top_k=1,2 lr=1e-3,3e-3; every combination is a config (the declared "
        "sensitivity grids are `moegeo sensitivity small|full`)",
    )
    ap.add_argument(
        "--executor",
        default=None,
        metavar="SPEC",
        help="where tasks run (default processes:N, one per core); see below",
    )
    ap.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="seeds per task (default: all seeds of a config; a chunked config agrees with its unchunked "
        "run to rounding, not bit for bit)",
    )
    ap.add_argument("--metric", default="sigma1", help="metric of the printed table (default sigma1)")
    ap.add_argument("--reading", default="jacobian=pointwise", help="its reading (default jacobian=pointwise)")
    ap.add_argument("--no-cache", action="store_true", help="recompute every task and store none")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--csv", help="write every config's tidy frame to this CSV file (column config: the grid name)")
    args = ap.parse_args(argv)
    spec = args.executor or executors.DEFAULT_EXECUTOR
    named = [g for g in args.grid if "=" not in g]
    if named:
        ap.error(f"--grid takes FIELD=V1,V2 axes, got {named[0]!r}; a declared grid is `moegeo sensitivity {named[0]}`")
    _check_outputs(ap, files={"--csv": args.csv})
    _check_cache(ap, not args.no_cache)
    seeds = _seeds(ap, args)
    cls = LMConfig if args.setting == "lm" else ExperimentConfig
    try:
        executors.parse_executor(spec)
        fixed = {k: _field_value(cls, k, v) for k, v in _assignments(args.set, False).items()}
        axes = {k: [_field_value(cls, k, v) for v in vs] for k, vs in _assignments(args.grid, True).items()}
        both = set(fixed) & set(axes)
        if both:
            raise ValueError(f"{sorted(both)} given in both --set and --grid")
        base = cls(seeds=seeds, **fixed)
        grid = {}
        for combo in itertools.product(*axes.values()):
            choice = dict(zip(axes, combo))
            name = ",".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in choice.items())
            grid[name or "base"] = dataclasses.replace(base, **choice)
        sweeps.tasks(grid, chunk=args.chunk)
    except (ValueError, TypeError, OSError) as err:
        ap.error(str(err))
    t0 = time.perf_counter()
    try:
        result = sweeps.sweep(
            grid, executor=spec, chunk=args.chunk, cache=not args.no_cache, progress=False if args.quiet else None
        )
    except (ImportError, executors.ExecutorError, *RUN_ERRORS) as err:
        return _fail(ap.prog, err)
    if args.csv:  # first: a closed standard output below must not lose it
        result.tidy().to_csv(args.csv, index=False)
    print(
        f"moegeo sweep ({args.setting}): {len(grid)} config(s) x {len(seeds)} seed(s), {len(result.tasks)} task(s) on "
        f"{spec}: {len(result.computed)} computed, {len(result.cached)} from the cache "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    table = {}
    for name, df in result.frames.items():
        final = df[
            (df.step == df.steps)
            & (df.metric == args.metric)
            & (df.reading == args.reading)
            & (df.expert >= 0)
            & (df["index"] == -1)
        ]
        table[name] = final.groupby("arm")["value"].mean()
    table = pd.DataFrame(table).T
    table = table[[a.value for a in Arm if a.value in table.columns]]
    print(f"{args.metric} [{args.reading}] at the final step, mean over layers, experts and seeds:")
    with pd.option_context(*TABLE_DISPLAY):
        print(table.to_string() if not table.empty else "(no such rows)")
    if args.csv:
        print(f"results frame written to {args.csv}")
    return 0


def sensitivity_main(argv) -> int:
    """``moegeo sensitivity small|full``: a declared grid of ``moegeo.claims.sensitivity`` (its
    own configs, seeds and setting): every claim of the MLP setting's main arms at every grid
    point, the per-point verdict table printed and the sensitivity section written into
    ``--report``."""
    from . import executors, report
    from .claims import sensitivity

    ap = argparse.ArgumentParser(prog="moegeo sensitivity", description=sensitivity_main.__doc__)
    ap.add_argument("grid", help=f"the declared grid: {' or '.join(sensitivity.GRIDS)}")
    ap.add_argument(
        "--executor",
        default=None,
        metavar="SPEC",
        help="where the configs train (default processes:N, one per core), as for `moegeo sweep`",
    )
    ap.add_argument("--no-cache", action="store_true", help="recompute every config and store none")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--csv", help="write the per-point table to this CSV file")
    ap.add_argument(
        "--report",
        default="REPORT.md",
        metavar="PATH",
        help="the report whose sensitivity section is written (default REPORT.md here)",
    )
    args = ap.parse_args(argv)
    spec = args.executor or executors.DEFAULT_EXECUTOR
    _check_outputs(ap, files={"--csv": args.csv, "--report": args.report})
    _check_cache(ap, not args.no_cache)
    try:
        executors.parse_executor(spec)
        g = sensitivity.grid(args.grid)
    except ValueError as err:
        ap.error(str(err))
    n = len(g.configs)
    print(
        f"moegeo sensitivity: grid {g.name} ({g.about}): {n} configs, {len(g.points())} points; {g.budget}", flush=True
    )
    try:
        result = sensitivity.run(g, executor=spec, cache=not args.no_cache, progress=False if args.quiet else None)
    except (ImportError, executors.ExecutorError, *RUN_ERRORS) as err:
        return _fail(ap.prog, err)
    tab = result.table
    if args.csv:  # the files first: a closed standard output below must not lose them
        tab.to_csv(args.csv, index=False)
    path = report.write_sensitivity(args.report, result, f"moegeo sensitivity {g.name} --executor {spec}")
    print(
        f"grid {g.name} on {spec}: {len(result.sweep.computed)} configs trained, {len(result.sweep.cached)} from the "
        f"cache ({result.seconds:.0f} s). Per point: the claim's primary statistic (median over seeds) and, after it, "
        "+ where it holds, - where it fails and ~ where it is below the smallest meaningful effect (Holm across the grid "
        "per claim and per point; exploratory):"
    )
    marks = {"holds": "+", "fails": "-", "negligible": "~", "undecided": ""}
    marks["by construction"] = "="
    mark = [
        marks[sensitivity.outcome(gv, v, c)] for gv, v, c in zip(tab.grid_verdict, tab.raw_verdict, tab.control_init)
    ]
    cells = tab.assign(
        cell=[f"{e:.3g}{m}" for e, m in zip(tab.effect, mark)], point=tab.config + " @" + tab.step.astype(str)
    )
    wide = (
        cells.pivot(index="point", columns="claim", values="cell")
        .reindex(index=[f"{c} @{s}" for c, s in g.points()], columns=list(dict.fromkeys(tab.claim)))
        .fillna("n/a")
    )
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250):
        print(wide.T.to_string())
    for cid, sentence in report.sensitivity_sentences(tab, g).items():
        print(f"{cid} {sentence}")
    if args.csv:
        print(f"per-point table written to {args.csv}")
    print(f"sensitivity section (grid {g.name}) written to {path}")
    return 0
