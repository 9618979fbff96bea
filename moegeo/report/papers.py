"""The text of REPORT.md written by ``pytest claims/``: what replicates and why not, per paper, on
the first screen; then each paper's verdicts with their parts, controls, power and tipping
points; the power per family; the sensitivity readings in summary (every reading in
``results/verdicts.csv``); the declarations; the figures with their captions."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import stats
from ..claims import CONTROLS, PAPERS, claim_power, geometric_asymmetry, part_summary, tipping_shift
from ..claims.engine import declarations_digest, frozen
from ..config import Arm
from .figures import CAPTIONS, make_figures
from .markdown import (
    BENCHMARK_MARKERS,
    SENSITIVITY_MARKERS,
    VERDICT_MARKERS,
    _cpu,
    _fmt,
    _git_revision,
    _versions,
    existing_section,
    splice,
    write_atomic,
)

V = stats.Verdict
#: how the headline groups verdicts, in its order
HEADLINE = (
    ("replicated", (V.REPLICATED.value,)),
    ("consistent in size", (V.CONSISTENT.value,)),
    ("contradicted", (V.CONTRADICTED.value, V.DIFFERENT_SIZE.value, V.NOT_BORNE_OUT.value)),
    ("depends on the definition", (V.DEPENDS_ON_DEFINITION.value,)),
    ("by construction (a control reaches the same call)", (V.BY_CONSTRUCTION.value,)),
    ("in the claimed direction, size undetermined", (V.CLAIMED_SIGN.value,)),
    ("against the claim, size undetermined", (V.OPPOSITE_SIGN.value,)),
    ("negligible", (V.NEGLIGIBLE.value,)),
    ("premise not met", (V.CONDITION_NOT_MET.value,)),
    ("not decided", (V.NOT_REPLICATED.value, V.TOO_FEW_SEEDS.value)),
)
UNDECIDED = (V.NOT_REPLICATED.value, V.TOO_FEW_SEEDS.value)
POWER_TARGET = 0.8


# --------------------------------------------------------------------------- decorations of the primary rows
def annotate(verdicts: pd.DataFrame, claims: dict) -> pd.DataFrame:
    """The primary rows with their power (``power``, ``power_how``) and, where the threshold is
    moegeo's, its tipping point (``tipping``: text)."""
    prim = verdicts[verdicts.primary].copy()
    prim["power"], prim["power_how"], prim["tipping"] = np.nan, "", ""
    for i, row in prim.iterrows():
        c = claims[row.claim]
        if c.kind == "direction":
            prim.at[i, "power"], prim.at[i, "power_how"] = claim_power(row, c)
        if c.threshold_declared:
            tip = tipping_shift(verdicts, i)
            prim.at[i, "tipping"] = _tipping_text(tip, c, row)
    return prim


def _tipping_text(tip, c, row) -> str:
    if tip is None:
        return "no shift of the threshold within the data's range changes the verdict"
    shift, to = tip
    if c.kind == "magnitude":
        return f"the paper's value moved by {-shift:+.3g} (on the test's scale) would make it {to}"
    where = (
        f" (threshold {c.threshold_value - c.threshold_sign * shift:.4g} instead of {c.threshold_value:.4g})"
        if c.threshold_value is not None
        else ""
    )
    return f"{to} if the threshold moved by {-c.threshold_sign * shift:+.3g}{where}"


# --------------------------------------------------------------------------- cells
def _parts_cell(row, c) -> str:
    """Each part's verdict, median [exact CI] and seeds in the claimed direction."""
    out = []
    for p in part_summary(row, c):
        label = f"`{p['label']}` " if len(row.parts) > 1 else ""
        verdict = f"{p['verdict']}: " if len(row.parts) > 1 else ""
        out.append(
            f"{label}{verdict}{_fmt(p['effect'])} [{_fmt(p['ci_low'])}, {_fmt(p['ci_high'])}], "
            f"{p['n_claimed']}/{p['n']}"
        )
    return "<br>".join(out)


def _controls_cell(row, c) -> str:
    """Per declared control: its verdict and the trained-minus-control median of each part."""
    out = []
    for name in CONTROLS:
        v, deltas = getattr(row, f"control_{name}"), getattr(row, f"delta_{name}")
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        d = "; ".join(f"{_fmt(x['effect'])} [{_fmt(x['ci_low'])}, {_fmt(x['ci_high'])}]" for x in deltas)
        out.append(f"{name}: {v}, Δ {d}")
    if not out:
        return c.control_note or "—"
    return "<br>".join(out)


