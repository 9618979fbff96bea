"""Sweeps on an executor you already run.

``sweep(grid, executor=...)`` splits every config of ``grid`` into independent **tasks** (a
config x a chunk of its seeds: ``dataclasses.replace(cfg, seeds=chunk)``), submits each task to
a ``concurrent.futures``-style executor, and merges the frames that come back into the tidy
frame of ``moegeo.experiment.run`` and into the on-disk cache (``moegeo.cache``), one entry per
task under the task's own ``cfg.key()``.

- **Bit-identical to the serial run.** Every task is computed with one torch thread, whatever
  executes it (``compute_task``), so a task gives the same bits in this process, in a local
  worker process, on a Dask worker or on a Slurm node with the same torch build and CPU kernels
  (tested against the serial run on a ``ProcessPoolExecutor`` and on a Dask ``LocalCluster``;
  the cache key checks moegeo's version and source, not the torch build or the CPU).
- **Chunks.** ``chunk=None`` (the default) makes one task of all the seeds of a config: its
  cache entry and its frame are exactly those of ``run(cfg)`` computed single-threaded, as
  ``pytest claims/`` has always trained them. Seeds train batched (stacked along a leading seed
  dimension), and a batched matrix product over S seeds need not round like the same product
  over a subset of them, so a chunked config agrees with its unchunked run only to float32
  rounding, not bit for bit (``tests/test_sweeps.py`` measures it): the verdicts of
  ``pytest claims/`` therefore always use the default. ``chunk=K`` (K seeds per task) spreads
  one config over several workers; its merged frame is the concatenation of its chunks' frames,
  in seed order, and each row keeps the ``config_key`` of the chunk that computed it.
- **Resumable.** Finished tasks are read from the cache; every task is stored the moment its
  frame comes back, so a sweep killed midway and run again computes only the missing tasks.
- **Progress.** A tqdm bar counts tasks done out of the tasks to compute, with an ETA.

Executors (``moegeo.executors``): a spec string (``serial``, ``processes[:N]``,
``dask://host:port``, ``dask-local[:N]``, ``slurm[:partition]``) or any executor object with
``submit(fn, *args)``. An executor that cannot run the tasks is an ``ExecutorError`` naming the
executor and what to check (``moegeo.executors``, Faults); a worker that dies mid-task is one
too (``execute``), naming the tasks it left unfinished. The tasks finished before are stored in
the cache (with ``cache=True``), so a rerun computes only the rest.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import cache as cache_mod
from . import experiment
from .config import ExperimentConfig, LMConfig, RunConfig
from .executors import ExecutorError, Handle, open_executor, parse_executor

#: seconds between two looks at futures that are not ``concurrent.futures.Future`` (submitit jobs)
POLL_SECONDS = 1.0


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """One unit of work: ``cfg`` is the grid entry ``name`` restricted to chunk ``index`` of its
    seeds. Its frame is cached under ``cfg.key()``."""

    name: str
    index: int
    cfg: RunConfig

    @property
    def key(self) -> str:
        return self.cfg.key()


def named_grid(grid) -> dict[str, RunConfig]:
    """``grid`` as name -> config: a mapping is kept, a single config is ``{"0": cfg}``, any
    other iterable of configs is named by position ("0", "1", ...)."""
    if isinstance(grid, RunConfig):
        grid = {"0": grid}
    elif not isinstance(grid, Mapping):
        grid = {str(i): cfg for i, cfg in enumerate(grid)}
    if not grid:
        raise ValueError("the grid holds no config")
    for name, cfg in grid.items():
        if not isinstance(cfg, (ExperimentConfig, LMConfig)):
            raise TypeError(f"grid entry {name!r} must be an ExperimentConfig or an LMConfig, got {type(cfg).__name__}")
    return {str(name): cfg for name, cfg in grid.items()}


def tasks(grid, *, chunk: int | None = None) -> list[Task]:
    """The tasks of ``grid`` (see ``named_grid``), config by config in the grid's order.

    ``chunk``: seeds per task, consecutive in the config's seed order; None (default) makes one
    task of all the seeds of a config, whose ``cfg`` is the config itself.
    """
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None (all seeds of a config) or an integer >= 1, got {chunk!r}")
    out = []
    for name, cfg in named_grid(grid).items():
        seeds = cfg.seeds
        if chunk is None or chunk >= len(seeds):
            out.append(Task(name, 0, cfg))
            continue
        for i in range(0, len(seeds), chunk):
            out.append(Task(name, i // chunk, dataclasses.replace(cfg, seeds=seeds[i : i + chunk])))
    return out


def compute_task(cfg: RunConfig, key: str | None = None) -> tuple[pd.DataFrame, float]:
    """Compute one task's frame with one torch thread, without the cache; returns the frame and
    the seconds it took. This is what every executor runs (it must be importable where it runs:
    moegeo installed on the workers). The thread count is left at 1 (a worker process may run
    other tasks in other threads); ``moegeo.executors.SerialExecutor`` restores this process's count.

    ``key``: the task's cache key as the sweep computed it. A worker whose moegeo (version or
    result-module source) differs computes another key for the same config, and raises rather
    than return numbers that the sweep would store under the sweep's key.
    """
    if key is not None and cfg.key() != key:
        raise RuntimeError(
            f"this worker's moegeo gives the task key {cfg.key()}, the sweep expected {key}: install the "
            "same moegeo (version and source) on every worker as where the sweep runs"
        )
    torch.set_num_threads(1)
    t = time.perf_counter()
    frame = experiment.run(cfg, cache=False, progress=False)
    return frame, time.perf_counter() - t


# --------------------------------------------------------------------------- running the tasks
def _wait_first(pending: set) -> set:
    """The futures of ``pending`` that are done, waiting until at least one is."""
    if all(isinstance(f, concurrent.futures.Future) for f in pending):
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        return done
    while True:  # e.g. submitit jobs: poll
        done = {f for f in pending if f.done()}
        if done:
            return done
        time.sleep(POLL_SECONDS)


def _worker_died(err: BaseException) -> bool:
    """Whether a task's error says its worker died (rather than the task raising)."""
    return isinstance(err, concurrent.futures.BrokenExecutor) or type(err).__name__ == "KilledWorker"


