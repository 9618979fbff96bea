"""The tidy results frame: its schema, the reading labels, the rows that the row builders
(``moegeo.rows``) fill, a run's frame with its check that every value is finite, and the
summary tables of a frame.

The frame (columns ``setting, seed, arm, layer, expert, reading, metric, step, index, value``
plus the full config) is the single interface the claims and the report read. ``setting`` is
``mlp`` (the controlled MLP-MoE), ``lm`` (the Transformer language model) or ``hf`` (a Hugging
Face checkpoint); ``layer`` is the MoE layer (0 for the MLP setting's single layer; -1 for a
whole-model quantity such as the loss or the perplexity); ``expert = -1`` marks a quantity not
of one expert; ``index`` the position in a curve (1-based) or the partner expert of a cosine,
``-1`` for scalars.

No value in the frame is NaN or Inf. A quantity that is undefined for an expert (the explained
variance of routed points without variance, e.g. an expert with one routed token; the energy
curve of a zero Jacobian; the cosine of a zero matrix; the similarity of a single router) is
left out, and a row ``metric="undefined"``, value 1, ``reading`` naming what was left out (e.g.
``metric=explained_variance;pca_site=input``) counts it for that expert (``Rows.undefined``);
``check_finite_values`` refuses a frame that still holds one.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ._version import __version__
from .config import Arm, RunConfig

COLUMNS = ["setting", "seed", "arm", "layer", "expert", "reading", "metric", "step", "index", "value", "control"]
#: the columns that name a row (every column but ``value``): no two rows of a frame share them
KEYS = [c for c in COLUMNS if c != "value"]


def reading(**choices) -> str:
    """The reading label stored with every number, e.g. ``jacobian=mean;norm=spectral``."""
    return ";".join(f"{k}={getattr(v, 'value', v)}" for k, v in choices.items())


class Rows(list):
    """The tidy rows of one (seed, arm, layer, step) and ``control`` ("" for the trained run's
    own probes): ``add`` one metric for every listed expert."""

    def __init__(self, seed: int, arm: Arm | str, layer: int, step: int, control: str = ""):
        super().__init__()
        self.key = dict(seed=seed, arm=getattr(arm, "value", arm), layer=layer, step=step, control=control)

    def undefined(self, metric: str, reading_: str, experts) -> None:
        """Count a quantity left out because it is undefined: one row per expert in ``experts``
        (-1: not of one expert), metric ``undefined``, value 1, ``reading`` naming what was left out
        (``metric=<metric>`` and its own reading, e.g. ``metric=explained_variance;pca_site=input``)."""
        label = reading(metric=metric) + (f";{reading_}" if reading_ else "")
        for e in experts:
            self.append(dict(self.key, expert=e, reading=label, metric="undefined", index=-1, value=1.0))

    def where(self) -> str:
        """The rows' seed, arm, layer, step (and control), for a message."""
        return ", ".join(f"{k} {v}" for k, v in self.key.items() if k != "control" or v)

    def add(self, metric: str, reading_: str, values, experts=(-1,), index=None) -> None:
        """``values``: one scalar or curve per expert in ``experts`` (a curve's ``index`` is 1-based
        unless given, e.g. the partner expert of a cosine). Tensors on any device: read on the CPU."""
        values = values.detach().cpu() if torch.is_tensor(values) else torch.as_tensor(values, device="cpu")
        values = values if values.dim() > 0 else values.reshape(1)
        for e, v in zip(experts, values):
            if v.dim() == 0:
                self.append(dict(self.key, expert=e, reading=reading_, metric=metric, index=-1, value=float(v)))
            else:
                idx = index if index is not None else range(1, len(v) + 1)
                self.extend(
                    dict(self.key, expert=e, reading=reading_, metric=metric, index=int(k), value=float(val))
                    for k, val in zip(idx, v.tolist())
                )


