"""Reading a claims run's frames: the trained results and their declared controls (``Results``),
and the per-seed observations a claim's statistic returns (``Observation``, ``pair``, ``single``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..frame import compact

#: the declared controls (``Results.control``), in the order the report shows them
CONTROLS = {
    "init": "the same arms at initialisation (step 0), probed exactly as the trained ones",
    "permuted": "each expert's routing weights shuffled across the inputs (its weight distribution kept, the "
    "input-routing association removed), on the trained model",
    "router_init": "the trained experts with the routing weights of the router at initialisation",
}


#: the controls of a statistic of the routed inputs (which inputs each expert sees, with what weight)
ROUTED = tuple(CONTROLS)
#: the ``router`` reading of a setting's Top-k arm: the arm of another frame trained with that router
ROUTER_ARMS = {"aux_loss": {"topk": ("routers", "topk_aux")}}


# --------------------------------------------------------------------------- reading the frames
class Results:
    """The results frames of one claims run, indexed for fast per-seed lookups.

    ``frames``: name -> tidy frame of ``moegeo.experiment.run`` (e.g. "main", "hot"). Rows of a
    control (``control`` column not empty) are set aside for ``control``; the rest are the
    trained runs the claims read.
    """

    KEYS = ["arm", "layer", "metric", "reading", "step", "index", "seed"]

    def __init__(self, frames: dict[str, pd.DataFrame]):
        frames = {name: compact(df) for name, df in frames.items()}  # labels as categories: fast tests, less memory
        self._controls = {name: df[df.control != ""] for name, df in frames.items() if "control" in df}
        self.frames = {name: df[df.control == ""] if "control" in df else df for name, df in frames.items()}
        # the expert mean of every metric, one row per (arm, layer, metric, reading, step, index), seeds as columns
        self._means = {
            name: df.groupby(self.KEYS, sort=True, observed=True)["value"].mean().unstack("seed")
            for name, df in self.frames.items()
        }
        self._pairs = {}
        self._checkpoints = {
            name: sorted({s for s in df.step[df.metric == "sigma1"] if s > 0}, reverse=True)
            for name, df in self.frames.items()
        }
        self._views = {}

    def control(self, name: str) -> Results:
        """The results as a declared control sees them (``CONTROLS``): ``init``, every frame's
        step-0 rows standing at each of its checkpoints; ``permuted`` and ``router_init``, the
        control's probe rows in place of the trained ones of the same arm, step and metric (a
        dense arm, without routing, keeps its own). A frame without the control's rows is left
        out, so a claim that reads it has no such control."""
        if name not in CONTROLS:
            raise ValueError(f"unknown control {name!r}; the controls are {', '.join(CONTROLS)}")
        out = {}
        for frame, df in self.frames.items():
            if name == "init":
                base = df[(df.step == 0) & (df.metric == "sigma1")]
                if base.empty or not (df.step > 0).any():
                    continue
                base = df[df.step == 0]
                steps = sorted(set(df.step[df.metric == "sigma1"]) | {int(df.steps.iloc[0])})
                out[frame] = pd.concat(
                    [df[df.step == 0]] + [base.assign(step=s) for s in steps if s > 0], ignore_index=True
                )
                continue
            c = self._controls.get(frame, df.iloc[:0])
            c = c[c.control == name]
            if c.empty:
                continue
            cols = ["arm", "step", "metric"]
            covered = pd.MultiIndex.from_frame(c[cols].drop_duplicates())
            keep = ~pd.MultiIndex.from_frame(df[cols]).isin(covered)
            out[frame] = pd.concat([df[keep], c.assign(control="")], ignore_index=True)
        return Results(out)

    def view(self, frame: str, layer: int | str = "pooled", router: str = "learned") -> Results:
        """The results of a multi-layer setting (e.g. ``"lm"``) as a one-layer ``main`` frame, so
        every claim of the MLP setting reads it unchanged: one MoE ``layer``, or ``"pooled"``:
        every layer's experts as one population (a per-seed expert mean becomes the mean over
        all experts of all layers; cosines stay within a layer and every layer's pairs pool).
        ``router``: read the Top-k arm as trained with another router (``ROUTER_ARMS``)."""
        if (frame, layer, router) not in self._views:
            df = self.frames[frame]
            if router != "learned":
                ((arm, (other, there)),) = ROUTER_ARMS[router].items()
                if other not in self.frames:
                    raise LookupError(f"router={router} reads frame {other!r}, which this run does not have")
                sub = self.frames[other]
                df = pd.concat([df[df.arm != arm], sub[sub.arm == there].assign(arm=arm)], ignore_index=True)
            df = df[df.layer >= 0] if layer == "pooled" else df[df.layer == int(layer)]
            if df.empty:
                raise LookupError(f"frame {frame!r} has no rows for layer {layer!r}")
            self._views[frame, layer, router] = Results({"main": df.assign(layer=0)})
        return self._views[frame, layer, router]

    def final_step(self, frame: str = "main") -> int:
        return int(self.frames[frame].steps.iloc[0])

    def checkpoints(self, frame: str = "main") -> list[int]:
        """Steps after 0 with full probes (``sigma1`` rows), final first."""
        return self._checkpoints[frame]

    def per_seed(
        self,
        arm: str,
        metric: str,
        reading: str = "",
        step: int | None = None,
        index: int = -1,
        layer: int = 0,
        frame: str = "main",
    ) -> pd.Series:
        """A metric of one arm per seed, averaged over experts, at ``step`` (default final)."""
        step = self.final_step(frame) if step is None else step
        try:
            return self._means[frame].loc[(arm, layer, metric, reading, step, index)].dropna().rename_axis("seed")
        except KeyError:
            raise LookupError(
                f"no rows in frame {frame!r} for arm={arm} layer={layer} metric={metric} "
                f"reading={reading!r} step={step} index={index}"
            ) from None

    def curve(
        self, arm: str, metric: str, reading: str, step: int, layer: int = 0, frame: str = "main"
    ) -> pd.DataFrame:
        """A per-seed curve (expert mean): rows seeds, columns the 1-based index."""
        return self._means[frame].loc[(arm, layer, metric, reading, step)].T.dropna(how="all")

    def cosines(self, arm: str, reading: str, step: int, layer: int = 0, frame: str = "main") -> pd.DataFrame:
        """Each unordered expert pair's cosine once: columns seed, expert, index, value."""
        return self.pairs(arm, "cosine", reading, step, layer, frame)

    def pairs(
        self, arm: str, metric: str, reading: str, step: int | None = None, layer: int = 0, frame: str = "main"
    ) -> pd.DataFrame:
        """Each unordered expert pair's value of a pairwise metric (``index`` the partner) once,
        at ``step`` (default final): columns seed, expert, index, value."""
        step = self.final_step(frame) if step is None else step
        if frame not in self._pairs:
            df = self.frames[frame]
            df = df[(df.expert >= 0) & (df.expert < df["index"])]
            self._pairs[frame] = {
                k: g for k, g in df.groupby(["arm", "layer", "metric", "reading", "step"], observed=True)
            }
        empty = self.frames[frame].iloc[:0]
        return self._pairs[frame].get((arm, layer, metric, reading, step), empty)


@dataclass(frozen=True)
class Observation:
    """Per-seed values tested (``x``, indexed by seed) and the per-arm values behind them."""

    x: pd.Series
    arms: dict  # label -> per-seed values
    how: str = "value"  # how x combines the arms: "diff", "ratio", "logratio" (``pair``) or "value"


def pair(a: pd.Series, b: pd.Series, la: str, lb: str, how: str = "diff") -> Observation:
    """Paired per-seed observation: a - b ("diff") or log(a / b) ("logratio") or a / b ("ratio")."""
    a, b = a.align(b, join="inner")
    x = {"diff": lambda: a - b, "ratio": lambda: a / b, "logratio": lambda: np.log(a / b)}[how]()
    return Observation(x, {la: a, lb: b}, how)


def single(a: pd.Series, label: str) -> Observation:
    return Observation(a, {label: a})
