"""``python -m moegeo``: train the arms of one setting and print the probe table.

``--setting mlp`` (default): the controlled MLP-MoE of the paper's Appendix B. ``--setting lm``:
the 3-layer Transformer language model on the shipped WikiText-2 (or ``--lm-data DIR``), probed
layer by layer, with its held-out perplexity against the unigram model.

``python -m moegeo probe --hf-model DIR``: probe a local Hugging Face MoE checkpoint (needs the
``[hf]`` extra) on a text and write a report; ``python -m moegeo probe --help`` for its options.
``python -m moegeo claims --hf-model DIR [--baseline init]``: the asymmetry paper's
pretrained-model claims on that checkpoint alone, beside its initialisation with ``--baseline init``.

``python -m moegeo sweep --executor SPEC [--grid FIELD=V1,V2 ...]``: a grid of configs as
independent tasks on an executor (``moegeo.sweeps``); ``python -m moegeo sensitivity small|full``: a
declared grid of ``moegeo.claims.sensitivity`` (every claim of the MLP setting's main arms at every grid
point) and its section of REPORT.md. ``moegeo`` (the console script) is the same as ``python -m moegeo``.

Every command checks its arguments and output paths before any work. A mistake, or a run that
cannot finish (too large for memory, diverged, an executor that fails), is one line
``PROG: error: ...`` on stderr and exit status 2, never a traceback; a standard output closed
by its reader (``| head``) ends the command quietly with status 141, the files it wrote kept.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings

import pandas as pd

from .cli_common import (
    RUN_ERRORS,
    TABLE_DISPLAY,
    _baseline,
    _baseline_args,
    _check_cache,
    _check_outputs,
    _fail,
    _loading,
    _loading_args,
    _positive_int,
    _probe_args,
    _probes,
    _seeds,
    _setting_and_seeds,
)
from .cli_hf import claims_main
from .cli_sweep import sensitivity_main, sweep_main
from .config import ExperimentConfig, LMConfig
from .experiment import run
from .frame import perplexity_table, summary_table, write_json


def main(argv=None) -> int:
    """The command line; returns the exit status. A closed standard output (``| head``) ends it
    quietly with status 141 (128 + SIGPIPE), with everything written before kept."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = {
        "probe": probe_main,
        "claims": claims_main,
        "sweep": sweep_main,
        "sensitivity": sensitivity_main,
    }.get(argv[0] if argv else "")
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
    ap.add_argument(
        "--json", help="also write the tidy results frame to this JSON file, with the version, date and config"
    )
    args = ap.parse_args(argv)
    seeds = _seeds(ap, args)
    if args.lm_data is not None and args.setting != "lm":
        ap.error("--lm-data needs --setting lm")
    _check_outputs(ap, files={"--csv": args.csv, "--json": args.json})
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
    if args.json:
        write_json(df, args.json, cfg.to_dict() | {"key": cfg.key()})
    print(
        f"moegeo ({cfg.setting}): {len(cfg.arms)} arms x {len(cfg.seeds)} seed(s) {list(cfg.seeds)}, {cfg.steps} steps "
        f"({time.perf_counter() - t0:.1f} s); probes at the final step, mean over experts and seeds"
    )
    if cfg.setting == "lm":
        print(
            f"data: {cfg.data or 'the shipped WikiText-2 (train on valid, hold out test)'}, sha256 {cfg.data_digest()}"
        )
    with pd.option_context(*TABLE_DISPLAY):
        print(summary_table(df))
        if cfg.setting == "lm":
            print("\nheld-out perplexity at the final step (mean over seeds):")
            print(perplexity_table(df).to_string())
    undefined = int((df["metric"] == "undefined").sum())
    if undefined:
        print(f"{undefined} undefined value(s) left out (metric 'undefined' in the frame, its reading names each)")
    for option, path in (("--csv", args.csv), ("--json", args.json)):
        if path:
            print(f"results frame written to {path} ({option[2:]})")
    return 0


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
    _loading_args(ap)
    _probe_args(ap)
    _baseline_args(ap, "its values shown beside the chance levels in PROBE.md")
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
    loading, base = _loading(ap, args), _baseline(ap, args)

    from . import hf
    from .report import probe as probe_report

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():  # one line each on stderr, without the source line of the warning
            warnings.showwarning = lambda message, *_, **__: print(f"{ap.prog}: warning: {message}", file=sys.stderr)
            df = hf.probe(
                args.hf_model,
                text_file=args.text_file,
                tokens=args.tokens,
                layers=args.layers,
                context=args.context,
                progress=False if args.quiet else None,
                **base,
                **loading,
                **_probes(ap, args),
                allow_missing=args.allow_missing,
                announce=lambda line: print(f"{ap.prog}: {line}", file=sys.stderr, flush=True),
            )
    except RUN_ERRORS as err:
        return _fail(ap.prog, err)
    dtype = hf.dtype_name(hf.load_dtype(hf.checkpoint_config(args.hf_model), args.dtype))
    source = probe_report.source_line(
        df, args.hf_model, dtype, args.text_file, args.tokens, device=args.device_map or args.device
    )
    try:
        path = probe_report.write(
            df, out, name, source, baseline_seed=base["baseline_seed"] if base["baseline"] else None
        )
    except OSError as err:
        return _fail(ap.prog, err)
    print(
        f"{ap.prog}: {df['layer'].nunique()} MoE layer(s) probed in {time.perf_counter() - t0:.1f} s. {source}\n"
        f"Report written to {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