def _frame(rows: list[dict], cfg: RunConfig) -> pd.DataFrame:
    """The tidy frame of a run's rows with its config's columns (and, for a run that reads data
    files, their ``data_digest``); ``check_finite_values`` guards it."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["setting"] = cfg.setting
    for k, v in cfg.to_dict().items():
        if k not in ("seeds", "arms", "probe_steps"):
            df[k] = v
    digest = cfg.data_digest()
    if digest is not None:
        df["data_digest"] = digest
    df["config_key"] = cfg.key()
    return check_finite_values(df)


def check_finite_values(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` itself when every ``value`` is finite; else ``ValueError`` naming the rows' metrics
    and readings. The row builders leave every undefined quantity out (``undefined`` rows count
    them), so a NaN or Inf here is a bug in a builder, never a number to write."""
    bad = df[~np.isfinite(df["value"].to_numpy(dtype=float))]
    if len(bad):
        where = bad.groupby(["metric", "reading"]).size().head(8)
        raise ValueError(
            f"{len(bad)} NaN/Inf value(s) reached the frame, in (metric, reading): "
            f"{', '.join(f'{m} [{r}] x{n}' for (m, r), n in where.items())}; a row builder must leave an "
            "undefined quantity out with an undefined row instead"
        )
    return df


def compact(df: pd.DataFrame) -> pd.DataFrame:
    """The same frame in less memory: every text column as a category, every integer column of
    the config (not ``COLUMNS``) in the smallest of int32/int64 that holds it (values unchanged). A frame already compact comes
    back as it is. A claims run holds several frames of millions of rows: as read from the cache
    they take about four times the memory."""
    change = {}
    for c in df.columns:
        dt = df[c].dtype
        if isinstance(dt, pd.CategoricalDtype):
            continue
        if pd.api.types.is_string_dtype(dt) or pd.api.types.is_object_dtype(dt):
            change[c] = "category"
        elif pd.api.types.is_integer_dtype(dt) and dt.itemsize > 4 and c not in COLUMNS:
            lo, hi = (int(df[c].min()), int(df[c].max())) if len(df) else (0, 0)
            if np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
                change[c] = "int32"
    return df.astype(change) if change else df


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Final-step scalar probes averaged over experts and seeds: rows (metric, reading), and the
    layer first when there are several (the language model, a checkpoint), columns arms (for a
    checkpoint's frame, ``moegeo.hf.probe``, its one column is the model). A frame without a
    ``steps`` column (a checkpoint's, probed once) is read at its last step."""
    last = df["steps"] if "steps" in df.columns else df["step"].max()
    final = df[(df["index"] == -1) & (df["step"] == last) & (df["expert"] >= 0)]
    final = final[~final["metric"].isin(["jacobian_norm", "load", "excluded", "subspace_excluded", "undefined"])]
    rows = (["layer"] if final["layer"].nunique() > 1 else []) + ["metric", "reading"]
    t = final.groupby(rows + ["arm"])["value"].mean().unstack("arm")
    known = [a.value for a in Arm]
    return t[[a for a in known if a in t.columns] + [a for a in t.columns if a not in known]]


def perplexity_table(df: pd.DataFrame) -> pd.Series:
    """The language model's final held-out perplexity per arm (mean over seeds), unigram included."""
    final = df[(df["metric"] == "perplexity") & (df["step"] == df["steps"])]
    return final.groupby("arm")["value"].mean()


def write_json(df: pd.DataFrame, path: str | Path, config: dict) -> Path:
    """Write the tidy frame ``df`` as JSON with its provenance: ``{"moegeo": version, "date": UTC
    ISO 8601, "config": config, "columns": [...], "rows": [[...], ...]}`` (one list per row, in
    ``columns`` order; strict JSON, so a NaN would be refused: a frame holds none,
    ``check_finite_values``)."""
    record = {
        "moegeo": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "columns": list(df.columns),
        "rows": df.to_dict("split")["data"],  # Python floats: written to round-trip exactly
    }
    path = Path(path)
    path.write_text(json.dumps(record, allow_nan=False) + "\n")
    return path
