"""Writing REPORT.md: its sections between markers, atomic writes, the run's provenance and the
number and table formats every section shares."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .._version import __version__

#: the sections of REPORT.md that other commands own: ``pytest --benchmark-only`` and the sensitivity grid
BENCHMARK_MARKERS = ("<!-- benchmarks:begin -->", "<!-- benchmarks:end -->")
SENSITIVITY_MARKERS = ("<!-- sensitivity:begin -->", "<!-- sensitivity:end -->")
#: the grouped verdicts per paper: written into REPORT.md and copied into README.md by the same run
VERDICT_MARKERS = ("<!-- verdicts:begin -->", "<!-- verdicts:end -->")


def splice(existing: str, section: str, markers: tuple[str, str] = BENCHMARK_MARKERS) -> str:
    """Replace (or append) the section of a report between ``markers`` (default: the benchmark
    section's), leaving the rest of the report as it is."""
    begin, end = markers
    if begin in existing and end in existing:
        head, rest = existing.split(begin, 1)
        return head + section.rstrip("\n") + rest.split(end, 1)[1]
    return existing.rstrip("\n") + "\n\n" + section


def existing_section(text: str, markers: tuple[str, str] = BENCHMARK_MARKERS) -> str:
    """The section of a report between ``markers`` (default: the benchmark section's), or ''."""
    begin, end = markers
    if begin in text and end in text:
        return begin + text.split(begin, 1)[1].split(end, 1)[0] + end + "\n"
    return ""


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: to a temporary file beside it, renamed into place.
    A symbolic link is followed (its target is rewritten, the link kept), an existing file keeps
    its mode, and a new one gets the mode of an ordinary file under the umask. Returns the path
    written (the link's target)."""
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        # the report's own outputs (REPORT*.md, figures*/) are being rewritten by this very run
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!REPORT*.md", ":!figures*"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> str:
    import matplotlib
    import scipy
    import torch

    return (
        f"moegeo {__version__}, Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, pandas {pd.__version__}, matplotlib {matplotlib.__version__}"
    )


def _cpu() -> str:
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}; {os.cpu_count()} logical CPUs; torch threads {torch.get_num_threads()}"


def _seed_range(n: pd.Series) -> str:
    """'10' or '10-12': the numbers of seeds behind a set of tests."""
    lo, hi = int(n.min()), int(n.max())
    return str(hi) if lo == hi else f"{lo}-{hi}"


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3g}"


def _tally(v: pd.DataFrame) -> str:
    return ", ".join(f"{n} {k}" for k, n in v.verdict.value_counts().items())


def _verdict_table(prim: pd.DataFrame, by_id: dict) -> list[str]:
    out = [
        "| claim | the paper says | primary reading | statistic: median [exact CI] | seeds | rule | Holm p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in prim.itertuples():
        c = by_id[row.claim]
        out.append(
            f'| {c.id} {c.title} | "{c.quote}" ({c.source}) | `{row.reading}` | {c.statistic}: {_fmt(row.effect)} '
            f"[{_fmt(row.ci_low)}, {_fmt(row.ci_high)}] | {row.n_claimed}/{row.n} | {c.rule()} | "
            f"{_fmt(min(row.p_adj, row.p_opposite_adj))} | **{row.verdict}** |"
        )
    return out
