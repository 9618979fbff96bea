"""A decided claim in words and numbers: per part its verdict, median, exact CI and seed counts
(``part_summary``), and the whole row as one sentence (``message``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .. import stats

if TYPE_CHECKING:
    from .engine import Claim


def part_summary(row, c: Claim) -> list[dict]:
    """Per part of a decided row: its label, verdict, median and exact CI, seeds pointing the
    claimed way (and beyond the smallest effect), and the adjusted p of its hypotheses."""
    out = []
    varying = _varying(row.part_labels)
    show = np.exp if c.kind == "magnitude" and c.scale == "log" else (lambda v: v)  # a ratio shown as a ratio
    for label, part, d in zip(row.part_labels, row.parts, row.decision.parts):
        ci = stats.median_ci(part.x)
        x = part.x
        out.append(
            dict(
                label=varying(label),
                verdict=d.verdict.value,
                effect=float(show(np.median(x))),
                ci_low=float(show(ci.low)),
                ci_high=float(show(ci.high)),
                coverage=ci.coverage,
                n=len(x),
                n_claimed=int(((np.abs(x) if c.two_sided else x) > 0).sum()),
                n_beyond=int(((np.abs(x) if c.two_sided else x) > c.smallest_effect).sum()),
                p_adj=d.p_adj,
            )
        )
    return out


def _varying(labels: list[str]) -> Callable[[str], str]:
    """A label shortener: only the reading axes on which a joint reading's parts differ."""
    split = [dict(kv.split("=", 1) for kv in label.split(";") if kv) for label in labels]
    keys = [k for k in split[0] if len({s.get(k) for s in split}) > 1] if len(split) > 1 else []
    return lambda label: ";".join(kv for kv in label.split(";") if kv.split("=", 1)[0] in keys)


def message(row, c: Claim, alpha: float = stats.ALPHA) -> str:
    """The verdict of a decided row in words and numbers."""
    parts = part_summary(row, c)
    text = f"{c.id} {c.title} ({row.reading}): {row.verdict}. {c.statistic}"
    for p in parts:
        where = f" [{p['label']}]" if len(parts) > 1 else ""
        text += (
            f"{where}: median {p['effect']:.4g}, exact {100 * p['coverage']:.1f}% CI [{p['ci_low']:.4g}, "
            f"{p['ci_high']:.4g}], {p['n_claimed']}/{p['n']} seeds in the claimed direction"
            + (f" ({p['n_beyond']}/{p['n']} beyond {c.smallest_effect:.4g})" if c.smallest_effect else "")
            + (f", {p['verdict']}" if len(parts) > 1 else "")
        )
    text += (
        f". Rule: {c.rule()}; Holm over the {row.M} hypotheses of family {row.family} at alpha = {alpha:g} "
        f"(adjusted p {row.p_adj:.3g})"
    )
    if row.verdict == stats.Verdict.TOO_FEW_SEEDS.value:
        text += f"; with {row.n} seeds the smallest possible p is 2^-{row.n} = {stats.min_p(row.n):.3g} > alpha/M"
    if row.verdict == stats.Verdict.CONDITION_NOT_MET.value:
        text += f"; premise not met: {row.condition}"
    elif row.condition:
        text += f"; premise: {row.condition}"
    return text
