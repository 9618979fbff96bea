"""What the commands of ``python -m moegeo`` (``moegeo.cli``) share: the setting and seed options,
the checks of output paths and of the cache made before any work, and the one-line error of a run
that cannot finish."""

from __future__ import annotations

import argparse
import os
import re
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


def _int_type(least: int, what: str, most: int | None = None):
    """An argparse type: an integer >= ``least`` (and <= ``most``); ``what`` names it in the error."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if v < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {v}")
        if most is not None and v > most:
            raise argparse.ArgumentTypeError(f"must be <= {most}, got {v}")
        return v

    return parse


#: argparse types: an integer >= 1; a seed, an integer in [0, 2^63) (torch.manual_seed's range)
_positive_int = _int_type(1, "a positive integer")
_seed = _int_type(0, "a seed (an integer >= 0)", most=2**63 - 1)


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


#: a size of ``--max-memory``: whole bytes, or a whole number and a unit that ``accelerate`` reads
#: as bytes (``8gb`` would be gigabits there)
_SIZE = re.compile(r"^\d+(KiB|MiB|GiB|KB|MB|GB)?$")


def _loading_args(ap: argparse.ArgumentParser) -> None:
    """The options of a command that loads a Hugging Face checkpoint: load dtype, probe dtype,
    device and big-model loading (``_loading`` reads them)."""
    from .hf.checkpoint import LOAD_DTYPES
    from .hf.rows import FLOAT64_MAX_D

    ap.add_argument(
        "--dtype",
        choices=LOAD_DTYPES,
        default="float64",
        help="dtype to load the checkpoint and run its forward pass in (auto: the checkpoint's own, from its "
        "config; default float64)",
    )
    ap.add_argument(
        "--probe-dtype",
        choices=("float64", "float32"),
        default=None,
        help=f"dtype of the probes' arithmetic (default: float64 for layers of width d <= {FLOAT64_MAX_D}, "
        "float32 above)",
    )
    ap.add_argument("--device", default="cpu", help="where the model and the probes run: cpu, cuda or cuda:N")
    ap.add_argument(
        "--device-map",
        choices=("auto",),
        default=None,
        help="big-model loading (transformers/accelerate): spread the model over the devices and memory "
        "--max-memory allows, the rest offloaded to --offload-folder on disk (needs accelerate)",
    )
    ap.add_argument(
        "--max-memory",
        action="append",
        default=[],
        metavar="DEVICE=SIZE",
        help="with --device-map: the memory the model may take on a device, e.g. cpu=8GiB or 0=70GiB (repeatable)",
    )
    ap.add_argument("--offload-folder", metavar="DIR", help="with --device-map: where offloaded weights go")


def _loading(ap: argparse.ArgumentParser, args) -> dict:
    """The keyword arguments of ``hf.probe`` from ``_loading_args``' options, a usage error for a
    device this machine lacks or a malformed ``--max-memory``."""
    from .validate import check_device

    try:
        check_device(args.device)
    except ValueError as err:
        ap.error(f"--device: {err}")
    if (args.max_memory or args.offload_folder) and args.device_map is None:
        ap.error("--max-memory and --offload-folder take effect with --device-map auto")
    if args.device_map is not None and args.device != "cpu":
        ap.error("--device-map auto places the model itself; leave --device at cpu")
    limits = {}
    for item in args.max_memory:
        key, sep, size = item.partition("=")
        key = key.strip()
        if not sep or not _SIZE.match(size.strip()) or not (key in ("cpu", "disk") or key.isdigit()):
            ap.error(
                f"--max-memory: expected DEVICE=SIZE (DEVICE cpu, disk or a GPU index; SIZE e.g. 8GiB), got {item!r}"
            )
        if key.isdigit():
            try:
                check_device(f"cuda:{key}")
            except ValueError as err:
                ap.error(f"--max-memory: {err}")
        limits[int(key) if key.isdigit() else key] = int(size) if size.strip().isdigit() else size.strip()
    if args.offload_folder is not None:
        _check_outputs(ap, dirs={"--offload-folder": args.offload_folder})
    return dict(
        dtype=args.dtype,
        probe_dtype=args.probe_dtype,
        device=args.device,
        device_map=args.device_map,
        max_memory=limits or None,
        offload_folder=args.offload_folder,
    )


def _probe_args(ap: argparse.ArgumentParser) -> None:
    """``--probes`` and ``--jacobian-tokens``: which probes run, and a cap on the tokens per expert
    of the per-token Jacobian probes (``_probes`` reads them)."""
    from .hf.rows import DEFAULT_PROBES, PROBES

    ap.add_argument(
        "--probes",
        default=",".join(DEFAULT_PROBES),
        metavar="LIST",
        help=f"comma-separated probe groups among {', '.join(PROBES)} (default {','.join(DEFAULT_PROBES)}): "
        "pointwise, the per-token Jacobian spectra (sigma_1 on layers too large for per-token Jacobians); "
        "spectrum, there sigma_1..sigma_10 per token (several times pointwise's cost); mean, the mean "
        "Jacobians and their cross-expert cosines; pca, the PCA and expert subspaces",
    )
    ap.add_argument(
        "--jacobian-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="on layers too large for per-token Jacobians, the per-token probes use at most the first N routed "
        "tokens of each expert (default: all)",
    )


def _probes(ap: argparse.ArgumentParser, args) -> dict:
    """``hf.probe``'s ``probes`` and ``jacobian_tokens`` from ``_probe_args``' options."""
    from .hf.rows import check_probes

    names = tuple(p.strip() for p in args.probes.split(",") if p.strip())
    try:
        check_probes(names)
    except ValueError as err:
        ap.error(f"--probes: {err}")
    return dict(probes=names, jacobian_tokens=args.jacobian_tokens)


def _baseline_args(ap: argparse.ArgumentParser, what: str) -> None:
    """``--baseline none|init`` and ``--baseline-seed``: also probe the checkpoint's architecture
    freshly initialised, for ``what``."""
    ap.add_argument(
        "--baseline",
        choices=("none", "init"),
        default="none",
        help=f"init: also probe the architecture freshly initialised (seed --baseline-seed) on the same tokens, "
        f"{what} (default none)",
    )
    ap.add_argument(
        "--baseline-seed", type=_seed, default=None, help="with --baseline init: the initialisation's seed (default 0)"
    )


def _baseline(ap: argparse.ArgumentParser, args) -> dict:
    """``hf.probe``'s ``baseline`` and ``baseline_seed`` from ``_baseline_args``' options (a usage
    error for a seed without ``--baseline init``)."""
    if args.baseline != "init":
        if args.baseline_seed is not None:
            ap.error("--baseline-seed takes effect with --baseline init")
        return dict(baseline=None, baseline_seed=0)
    return dict(baseline="init", baseline_seed=0 if args.baseline_seed is None else args.baseline_seed)