def _extra_cell(row) -> str:
    bits = []
    if row.verdict in UNDECIDED and not np.isnan(row.power):
        bits.append(f"power {row.power:.2f} ({row.power_how})")
    if row.tipping:
        bits.append(f"tipping point: {row.tipping}")
    return "; ".join(bits) or "—"


def verdict_table(prim: pd.DataFrame, claims: dict, live: dict | None = None) -> list[str]:
    """The table of primary verdicts: one row per claim (the one row format of the report)."""
    out = [
        "| claim | verdict | statistic: median [exact CI], seeds in the claimed direction (per part) | controls: "
        "verdict, Δ = trained − control | power, tipping point |",
        "|---|---|---|---|---|",
    ]
    for row in prim.itertuples():
        c = claims[row.claim]
        flags = "".join(f" ({f})" for f, on in (("hedged", c.hedged), ("non-diagnostic", not c.diagnostic)) if on)
        raw = f" ({row.raw_verdict.lower()})" if row.verdict == V.BY_CONSTRUCTION.value else ""
        live_cell = f"<br>live experts: {live[row.claim]}" if live and row.claim in live else ""
        out.append(
            f"| **{c.id}** {c.title}{flags} | **{row.verdict}**{raw} | {c.statistic}:<br>{_parts_cell(row, c)}"
            f"{live_cell} | {_controls_cell(row, c)} | {_extra_cell(row)} |"
        )
    return out


# --------------------------------------------------------------------------- the first screen
def headline(prim: pd.DataFrame, claims: dict, module) -> list[str]:
    """One paper's verdicts in plain words, grouped by what was measured."""
    own = prim[prim.claim.map(lambda i: claims[i].paper == module.PAPER and not claims[i].generalises)]
    gen = prim[prim.claim.map(lambda i: claims[i].paper == module.PAPER and bool(claims[i].generalises))]
    out = [
        f"**{module.TITLE}**: {len(own)} claims on {own.claim.map(lambda i: claims[i].measures).nunique()} "
        "measurements."
    ]
    for label, kinds in HEADLINE:
        sel = own[own.verdict.isin(kinds)]
        if len(sel):
            groups = {}
            for row in sel.itertuples():
                groups.setdefault(claims[row.claim].measures, []).append(row.claim)
            out.append(f"- {label}: " + "; ".join(f"{m}: {', '.join(ids)}" for m, ids in groups.items()) + ".")
    declared = own[own.claim.map(lambda i: claims[i].threshold_declared)]
    if len(declared):
        out.append(
            f"- decided by a threshold moegeo declared (tipping points in its section): {', '.join(declared.claim)}."
        )
    weak = own[own.verdict.isin(UNDECIDED) & (own.power < POWER_TARGET)]
    if len(weak):
        out.append(f"- underpowered (power below {POWER_TARGET} where undecided): {', '.join(weak.claim)}.")
    if len(gen):
        counts = gen.verdict.value_counts()
        out.append(
            "- re-tested in another setting (generalisation tests, their own family): "
            + ", ".join(f"{n} {k.lower()}" for k, n in counts.items())
            + "."
        )
    return out


# --------------------------------------------------------------------------- power per family
def power_table(prim: pd.DataFrame, claims: dict) -> list[str]:
    """Per primary family: seeds, hypotheses, the power of its reference claim at the paper's
    effect (or when 90% of seeds agree), and the seeds that would give 0.8."""
    out = [
        "| family | seeds | hypotheses M | reference claim | power | seeds for power 0.8 |",
        "|---|---|---|---|---|---|",
    ]
    for fam, g in prim.groupby("family", sort=False):
        ref = next(
            (r for r in g.itertuples() if claims[r.claim].paper_effect is not None and not np.isnan(r.power)), None
        )
        ref = ref or next((r for r in g.itertuples() if not np.isnan(r.power)), None)
        if ref is None:
            continue
        c = claims[ref.claim]
        need = _seeds_for(ref, c)
        out.append(
            f"| `{fam}` | {int(g.n.min())}-{int(g.n.max())} | {int(g.M.iloc[0])} | {ref.claim} ({ref.power_how}) | "
            f"{ref.power:.2f} | {need} |"
        )
    return out


def _seeds_for(row, c) -> str:
    """The fewest seeds with power 0.8 for the same effect and family size."""
    for n in range(4, 201):
        probe = row._replace(n=n)
        if claim_power(probe, c)[0] >= POWER_TARGET:
            return str(n)
    return "> 200"


