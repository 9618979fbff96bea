"""What the commands of ``python -m moegeo`` (``moegeo.cli``) share: the setting and seed options,
the checks of output paths and of the cache made before any work, and the one-line error of a run
that cannot finish."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .cache import cache_dir

#: pandas display options of every table a command prints: all rows and columns, 4 digits
TABLE_DISPLAY = (
    "display.max_rows",
    None,
    "display.max_columns",
    None,
    "display.width",
    200,
    "display.float_format",
    "{:.4g}".format,
)


def _positive_int(s: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


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
