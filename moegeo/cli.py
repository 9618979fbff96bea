"""``python -m moegeo``: train the arms of one setting and print the probe table.

``--setting mlp`` (default): the controlled MLP-MoE of the paper's Appendix B. ``--setting lm``:
the 3-layer Transformer language model on the shipped WikiText-2 (or ``--lm-data DIR``), probed
layer by layer, with its held-out perplexity against the unigram model.

``python -m moegeo probe --hf-model DIR``: probe a local Hugging Face MoE checkpoint (needs the
``[hf]`` extra) on a text and write a report; ``python -m moegeo probe --help`` for its options.

``python -m moegeo sweep --executor SPEC [--grid FIELD=V1,V2 ...]``: a grid of configs as
independent tasks on an executor (``moegeo.sweeps``); ``python -m moegeo sweep --grid small|full``: a
declared grid of ``moegeo.claims.sensitivity`` (every claim of the MLP setting's main arms at every grid
point) and its section of REPORT.md; ``python -m moegeo sweep --help``.

Every command checks its arguments and output paths before any work. A mistake, or a run that
cannot finish (too large for memory, diverged, an executor that fails), is one line
``PROG: error: ...`` on stderr and exit status 2, never a traceback; a standard output closed
by its reader (``| head``) ends the command quietly with status 141, the files it wrote kept.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

from .cache import cache_dir
from .config import Arm, ExperimentConfig, LMConfig
from .experiment import run
from .frame import perplexity_table, summary_table


def _setting_and_seeds(ap: argparse.ArgumentParser, setting_help: str, seeds_help: str) -> None:
    """The ``--setting``, ``--seeds`` and ``--seed-offset`` options of a training command (both
    None when not given: 1 seed from 0, see ``_seeds``)."""
    ap.add_argument("--setting", choices=("mlp", "lm"), default="mlp", help=setting_help)
    ap.add_argument("--seeds", type=int, default=None, help=seeds_help)
    ap.add_argument("--seed-offset", type=int, default=None, help="first seed (default 0)")


def _seeds(ap: argparse.ArgumentParser, args) -> tuple[int, ...]:
    """The seeds ``--seed-offset`` ... ``--seed-offset + --seeds - 1`` (a usage error for fewer
    than one seed or a negative offset)."""
    n = 1 if args.seeds is None else args.seeds
    offset = 0 if args.seed_offset is None else args.seed_offset
    if n < 1:
        ap.error(f"--seeds must be >= 1, got {n}")
    if offset < 0:
        ap.error(f"--seed-offset must be >= 0 (seeds are non-negative integers), got {offset}")
    return tuple(range(offset, offset + n))


def output_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be written as a file (an existing directory, a missing or read-only
    directory, a read-only file), or None when it can."""
    p = Path(path)
    if p.is_dir():
        return f"{path} is a directory; expected a file name"
    if p.exists():
        return None if os.access(p, os.W_OK) else f"{path} exists and is not writable"
    parent = p.parent
    if not parent.is_dir():
        return f"the directory {parent} of {path} does not exist"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"the directory {parent} of {path} is not writable"


def output_dir_problem(path: str) -> str | None:
    """Why ``path`` cannot be (or be made) a writable directory, or None when it can."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        return f"{path} exists and is not a directory; expected a directory (it is created if missing)"
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{path} cannot be created: {probe} is not a directory"
    return None if os.access(probe, os.W_OK | os.X_OK) else f"{probe} is not writable, so {path} cannot be written"


def _check_outputs(
    ap: argparse.ArgumentParser, files: dict[str, str | None] | None = None, dirs: dict[str, str | None] | None = None
) -> None:
    """A usage error for the first output path (option -> path; None: not given) that cannot be written."""
    files, dirs = files or {}, dirs or {}
    for option, path in files.items():
        why = path is not None and output_file_problem(path)
        if why:
            ap.error(f"{option}: {why}")
    for option, path in dirs.items():
        why = path is not None and output_dir_problem(path)
        if why:
            ap.error(f"{option}: {why}")


def _check_cache(ap: argparse.ArgumentParser, use: bool) -> None:
    """A usage error when the cache is used and ``$MOEGEO_CACHE`` is unusable (``cache_dir``)."""
    if use:
        try:
            cache_dir()
        except ValueError as err:
            ap.error(str(err))


#: errors a run raises on its input, printed as ``error: ...`` (exit status 2)
RUN_ERRORS = (ValueError, TypeError, MemoryError, FloatingPointError, OSError)


def _fail(prog: str, err: BaseException) -> int:
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    """The command line; returns the exit status. A closed standard output (``| head``) ends it
    quietly with status 141 (128 + SIGPIPE), with everything written before kept."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = {"probe": probe_main, "sweep": sweep_main}.get(argv[0] if argv else "")
    try:
        status = command(argv[1:]) if command else run_main(argv)
        sys.stdout.flush()  # here, so that a closed pipe is seen while it can be handled
        return status
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # write nothing more to the closed pipe
            fd = sys.stdout.fileno()
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        return 141


