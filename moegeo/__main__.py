"""``python -m moegeo``: train the arms of the controlled experiment and print the probe table."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import pandas as pd

from .config import ExperimentConfig
from .experiment import run, summary_table


def main(argv=None) -> int:
    defaults = ExperimentConfig()
    ap = argparse.ArgumentParser(prog="python -m moegeo", description=__doc__)
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    ap.add_argument("--seed-offset", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--steps", type=int, default=defaults.steps, help=f"training steps (default {defaults.steps})")
    ap.add_argument("--no-cache", action="store_true", help="recompute even if a cached run exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--csv", help="also write the tidy results frame to this CSV file")
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(defaults, steps=args.steps,
                              seeds=tuple(range(args.seed_offset, args.seed_offset + args.seeds)))
    t0 = time.perf_counter()
    df = run(cfg, cache=not args.no_cache, progress=False if args.quiet else None)
    print(f"moegeo: {len(cfg.arms)} arms x {len(cfg.seeds)} seed(s) {list(cfg.seeds)}, {cfg.steps} steps "
          f"({time.perf_counter() - t0:.1f} s); probes at the final step, mean over experts and seeds")
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(summary_table(df))
    if args.csv:
        df.to_csv(args.csv, index=False)
        print(f"results frame written to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