# --------------------------------------------------------------------------- the sensitivity readings
def sensitivity_summary(verdicts: pd.DataFrame, prim: pd.DataFrame) -> list[str]:
    """Per claim: in how many of its other readings and checkpoints the median has the primary's
    sign, and how many of them are significant each way."""
    out = [
        "| claim | same sign as the primary | claimed call (REPLICATED or CLAIMED SIGN) | against (CONTRADICTED or "
        "OPPOSITE SIGN) | effect range |",
        "|---|---|---|---|---|",
    ]
    sens = verdicts[~verdicts.primary]
    for row in prim.itertuples():
        s = sens[sens.claim == row.claim]
        if s.empty:
            continue
        same = int((np.sign(s.effect) == np.sign(row.effect)).sum())
        pro = int(s.verdict.isin([V.REPLICATED.value, V.CLAIMED_SIGN.value]).sum())
        con = int(s.verdict.isin([V.CONTRADICTED.value, V.OPPOSITE_SIGN.value, V.NOT_BORNE_OUT.value]).sum())
        out.append(
            f"| {row.claim} | {same} of {len(s)} | {pro} | {con} | {_fmt(s.effect.min())} to {_fmt(s.effect.max())} |"
        )
    return out


def write_tables(verdicts: pd.DataFrame, directory: Path) -> Path:
    """Every reading's verdict as a CSV (the full table REPORT.md summarises): ``verdicts.csv``."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_atomic(directory / "verdicts.csv", verdict_csv(verdicts))


def verdict_csv(verdicts: pd.DataFrame, controls: tuple[str, ...] = ()) -> str:
    """The CSV text of every reading's verdict (``evaluate``'s rows): claim, reading, family,
    effect, CI, adjusted p, the verdicts and the message, and for each of ``controls`` (e.g.
    ``("init",)``) its verdict and the effect minus the control's; '' for no rows."""
    if verdicts.empty:
        return ""
    cols = [
        "claim",
        "paper",
        "reading",
        "primary",
        "family",
        "n",
        "M",
        "effect",
        "ci_low",
        "ci_high",
        "p_adj",
        "raw_verdict",
        "verdict",
        *(f"{kind}_{c}" for c in controls for kind in ("control", "delta")),
        "part_labels",
        "medians",
        "condition",
        "message",
    ]
    table = verdicts[cols].copy()
    table["part_verdicts"] = [";".join(p.verdict.value for p in d.parts) for d in verdicts.decision]
    return table.to_csv(index=False)


# --------------------------------------------------------------------------- extra tables per setting
def _live_experts(frames: dict) -> str:
    """The language model's live experts at the final step (of every layer and seed), per MoE arm."""
    df = frames.get("lm")
    if df is None:
        return ""
    final = df[(df.step == df.steps) & (df.control == "")]
    total = final.seed.nunique() * int(df.n_experts.iloc[0]) * int(df.n_layers.iloc[0])
    dead = final[final.metric == "excluded"].groupby("arm").size()
    return ", ".join(
        f"{arm} {total - int(dead.get(arm, 0))}/{total}" for arm in ("topk", "soft") if arm in set(final.arm)
    )


def lm_table(frames: dict) -> list[str]:
    """The language model's held-out perplexity against the unigram model, and its dead experts."""
    df = frames.get("lm")
    if df is None:
        return []
    final = int(df.steps.iloc[0])
    ppl = df[(df.metric == "perplexity") & (df.step == final) & (df.control == "")]
    unigram = float(ppl[ppl.arm == "unigram"].value.median())
    out = [
        "",
        f"Language model (3 layers, d_model {int(df.d_model.iloc[0])}, {final} steps on the shipped WikiText-2): "
        f"held-out perplexity, median over seeds [10%, 90%], against the unigram model's {unigram:.1f}:",
        "",
        "| arm | perplexity | seeds below unigram | live experts at the final step |",
        "|---|---|---|---|",
    ]
    dead = df[(df.metric == "excluded") & (df.step == final) & (df.control == "")].groupby("arm").size()
    for arm in [a.value for a in Arm if a.value in set(ppl.arm)]:
        v = ppl[ppl.arm == arm].groupby("seed").value.mean()
        total = len(v) * int(df.n_experts.iloc[0]) * int(df.n_layers.iloc[0])
        live = f"{total - int(dead.get(arm, 0))}/{total}" if Arm(arm).is_moe else "—"
        out.append(
            f"| {arm} | {v.median():.1f} [{v.quantile(0.1):.1f}, {v.quantile(0.9):.1f}] | "
            f"{int((v < unigram).sum())}/{len(v)} | {live} |"
        )
    return out