def execute(
    handle: Handle, todo: list[Task], *, progress: bool | None = None, desc: str = "sweep"
) -> Iterator[tuple[Task, pd.DataFrame, float]]:
    """Run ``compute_task`` for every task on ``handle``; yield ``(task, frame, seconds)`` as each
    finishes (any order). When a task fails, nothing more is submitted and the tasks not yet
    started are cancelled, but those already running are waited for and yielded (so the caller
    stores their work), then the first error is raised. Ctrl-C cancels what it can and returns at
    once. ``progress``: a tqdm bar of tasks done out of ``len(todo)`` with an ETA (None: only on a
    terminal; False: never).

    A worker that dies mid-task (``BrokenProcessPool`` and other ``BrokenExecutor``, Dask's
    ``KilledWorker``) is raised as an ``ExecutorError`` naming the executor and the tasks it
    left unfinished, from the original error; the tasks yielded before are the caller's to keep."""
    queue = list(reversed(todo))
    pending: dict[Any, Task] = {}
    failed: BaseException | None = None
    lost: list[Task] = []  # tasks whose worker died
    finished = 0
    bar = tqdm(total=len(todo), desc=desc, unit="task", disable=None if progress is None else not progress)
    try:
        while queue or pending:
            while failed is None and queue and (handle.in_flight is None or len(pending) < handle.in_flight):
                task = queue.pop()
                try:
                    pending[handle.executor.submit(compute_task, task.cfg, task.key)] = task
                except concurrent.futures.BrokenExecutor as err:  # broken before this task could be sent
                    failed = failed or err
                    lost.append(task)
            if failed is not None:
                queue.clear()
                for future in [f for f in pending if f.cancel()]:  # not started: dropped
                    del pending[future]
                if not pending:
                    break
            for future in _wait_first(set(pending)):
                task = pending.pop(future)
                try:
                    frame, seconds = future.result()
                except Exception as err:  # keep the first; let the running ones finish and be stored
                    failed = failed or err
                    if _worker_died(err):
                        lost.append(task)
                    continue
                bar.set_postfix_str(f"{task.name}[{task.index}] {seconds:.0f} s", refresh=False)
                bar.update(1)
                finished += 1
                yield task, frame, seconds
        if failed is not None:
            if _worker_died(failed):
                unfinished = ", ".join(f"{t.name}[{t.index}]" for t in lost)
                raise ExecutorError(
                    f"a worker of {handle.describe()} died, task(s) {unfinished} unfinished "
                    f"({type(failed).__name__}: {failed}): it was killed (the out-of-memory killer, a job's memory or "
                    f"time limit, kill -9) or crashed. The {finished} task(s) that finished before it were returned "
                    f"(a sweep has cached them): run the sweep again to compute the rest. Check the memory each "
                    f"worker needs against the machine's (fewer workers: processes:N with a smaller N) and the "
                    f"system log (dmesg) for the out-of-memory killer"
                ) from failed
            raise failed
    finally:
        for future in pending:
            with contextlib.suppress(Exception):
                future.cancel()
        bar.close()