def run_main(argv) -> int:
    """``python -m moegeo [--setting mlp|lm]``: train the arms of one setting and print the probe table."""
    ap = argparse.ArgumentParser(
        prog="python -m moegeo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _setting_and_seeds(
        ap,
        "mlp: the controlled MLP-MoE (default); lm: the Transformer language model on WikiText-2",
        "number of seeds (default 1)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps (default {ExperimentConfig().steps} for mlp, {LMConfig().steps} for lm)",
    )
    ap.add_argument(
        "--lm-data", default=None, help="lm: a directory with the full WikiText-2 (default: the shipped copy)"
    )
    ap.add_argument("--no-cache", action="store_true", help="recompute even if a cached run exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--csv", help="also write the tidy results frame to this CSV file")
    args = ap.parse_args(argv)
    seeds = _seeds(ap, args)
    if args.lm_data is not None and args.setting != "lm":
        ap.error("--lm-data needs --setting lm")
    _check_outputs(ap, files={"--csv": args.csv})
    _check_cache(ap, not args.no_cache)
    steps = {} if args.steps is None else {"steps": args.steps}
    try:
        if args.setting == "lm":
            cfg = LMConfig(seeds=seeds, data=args.lm_data, **steps)
        else:
            cfg = ExperimentConfig(seeds=seeds, **steps)
    except (ValueError, TypeError, OSError) as err:
        ap.error(f"--lm-data: {err}" if isinstance(err, OSError) else str(err))
    t0 = time.perf_counter()
    try:
        df = run(cfg, cache=not args.no_cache, progress=False if args.quiet else None)
    except RUN_ERRORS as err:
        return _fail(ap.prog, err)
    if args.csv:  # first: a closed standard output below must not lose it
        df.to_csv(args.csv, index=False)
    print(
        f"moegeo ({cfg.setting}): {len(cfg.arms)} arms x {len(cfg.seeds)} seed(s) {list(cfg.seeds)}, {cfg.steps} steps "
        f"({time.perf_counter() - t0:.1f} s); probes at the final step, mean over experts and seeds"
    )
    if cfg.setting == "lm":
        print(
            f"data: {cfg.data or 'the shipped WikiText-2 (train on valid, hold out test)'}, sha256 {cfg.data_digest()}"
        )
    with pd.option_context(
        "display.max_rows",
        None,
        "display.max_columns",
        None,
        "display.width",
        200,
        "display.float_format",
        "{:.4g}".format,
    ):
        print(summary_table(df))
        if cfg.setting == "lm":
            print("\nheld-out perplexity at the final step (mean over seeds):")
            print(perplexity_table(df).to_string())
    undefined = int((df["metric"] == "undefined").sum())
    if undefined:
        print(f"{undefined} undefined value(s) left out (metric 'undefined' in the frame, its reading names each)")
    if args.csv:
        print(f"results frame written to {args.csv}")
    return 0