# --------------------------------------------------------------------------- the document
def header(configs: dict, wall_time: float, timings: dict | None, peak_gib: float | None) -> list[str]:
    fz = frozen()
    digest = declarations_digest()
    state = (
        (
            "frozen on "
            + fz["date"]
            + (
                ", unchanged since"
                if fz["digest"] == digest
                else f", CHANGED since (frozen digest {fz['digest'][:16]})"
            )
        )
        if fz
        else "not frozen"
    )
    seeds = {name: f"{cfg.seeds[0]}-{cfg.seeds[-1]}" for name, cfg in configs.items()}
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; git revision "
        f"{_git_revision()}; {_versions()}; CPU: {_cpu()}",
        f"- declarations (claims modules and engine) digest `{digest[:16]}`: {state}",
        "- seeds: "
        + ", ".join(f"{k} {v}" for k, v in seeds.items())
        + (
            f" (the confirmatory range; {fz['exploratory']} was explored while the declarations were written)"
            if fz
            else ""
        ),
        f"- wall time {wall_time:.0f} s"
        + (" (per config: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")" if timings else "")
        + (f"; peak resident memory {peak_gib:.2f} GiB" if peak_gib is not None else ""),
    ]
    lines += ["", "<details><summary>configurations</summary>", ""]
    lines += [f"- `{name}` (key {cfg.key()}): `{cfg.to_dict()}`" for name, cfg in configs.items()]
    lines += ["", "</details>"]
    return lines


LEGEND = (
    "Verdicts (one Holm family per paper over every hypothesis of every part of every primary reading; "
    "`moegeo/stats.py`): REPLICATED, the median beyond the smallest meaningful effect in the claimed direction; "
    "CONTRADICTED, beyond it the other way; NEGLIGIBLE, significantly inside it; CLAIMED / OPPOSITE SIGN, SIZE "
    "UNDETERMINED, significant in direction only; DEPENDS ON DEFINITION, parts of a joint reading significant in "
    "opposite directions; CONSISTENT / DIFFERENT SIZE, the paper's single-seed value inside / outside our seeds' "
    "prediction interval; NOT BORNE OUT, a hedged expectation found against; BY CONSTRUCTION, a declared control "
    "(the arms at initialisation, the routing permuted across inputs, the router at initialisation) reaches the "
    "same call, so the claim says nothing about training or routing; NOT REPLICATED, TOO FEW SEEDS, CONDITION NOT "
    "MET. Δ is the trained-minus-control median over seeds, paired by seed, with its exact CI."
)