# --------------------------------------------------------------------------- the sweep
@dataclass
class SweepResult:
    """What ``sweep`` returns.

    ``frames``: name -> the config's tidy frame (its chunks' frames concatenated in seed order;
    with one task per config, exactly ``run(cfg)``). ``seconds``: name -> seconds its tasks took
    to compute (in the workers) plus to read from the cache here. ``computed`` / ``cached``: the
    tasks computed by this call (in order of completion) and those read from the cache.
    """

    frames: dict[str, pd.DataFrame]
    seconds: dict[str, float]
    tasks: list[Task]
    computed: list[Task] = field(default_factory=list)
    cached: list[Task] = field(default_factory=list)

    def tidy(self) -> pd.DataFrame:
        """Every config's frame in one, with a ``config`` column holding its grid name."""
        return pd.concat([df.assign(config=name) for name, df in self.frames.items()], ignore_index=True)


def sweep(
    grid, *, executor="serial", chunk: int | None = None, cache: bool = True, progress: bool | None = None
) -> SweepResult:
    """Compute every config of ``grid`` (name -> config, a list of configs, or one config) as
    independent tasks of ``chunk`` seeds (None: all seeds of a config, one task per config) on
    ``executor`` (a spec string or an executor object, see ``moegeo.executors``).

    With ``cache`` (default), tasks already in the cache are read, not computed, and every task
    computed is stored the moment it returns, so an interrupted sweep resumes where it stopped;
    the executor is not even opened when every task is cached. A task whose entry cannot be
    written (a read-only cache, a full disk) is kept in the result, with a ``CacheWarning``.
    Identical tasks (same key) are computed once. Returns a ``SweepResult``.

    Raises ``ExecutorError`` when the executor cannot run the tasks (``moegeo.executors``, Faults),
    after storing every task finished before; a task's own error is raised as it is.
    """
    plan = tasks(grid, chunk=chunk)
    names = list(dict.fromkeys(t.name for t in plan))
    if isinstance(executor, str):
        parse_executor(executor)  # a bad spec fails before anything is loaded or computed
    unique: dict[str, Task] = {}
    for t in plan:
        unique.setdefault(t.key, t)
    done: dict[str, pd.DataFrame] = {}
    seconds: dict[str, float] = {}  # per task key
    result = SweepResult({}, {}, plan)
    if cache:
        for key, t in unique.items():
            t0 = time.perf_counter()
            frame = cache_mod.load(key)
            if frame is not None:
                done[key], seconds[key] = frame, time.perf_counter() - t0
                result.cached.append(t)
    todo = [t for key, t in unique.items() if key not in done]
    if todo:
        with open_executor(executor, n_tasks=len(todo)) as handle:
            desc = f"sweep on {handle.name}" + (f" ({len(result.cached)} cached)" if result.cached else "")
            for t, frame, secs in execute(handle, todo, progress=progress, desc=desc):
                if cache:
                    cache_mod.try_store(t.key, frame)
                done[t.key], seconds[t.key] = frame, secs
                result.computed.append(t)
    for name in names:
        mine = [t for t in plan if t.name == name]
        parts = [done[t.key] for t in mine]
        result.frames[name] = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        result.seconds[name] = sum(seconds[t.key] for t in mine)
    return result