def _positive_int(s: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def probe_main(argv) -> int:
    """``python -m moegeo probe``: every probe of a local Hugging Face MoE checkpoint on a text."""
    ap = argparse.ArgumentParser(
        prog="python -m moegeo probe",
        description="Every probe of a local Hugging Face MoE checkpoint on a text: writes "
        "PROBE.md, figures/ and probe.csv (the tidy frame) to --out.",
    )
    ap.add_argument(
        "--hf-model",
        required=True,
        metavar="DIR",
        help="a local checkpoint directory (config.json, weights and tokenizer, as save_pretrained writes)",
    )
    ap.add_argument(
        "--text-file",
        "--text",
        dest="text_file",
        metavar="FILE",
        help="a UTF-8 text file to run the model on (default: the shipped WikiText-2 test split)",
    )
    ap.add_argument(
        "--allow-missing",
        action="append",
        default=[],
        metavar="PATTERN",
        help="accept checkpoint weights that are missing, unexpected or of another shape when their names "
        "match this fnmatch pattern (repeatable; default: refuse any, since missing weights are "
        "initialised at random)",
    )
    ap.add_argument(
        "--layers", type=int, nargs="+", metavar="L", help="decoder-layer indices to probe (default: every MoE layer)"
    )
    ap.add_argument(
        "--tokens",
        type=_positive_int,
        default=512,
        metavar="N",
        help="tokens probed: exactly the first N of the text, fewer only if the text is shorter; the output "
        "and the report state the number (default 512)",
    )
    ap.add_argument(
        "--context",
        type=_positive_int,
        default=None,
        metavar="C",
        help="tokens per sequence, at most the model's max_position_embeddings (default: min(N, 512, "
        "max_position_embeddings)); the last sequence is completed with the following tokens of "
        "the text, which are not probed",
    )
    ap.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="dtype to load and probe in (default float64)",
    )
    ap.add_argument("--out", metavar="DIR", help="report directory (default: probe-<checkpoint name>)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    name = os.path.basename(os.path.normpath(args.hf_model))
    out = args.out or f"probe-{name}"
    _check_outputs(ap, dirs={"--out": out})
    if args.text_file is not None and not os.path.isfile(args.text_file):
        ap.error(f"--text-file: {args.text_file} is not a file; expected a UTF-8 text file")
    try:
        import transformers  # noqa: F401
    except ImportError:
        ap.error('the probe needs transformers: pip install -e ".[hf]"')
    import torch

    from . import hf
    from .report import probe as probe_report

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():  # one line each on stderr, without the source line of the warning
            warnings.showwarning = lambda message, *_, **__: print(f"{ap.prog}: warning: {message}", file=sys.stderr)
            df = hf.probe_checkpoint(
                args.hf_model,
                text_file=args.text_file,
                tokens=args.tokens,
                layers=args.layers,
                context=args.context,
                dtype=getattr(torch, args.dtype),
                progress=False if args.quiet else None,
                allow_missing=args.allow_missing,
                announce=lambda line: print(f"{ap.prog}: {line}", file=sys.stderr, flush=True),
            )
    except RUN_ERRORS as err:
        return _fail(ap.prog, err)
    source = probe_report.source_line(df, args.hf_model, args.dtype, args.text_file, args.tokens)
    try:
        path = probe_report.write(df, out, name, source)
    except OSError as err:
        return _fail(ap.prog, err)
    print(
        f"{ap.prog}: {df['layer'].nunique()} MoE layer(s) probed in {time.perf_counter() - t0:.1f} s. {source}\n"
        f"Report written to {path}"
    )
    return 0


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

    from . import sweeps

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
        help="one axis per field, e.g. top_k=1,2 lr=1e-3,3e-3; every combination is a config. Or the name of "
        "a declared grid, small or full (moegeo.claims.sensitivity): every claim of the MLP setting's main arms "
        "at every grid point, and the sensitivity section of --report",
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
    ap.add_argument(
        "--report",
        default="REPORT.md",
        metavar="PATH",
        help="--grid small|full: the report whose sensitivity section is written (default REPORT.md here)",
    )
    args = ap.parse_args(argv)
    spec = args.executor or sweeps.DEFAULT_EXECUTOR
    _check_outputs(ap, files={"--csv": args.csv})
    _check_cache(ap, not args.no_cache)
    if len(args.grid) == 1 and "=" not in args.grid[0]:
        _check_outputs(ap, files={"--report": args.report})
        return _named_grid(ap, args, spec)
    seeds = _seeds(ap, args)
    cls = LMConfig if args.setting == "lm" else ExperimentConfig
    try:
        sweeps.parse_executor(spec)
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
    except (ImportError, sweeps.ExecutorError, *RUN_ERRORS) as err:
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
    with pd.option_context(
        "display.max_rows",
        None,
        "display.max_columns",
        None,
        "display.width",
        200,
        "display.float_format",
        "{:.4g}".format,
    ):
        print(table.to_string() if not table.empty else "(no such rows)")
    if args.csv:
        print(f"results frame written to {args.csv}")
    return 0


def _named_grid(ap: argparse.ArgumentParser, args, spec: str) -> int:
    """``python -m moegeo sweep --grid small|full``: the declared grid of ``moegeo.claims.sensitivity``,
    its per-point verdict table printed and its section written into ``--report``."""
    from . import report, sweeps
    from .claims import sensitivity

    try:
        sweeps.parse_executor(spec)
        g = sensitivity.grid(args.grid[0])
    except ValueError as err:
        ap.error(str(err))
    fixed = [
        f"--{name.replace('_', '-')}"
        for name in ("seeds", "seed_offset", "set", "chunk")
        if getattr(args, name) not in (None, [])
    ]
    if fixed or args.setting != "mlp":
        ap.error(f"--grid {g.name} declares its own configs, seeds and setting; drop {', '.join(fixed) or '--setting'}")
    n = len(g.configs)
    print(f"moegeo sweep: grid {g.name} ({g.about}): {n} configs, {len(g.points())} points; {g.budget}", flush=True)
    try:
        result = sensitivity.run(g, executor=spec, cache=not args.no_cache, progress=False if args.quiet else None)
    except (ImportError, sweeps.ExecutorError, *RUN_ERRORS) as err:
        return _fail(ap.prog, err)
    tab = result.table
    if args.csv:  # the files first: a closed standard output below must not lose them
        tab.to_csv(args.csv, index=False)
    path = report.write_sensitivity(args.report, result, f"python -m moegeo sweep --grid {g.name} --executor {spec}")
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


if __name__ == "__main__":
    sys.exit(main())
