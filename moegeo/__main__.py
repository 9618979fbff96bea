"""``python -m moegeo``: train the arms of one setting and print the probe table.

``--setting mlp`` (default): the controlled MLP-MoE of the paper's Appendix B. ``--setting lm``:
the 3-layer Transformer language model on the shipped WikiText-2 (or ``--lm-data DIR``), probed
layer by layer, with its held-out perplexity against the unigram model.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import pandas as pd

from .config import ExperimentConfig, LMConfig
from .experiment import perplexity_table, run, summary_table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moegeo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=("mlp", "lm"), default="mlp",
                    help="mlp: the controlled MLP-MoE (default); lm: the Transformer language model on WikiText-2")
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    ap.add_argument("--seed-offset", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"training steps (default {ExperimentConfig().steps} for mlp, {LMConfig().steps} for lm)")
    ap.add_argument("--lm-data", default=None, help="lm: a directory with the full WikiText-2 (default: the shipped copy)")
    ap.add_argument("--no-cache", action="store_true", help="recompute even if a cached run exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--csv", help="also write the tidy results frame to this CSV file")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    seeds = tuple(range(args.seed_offset, args.seed_offset + args.seeds))
    try:
        if args.setting == "lm":
            cfg = LMConfig(seeds=seeds, data=args.lm_data, **({"steps": args.steps} if args.steps else {}))
        else:
            if args.lm_data:
                ap.error("--lm-data needs --setting lm")
            cfg = dataclasses.replace(ExperimentConfig(), seeds=seeds, **({"steps": args.steps} if args.steps else {}))
    except ValueError as err:
        ap.error(str(err))
    t0 = time.perf_counter()
    df = run(cfg, cache=not args.no_cache, progress=False if args.quiet else None)
    print(f"moegeo ({cfg.setting}): {len(cfg.arms)} arms x {len(cfg.seeds)} seed(s) {list(cfg.seeds)}, {cfg.steps} steps "
          f"({time.perf_counter() - t0:.1f} s); probes at the final step, mean over experts and seeds")
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.4g}".format):
        print(summary_table(df))
        if cfg.setting == "lm":
            print("\nheld-out perplexity at the final step (mean over seeds):")
            print(perplexity_table(df).to_string())
    if args.csv:
        df.to_csv(args.csv, index=False)
        print(f"results frame written to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
