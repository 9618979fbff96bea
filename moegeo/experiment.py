"""config -> data -> model -> train -> probes -> one tidy results frame, for either setting:
``run(cfg)``. Both settings train through ``moegeo.train`` and record through the row builders
of ``moegeo.rows``, which run the same probe functions on each MoE layer's input.
"""

from __future__ import annotations

import contextlib
import ctypes
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import train
from .cache import cached
from .config import Arm, ExperimentConfig, LMConfig, RunConfig
from .data import make_data
from .frame import Rows, _frame
from .model import MoENet, build_arm
from .rows import _trajectory_layer, probe_rows, routing_controls


def build_model(arm: Arm, cfg: ExperimentConfig) -> MoENet:
    """The model of one arm for all of ``cfg.seeds``."""
    return build_arm(
        arm,
        n_experts=cfg.n_experts,
        d_model=cfg.d_model,
        d_hidden=cfg.d_hidden,
        top_k=cfg.top_k,
        temperature=cfg.temperature,
        seeds=cfg.seeds,
    )


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None hides bars when output is not a terminal (and TQDM_DISABLE=1)."""
    return None if progress is None else not progress


def train_arm(arm: Arm, cfg: ExperimentConfig, x: torch.Tensor, y: torch.Tensor, *, progress: bool | None = None):
    """The MLP setting's training of one arm for every seed at once (``moegeo.train``: full-batch
    MSE with Adam, B.6); ``x, y: (S, N, d)``. Returns the trained model and its rows: loss and
    Jacobian norms every ``record_every`` steps and at every checkpoint (Fig. 1A), and every probe
    of every layer at each of ``cfg.checkpoints()`` (the final step among them)."""
    torch.manual_seed(0)  # nothing random should draw from the global generator; pin it anyway
    model = build_model(arm, cfg)
    rows, checkpoints = [], set(cfg.probe_steps_all())
    initial = {}  # (layer, seed index) -> the parameters at step 0, for the controls

    def record(step, model, loss):
        for i, seed in enumerate(cfg.seeds):
            r = Rows(seed, arm, -1, step)
            r.add("loss", "", loss[i])
            rows.extend(r)
        rows.extend(_trajectory_rows(arm, cfg, model, x, step))
        if step == 0:
            initial.update(
                {(l, i): model.params(i, l) for l in range(len(model.layers)) for i in range(len(cfg.seeds))}
            )
        if step in checkpoints:
            rows.extend(_checkpoint_rows(arm, cfg, model, x, step, initial))

    record_at = [s for s in range(cfg.steps + 1) if s % cfg.record_every == 0 or s in checkpoints]
    with _naming(cfg, arm):
        train.train(
            model,
            train.mse_loss(model, x, y),
            cfg.steps,
            cfg.lr,
            record=record,
            record_at=record_at,
            progress=progress,
            desc=f"train {arm.value}",
        )
    return model, rows


@contextlib.contextmanager
def _naming(cfg: RunConfig, arm: Arm):
    """A diverged run's ``FloatingPointError`` (``moegeo.train``), prefixed with the config and the arm."""
    try:
        yield
    except FloatingPointError as err:
        raise FloatingPointError(f"{cfg.describe()}, arm {arm.value}: {err}") from err


@torch.no_grad()
def _trajectory_rows(arm, cfg, model, x, step):
    """Per layer: Jacobian norms of every expert under the four readings (Jacobian site x
    norm), the effective MoE-layer Jacobian's norms (A.2; MoE arms) and the mean |cos| between
    experts' mean Jacobians.

    The mean Jacobian J̄_e uses the whole batch; per-point norms use its first
    ``cfg.trajectory_points`` points (x is i.i.d., so these are a random subsample), exactly.
    """
    trace = model.trace(x)
    jobs = [
        (model.params(i, layer, torch.float32), h[i], seed, layer)
        for layer, h in enumerate(trace.moe_inputs)
        for i, seed in enumerate(cfg.seeds)
    ]
    return per_seed(lambda p, h, seed, layer: _trajectory_layer(arm, cfg, p, h, seed, layer, step), jobs)