def render(
    verdicts: pd.DataFrame,
    configs: dict,
    wall_time: float,
    figures: dict[str, Path],
    report_path: Path,
    timings: dict | None = None,
    peak_gib: float | None = None,
    frames: dict | None = None,
    tables: Path | None = None,
) -> str:
    """The Markdown of REPORT.md (module docstring)."""
    frames = frames or {}
    claims = {c.id: c for m in PAPERS for c in m.CLAIMS} | {c.id: c for c in geometric_asymmetry.PRETRAINED_CLAIMS}
    prim = annotate(verdicts, claims)
    rel = lambda p: os.path.relpath(p, report_path.parent)  # noqa: E731
    lines = [
        "# moegeo replication report",
        "",
        "Generated by `pytest claims/`; do not edit by hand.",
        "",
        "## What replicates, and why not",
        "",
        VERDICT_MARKERS[0],
    ]
    for module in PAPERS:
        if (prim.paper == module.PAPER).any():
            lines += headline(prim, claims, module) + [""]
    lines += [
        "Power per family, at Holm's worst case (every other hypothesis of the family null); the noise of a "
        "paper's effect is the seed spread of the claim's reference arm, never of the effect itself "
        "(`moegeo.claims.claim_power`):",
        "",
    ]
    lines += power_table(prim, claims) + ["", VERDICT_MARKERS[1], ""]
    lines += [LEGEND, ""] + header(configs, wall_time, timings, peak_gib)
    live = _live_experts(frames)
    for module in PAPERS:
        mine = prim[prim.paper == module.PAPER]
        if mine.empty:
            continue
        own = mine[~mine.claim.map(lambda i: bool(claims[i].generalises))]
        gen = mine[mine.claim.map(lambda i: bool(claims[i].generalises))]
        lm_live = {r.claim: live for r in mine.itertuples() if claims[r.claim].frame == "lm" and live}
        lines += [
            "",
            f"## {module.TITLE}",
            "",
            module.INTRO,
            "",
            f"Family `{own.family.iloc[0]}`: M = {int(own.M.iloc[0])} hypotheses.",
            "",
        ]
        lines += verdict_table(own, claims, lm_live)
        if module.PAPER == "dual_jacobian_pca":
            lines += lm_table(frames)
        if len(gen):
            lines += ["", f"Generalisation tests (family `{gen.family.iloc[0]}`, M = {int(gen.M.iloc[0])}):", ""]
            lines += verdict_table(gen, claims, lm_live)
        pre = verdicts[verdicts.paper == geometric_asymmetry.PRETRAINED_PAPER]
        if module is geometric_asymmetry:
            lines += [
                "",
                "On a pretrained checkpoint: "
                + (
                    "below."
                    if len(pre)
                    else "**not run**: needs a local checkpoint (`pytest claims/ --hf-model DIR`, or `moegeo claims "
                    "--hf-model DIR` alone)."
                ),
            ]
            if len(pre):
                lines += verdict_table(annotate(pre, claims), claims)
        lines += _figures(figures, module.FIGURES, rel)
    lines += [
        "",
        "## Sensitivity readings",
        "",
        "Every other reading and checkpoint of every claim, corrected in its own family per paper, setting and "
        "seed count (Tarone's rule drops what cannot reach significance). Robustness as agreement of sign: "
        + (f"every reading's verdict is in `{rel(tables)}`." if tables else ""),
        "",
    ]
    lines += sensitivity_summary(verdicts, prim)
    lines += _figures(figures, ("claims_",), rel)
    lines += [
        "",
        "## Declarations",
        "",
        "<details><summary>every claim: quote, statistic, rule, primary reading, controls and revisions</summary>",
        "",
    ]
    for module in PAPERS:
        for c in module.CLAIMS:
            if c.generalises:
                continue
            lines.append(
                f'- **{c.id}** ({c.source}): "{c.quote}". Statistic: {c.statistic}. Threshold: {c.threshold}. '
                f"Rule: {c.rule()}. Primary: {c.primary_because}. Controls: "
                f"{', '.join(c.controls) or 'none'}{'; ' + c.control_note if c.control_note else ''}."
                + (f" Note: {c.note}." if c.note else "")
                + "".join(f" Revision: {r}." for r in c.revisions)
            )
    lines += ["", "</details>", "", "<details><summary>statements not tested, and why</summary>", ""]
    for module in PAPERS:
        lines += [f"- {module.SHORT}: {what}: {why}." for what, why in module.UNTESTED]
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _figures(figures: dict, prefixes: tuple, rel) -> list[str]:
    out = []
    for name, path in figures.items():
        if name.startswith(tuple(prefixes)):
            out += ["", f"![{name}]({rel(path)})", "", f"*{CAPTIONS.get(name, name)}*"]
    return out


#: the sections other commands write, until they have run on this version
NO_SENSITIVITY = (
    "## Where each claim holds (sensitivity grid)\n\n**Not run for this version**: `moegeo sensitivity small` "
    "(or `full`) writes this section."
)
NO_BENCHMARKS = (
    "## Benchmarks\n\n**Not run for this version**: `pytest --benchmark-only` writes this section. "
    "GPU rows: not run: no GPU in this session."
)


def write_report(
    path: Path,
    frames: dict,
    verdicts: pd.DataFrame,
    configs: dict,
    wall_time: float,
    timings: dict | None = None,
    peak_gib: float | None = None,
) -> Path:
    """Figures into ``<report dir>/figures/``, every reading into ``<report dir>/results/``, then
    the Markdown, written atomically; the benchmark and sensitivity sections of an existing report
    are kept. A ``REPORT.md`` beside a ``README.md`` with the verdict markers also rewrites that
    README's verdict block (``VERDICT_MARKERS``) with the report's."""
    path = Path(path)
    suffix = "" if path.stem == "REPORT" else f"-{path.stem}"
    figures = make_figures(frames, path.parent / f"figures{suffix}", verdicts)
    tables = write_tables(verdicts, path.parent / f"results{suffix}")
    text = render(verdicts, configs, wall_time, figures, path, timings, peak_gib, frames, tables)
    old = path.read_text() if path.exists() else ""
    for markers, missing in ((SENSITIVITY_MARKERS, NO_SENSITIVITY), (BENCHMARK_MARKERS, NO_BENCHMARKS)):
        section = existing_section(old, markers) or f"{markers[0]}\n{missing}\n{markers[1]}\n"
        text = text + "\n" + section
    written = write_atomic(path, text)
    readme = path.parent / "README.md"
    if path.name == "REPORT.md" and readme.is_file() and VERDICT_MARKERS[0] in readme.read_text():
        write_atomic(readme, splice(readme.read_text(), existing_section(text, VERDICT_MARKERS), VERDICT_MARKERS))
    return written