@torch.no_grad()
def _checkpoint_rows(arm, cfg, model, x, step, initial):
    """Every probe of every layer at ``step`` (float64, whole batch), seeds in order, with the
    routing controls after step 0 (``rows.routing_controls``; ``initial``: the step-0 parameters)."""
    trace = model.trace(x)
    jobs = []
    for layer, (h, block) in enumerate(zip(trace.moe_inputs, trace.block_inputs)):
        for i, seed in enumerate(cfg.seeds):
            ln = model.ln_weight[layer][i].detach().double() if model.residual else None
            jobs.append(
                (
                    model.params(i, layer),
                    h[i].double(),
                    seed,
                    arm,
                    step,
                    layer,
                    block[i].double(),
                    ln,
                    initial.get((layer, i)) if step > 0 else None,
                )
            )
    return per_seed(_probe_with_controls, jobs)


def _probe_with_controls(p, h, seed, arm, step, layer, block=None, ln=None, initial=None):
    """``probe_rows`` of one seed's layer with its routing controls (none at step 0)."""
    controls = routing_controls(p, h, seed, arm, layer, step, initial) if step > 0 else {}
    return probe_rows(p, h, seed, arm, step, layer, block, ln, controls=controls, initial=initial)


def per_seed(fn, jobs: list[tuple]) -> list[dict]:
    """``fn(*job)`` for every job, concatenated in job order, one single-threaded worker per core.

    The probes of one seed are dominated by LAPACK calls on thousands of small matrices, which
    run on one core; seeds are independent, so running them side by side uses every core, and
    each seed's arithmetic stays sequential and deterministic.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            return [row for rows in pool.map(lambda job: fn(*job), jobs) for row in rows]
    finally:
        torch.set_num_threads(threads)


def run(cfg: RunConfig = ExperimentConfig(), *, cache: bool = True, progress: bool | None = None) -> pd.DataFrame:
    """Train every arm of ``cfg`` for every seed and probe it: the tidy results frame of its
    setting (``ExperimentConfig``: the MLP-MoE; ``LMConfig``: the language model).

    Results are cached on disk under the config's hash (see ``moegeo.cache``); ``cache=False``
    recomputes. ``progress``: None shows bars only on a terminal, False never.

    Before anything is computed, a run whose largest tensors (``cfg.estimate_bytes()``) would
    take more than ``moegeo.validate.MEMORY_FRACTION`` of the available memory raises
    ``MemoryError`` naming the estimate. A run that diverges raises ``FloatingPointError`` naming
    the config, the arm, the step and the seeds (``moegeo.train.train``).
    """
    if not isinstance(cfg, (ExperimentConfig, LMConfig)):
        raise TypeError(f"cfg must be an ExperimentConfig or an LMConfig, got {type(cfg).__name__}")
    compute = {"mlp": _compute, "lm": _compute_lm}[cfg.setting]

    def checked():
        cfg.check_memory()
        return compute(cfg, progress)

    return cached(cfg, checked) if cache else checked()


def _compute(cfg: ExperimentConfig, progress) -> pd.DataFrame:
    _keep_freed_memory()
    data = [make_data(s, n_samples=cfg.n_samples, d_model=cfg.d_model) for s in cfg.seeds]
    x = torch.stack([d[0] for d in data])
    y = torch.stack([d[1] for d in data])
    rows = []
    for arm in tqdm(cfg.arms, desc="arms", disable=_quiet(progress)):
        rows += train_arm(arm, cfg, x, y, progress=progress)[1]
    return _frame(rows, cfg)


def _compute_lm(cfg: LMConfig, progress) -> pd.DataFrame:
    """Train every LM arm on WikiText-2 for all seeds at once, recording the training loss, the
    held-out perplexity and every FFN layer's trajectory probes every ``record_every`` steps, and
    every probe of every FFN layer at the final step. The probes read each layer's FFN input
    (post-LayerNorm) on the first ``probe_tokens`` held-out tokens (whole windows); the unigram
    model of the training split is the row ``arm="unigram"``."""
    from . import lm
    from .data.wikitext import heldout_windows, load_wikitext, unigram_perplexity

    _keep_freed_memory()
    torch.manual_seed(0)
    corpus = load_wikitext(cfg.data, cfg.vocab_size)
    windows, targets = heldout_windows(corpus.heldout, cfg.context)
    if len(windows) < max(cfg.eval_windows, cfg.probe_tokens // cfg.context):
        raise ValueError(
            f"the held-out split has {len(windows)} windows of {cfg.context} tokens; eval_windows = "
            f"{cfg.eval_windows} and probe_tokens = {cfg.probe_tokens} need more"
        )
    probe_idx = windows[: cfg.probe_tokens // cfg.context]
    unigram = unigram_perplexity(corpus.train, targets[: cfg.eval_windows].flatten(), cfg.vocab_size)
    rows = []
    for seed in cfg.seeds:
        r = Rows(seed, "unigram", -1, cfg.steps)
        r.add("perplexity", "", unigram)
        rows += r
    record_at = set(range(0, cfg.steps + 1, cfg.record_every)) | {cfg.steps}
    for arm in tqdm(cfg.arms, desc="lm arms", disable=_quiet(progress)):
        initial = {}  # (layer, seed index) -> the parameters at step 0, for the controls

        def record(step, model, loss, initial=initial, arm=arm):
            with torch.no_grad():
                ppl = lm.perplexity(lm.heldout_loss(model, corpus.heldout, cfg.eval_windows))
                inputs = model.trace(probe_idx.expand(model.n_seeds, -1, -1)).moe_inputs
            for i, seed in enumerate(cfg.seeds):
                r = Rows(seed, arm, -1, step)
                r.add("loss", "", loss[i])
                if bool(torch.isfinite(ppl[i])):
                    r.add("perplexity", "", ppl[i])
                else:  # a held-out loss beyond 709 nats: the perplexity overflows
                    r.undefined("perplexity", "", [-1])
                rows.extend(r)
            jobs = [
                (model.params(i, layer, torch.float32), h[i], seed, layer)
                for layer, h in enumerate(inputs)
                for i, seed in enumerate(cfg.seeds)
            ]
            rows.extend(per_seed(lambda p, h, seed, layer: _trajectory_layer(arm, cfg, p, h, seed, layer, step), jobs))
            if step == 0:
                initial.update({(l, i): model.params(i, l) for l in range(len(inputs)) for i in range(len(cfg.seeds))})
            if step in cfg.probe_steps_all():
                jobs = [
                    (
                        model.params(i, layer),
                        h[i].double(),
                        seed,
                        arm,
                        step,
                        layer,
                        None,
                        None,
                        initial.get((layer, i)) if step > 0 else None,
                    )
                    for layer, h in enumerate(inputs)
                    for i, seed in enumerate(cfg.seeds)
                ]
                rows.extend(per_seed(_probe_with_controls, jobs))

        model = lm.TransformerLM(arm, cfg)
        with _naming(cfg, arm):
            train.train(
                model,
                train.next_token_loss(model, corpus.train, cfg.batch_size),
                cfg.steps,
                cfg.lr,
                record=record,
                record_at=record_at,
                progress=progress,
                desc=f"train lm {arm.value}",
            )
    return _frame(rows, cfg)


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of returning it to the OS after every tensor.

    Training allocates and frees the same large activations every step; by default glibc
    mmaps/munmaps each of them, and the page faults cost more than the arithmetic (measured
    2.2x slower per step on the 2-core CI machine). Results are unaffected.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 2**30)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
