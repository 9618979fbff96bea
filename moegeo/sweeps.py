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

Executors, by spec string (``parse_executor``/``open_executor``: the one place that turns a spec
into an executor) or as an object:

=====================  ==================================================================
``serial``             in this process, one task after another
``processes[:N]``      ``ProcessPoolExecutor``, N spawned single-threaded workers (default:
                       one per core)
``dask://host:port``   a running Dask scheduler (``distributed.Client("tcp://host:port")``;
                       also ``dask://tls://host:port``); the ``[dask]`` extra
``dask-local[:N]``     a Dask ``LocalCluster`` of N single-threaded worker processes started
                       here (default: one per core); the ``[dask]`` extra
``slurm[:partition]``  submitit's ``AutoExecutor`` on Slurm, one job per task; the ``[slurm]``
                       extra
=====================  ==================================================================

An object is any executor with ``submit(fn, *args)`` returning futures: a
``concurrent.futures.Executor``, a ``distributed.Client`` (its ``get_executor()`` is used), or a
submitit executor configured as you like (its jobs are polled).

Faults. An executor that cannot run the tasks is an ``ExecutorError`` naming the executor and
what to check, not a hang or a raw traceback:

- a Dask scheduler that cannot be reached within ``DASK_CONNECT_TIMEOUT`` seconds
  (``$MOEGEO_DASK_CONNECT_TIMEOUT``), or that has no worker within ``DASK_WORKER_TIMEOUT``
  seconds (``$MOEGEO_DASK_WORKER_TIMEOUT``, or ``open_executor(worker_timeout=...)``);
- a worker process that dies mid-task (the out-of-memory killer, ``kill -9``: a
  ``BrokenProcessPool``; a Dask ``KilledWorker``). The tasks finished before are stored in
  the cache (with ``cache=True``), so a rerun computes only the rest.

A ``processes[:N]`` pool stops its workers when the sweep ends in any way: on an error or
Ctrl-C, and on SIGTERM (Slurm's pre-emption), which while the pool is open stops the workers
and then exits with status 143 (or calls the SIGTERM handler that was installed before). Its
workers also exit by themselves within ``PARENT_POLL_SECONDS`` when the sweep's process dies
(SIGKILL included), so none is left orphaned.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import cache as cache_mod
from . import experiment
from .config import ExperimentConfig, LMConfig, RunConfig

#: the executor specs, as an error message shows them
SPECS = ("serial", "processes[:N]", "dask://host:port", "dask-local[:N]", "slurm[:partition]")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a Slurm allocation, a container's
    cpuset, ``taskset``), not every core of the machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


#: the executor of ``pytest claims/`` and ``python -m moegeo sweep`` when none is given: one process per usable core
DEFAULT_EXECUTOR = f"processes:{usable_cores()}"
#: seconds between two looks at futures that are not ``concurrent.futures.Future`` (submitit jobs)
POLL_SECONDS = 1.0
#: submitit defaults for ``slurm[:partition]``: one core per task (tasks are single-threaded); the largest task of
#: ``pytest claims/`` (the main MLP config, 24 seeds) takes about 12 minutes on one core of the reference machine,
#: and the whole claims run peaked at 5.8 GB with two tasks at once
SLURM_PARAMETERS = dict(cpus_per_task=1, timeout_min=120, mem_gb=8)
#: seconds to wait for a Dask scheduler to answer (``$MOEGEO_DASK_CONNECT_TIMEOUT`` overrides)
DASK_CONNECT_TIMEOUT = 30.0
#: seconds to wait for a Dask scheduler to have at least one worker (``$MOEGEO_DASK_WORKER_TIMEOUT`` overrides)
DASK_WORKER_TIMEOUT = 60.0
#: seconds between a pool worker's checks that the process that started it is alive
PARENT_POLL_SECONDS = 0.25
#: seconds a stopped pool worker is given to exit after SIGTERM before it is sent SIGKILL
STOP_GRACE_SECONDS = 2.0


class ExecutorError(RuntimeError):
    """An executor could not run the sweep's tasks: a scheduler that cannot be reached or has no
    worker, a worker that died mid-task. The message names the executor and what to check."""


def _seconds(env: str, default: float) -> float:
    """A timeout in seconds from the environment variable ``env`` (a number > 0), else ``default``."""
    text = os.environ.get(env)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{env} must be a number of seconds > 0, got {text!r}")
    return value


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
    other tasks in other threads); ``SerialExecutor`` restores this process's count.

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


# --------------------------------------------------------------------------- executors
class SerialExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once, in this process, and returns its finished future. Torch's
    thread count is restored after every call (``compute_task`` sets it to 1)."""

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        threads = torch.get_num_threads()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # delivered through the future, as by any executor
            future.set_exception(err)
        finally:
            torch.set_num_threads(threads)
        return future


@dataclass(frozen=True)
class ExecutorSpec:
    """A parsed executor spec: ``kind`` in serial, processes, dask, dask-local, slurm, and its
    argument (workers, the scheduler's address such as ``tcp://host:port``, or the Slurm
    partition; None for the default)."""

    kind: str
    arg: int | str | None = None

    def __str__(self) -> str:
        if self.kind == "dask":
            return f"dask://{self.arg.removeprefix('tcp://')}"
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"


def parse_executor(spec: str) -> ExecutorSpec:
    """Check an executor spec string (see the module docstring) without importing or starting
    anything; raises ``ValueError`` naming the valid forms."""
    if not isinstance(spec, str):
        raise TypeError(f"an executor spec is a string, got {type(spec).__name__}")
    s = spec.strip()

    def bad(why: str) -> ValueError:
        return ValueError(f"bad executor spec {spec!r}: {why}; expected one of {', '.join(SPECS)}")

    def count(text: str, what: str) -> int:
        if not (text.isascii() and text.isdigit()):  # int() would take "1_6" and non-ASCII digits
            raise bad(f"{what} must be a whole number, got {text!r}")
        n = int(text)
        if n < 1:
            raise bad(f"{what} must be >= 1, got {n}")
        return n

    if s == "serial":
        return ExecutorSpec("serial")
    if s.startswith("dask://"):
        address = s[len("dask://") :]
        protocol, sep, rest = address.rpartition("://")
        host, colon, port = rest.rpartition(":")
        if (sep and not protocol.isalnum()) or not colon or not host or not (port.isascii() and port.isdigit()):
            raise bad(f"a Dask scheduler is dask://host:port or dask://protocol://host:port, got {address!r}")
        return ExecutorSpec("dask", address if sep else f"tcp://{address}")
    kind, sep, arg = s.partition(":")
    if kind in ("processes", "dask-local"):
        return ExecutorSpec(kind, count(arg, "the number of workers") if sep else None)
    if kind == "slurm":
        if sep and not arg:
            raise bad("the Slurm partition is empty (write slurm for the default partition)")
        if sep and not all(c.isascii() and (c.isalnum() or c in "-_.,") for c in arg):
            raise bad(f"a Slurm partition name is letters, digits and - _ . , only, got {arg!r}")
        return ExecutorSpec("slurm", arg or None)
    raise bad("unknown executor")


def _require(module: str, extra: str, spec) -> Any:
    """Import an optional dependency, or fail naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"executor {str(spec)!r} needs the {module} package: pip install 'moegeo[{extra}]' ({err})"
        ) from None


@dataclass
class Handle:
    """An open executor: ``submit(fn, *args)`` gives futures; at most ``in_flight`` of them are
    outstanding at once (None: all tasks are submitted at once). ``spec``: the spec string it was
    opened from (None for an executor object)."""

    executor: Any
    name: str
    in_flight: int | None = None
    spec: str | None = None

    def describe(self) -> str:
        """The executor as an error message names it."""
        return f"executor {self.spec!r} ({self.name})" if self.spec else f"executor {self.name}"


def _exit_with_parent(parent: int) -> None:
    """Pool worker initializer: a daemon thread ends this process (``os._exit``) as soon as its
    parent is no longer ``parent`` (the sweep's process died, even by SIGKILL, and this one was
    reparented)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="moegeo-exit-with-parent", daemon=True).start()


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes (SIGTERM, then SIGKILL after ``STOP_GRACE_SECONDS``)
    and wait for them. Takes no lock of the pool, so a signal handler may call it. Reads the
    pool's ``_processes`` (Python before 3.14 has no public way to stop a pool's workers)."""
    procs = [p for p in list((getattr(pool, "_processes", None) or {}).values()) if p.is_alive()]
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(STOP_GRACE_SECONDS)


@contextlib.contextmanager
def _stop_workers_on_sigterm(pool: concurrent.futures.ProcessPoolExecutor) -> Iterator[None]:
    """While open, SIGTERM stops the pool's workers, restores the previous SIGTERM handler, then
    calls it if it is a Python function or else raises ``SystemExit(143)``. Installed only in the
    main thread and where SIGTERM is not ignored; the previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None or previous == signal.SIG_IGN:  # set outside Python (cannot be restored), or ignored
        yield
        return

    def on_sigterm(signum, frame):
        _stop_workers(pool)
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)


def _wait_for_workers(client, where: str, timeout: float) -> None:
    """Wait until the Dask scheduler of ``client`` has a worker, or raise ``ExecutorError``."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError as err:
        raise ExecutorError(
            f"{where}: the Dask scheduler has no worker after {timeout:g} s. Start workers for it (dask worker "
            f"ADDRESS --nthreads 1), check that they can reach the scheduler (its address, a firewall), or wait "
            f"longer with MOEGEO_DASK_WORKER_TIMEOUT=SECONDS"
        ) from err


@contextlib.contextmanager
def open_executor(
    executor="serial", *, n_tasks: int | None = None, worker_timeout: float | None = None
) -> Iterator[Handle]:
    """An executor from a spec string (see the module docstring) or an executor object, open
    for the duration of the ``with`` block; what this function started it also stops (a
    process pool and its worker processes, a Dask client and its ``LocalCluster``). ``n_tasks``
    caps the local workers started. Optional packages are imported only here, and a missing one
    is an ``ImportError`` naming the extra that installs it.

    A Dask scheduler (``dask://`` or a ``distributed.Client``) must answer within
    ``DASK_CONNECT_TIMEOUT`` seconds and have a worker within ``worker_timeout`` seconds (None:
    ``$MOEGEO_DASK_WORKER_TIMEOUT``, else ``DASK_WORKER_TIMEOUT``), or this raises
    ``ExecutorError``. A process pool's workers are stopped on SIGTERM and exit if this process
    dies (module docstring)."""
    if worker_timeout is None:
        worker_timeout = _seconds("MOEGEO_DASK_WORKER_TIMEOUT", DASK_WORKER_TIMEOUT)
    if not isinstance(executor, str):
        yield _wrap(executor, worker_timeout)
        return
    spec = parse_executor(executor)

    def local_workers() -> int:  # the spec's count (default one per core), at most one per task
        n = spec.arg or usable_cores()
        return min(n, n_tasks) if n_tasks else n

    if spec.kind == "serial":
        yield Handle(SerialExecutor(), "serial", in_flight=1, spec=str(spec))
    elif spec.kind == "processes":
        n = local_workers()
        pool = concurrent.futures.ProcessPoolExecutor(
            n, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent, initargs=(os.getpid(),)
        )
        with _stop_workers_on_sigterm(pool):
            try:
                yield Handle(pool, f"{n} processes", spec=str(spec))
            except BaseException:  # an error, Ctrl-C or SIGTERM: stop the running tasks, don't wait for them
                _stop_workers(pool)
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    elif spec.kind in ("dask", "dask-local"):
        distributed = _require("distributed", "dask", spec)
        with contextlib.ExitStack() as stack:
            if spec.kind == "dask":
                connect = _seconds("MOEGEO_DASK_CONNECT_TIMEOUT", DASK_CONNECT_TIMEOUT)
                try:
                    client = stack.enter_context(distributed.Client(spec.arg, timeout=connect))
                except OSError as err:  # TimeoutError included
                    raise ExecutorError(
                        f"executor {str(spec)!r}: cannot reach the Dask scheduler at {spec.arg} within {connect:g} s "
                        f"({err}). Check that a scheduler runs there (dask scheduler --port PORT), the host name and "
                        f"port, a firewall between here and it, the protocol (tcp://, tls:// with its security "
                        f"settings); MOEGEO_DASK_CONNECT_TIMEOUT=SECONDS waits longer"
                    ) from err
                name = f"dask scheduler {spec.arg}"
                _wait_for_workers(client, f"executor {str(spec)!r}", worker_timeout)
            else:
                n = local_workers()
                # no memory limit: the nanny would pause a worker at 80% of RAM / n and kill it at 95%,
                # where a process pool lets a large task finish; the dashboard only on localhost
                cluster = stack.enter_context(
                    distributed.LocalCluster(
                        n_workers=n,
                        threads_per_worker=1,
                        processes=True,
                        memory_limit=0,
                        dashboard_address="127.0.0.1:0",
                    )
                )
                client = stack.enter_context(distributed.Client(cluster))
                name = f"dask LocalCluster of {n} workers"
            yield Handle(client.get_executor(pure=False), name, spec=str(spec))
    elif spec.kind == "slurm":
        submitit = _require("submitit", "slurm", spec)
        folder = Path(os.environ.get("MOEGEO_SUBMITIT_DIR", cache_mod.cache_dir() / "submitit"))
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = dict(SLURM_PARAMETERS, **({"slurm_partition": spec.arg} if spec.arg else {}))
        ex.update_parameters(**params)
        yield Handle(ex, f"slurm{':' + spec.arg if spec.arg else ''} (submitit, logs in {folder})", spec=str(spec))
    else:  # pragma: no cover - parse_executor knows every kind
        raise AssertionError(spec)


def _wrap(executor, worker_timeout: float) -> Handle:
    """An executor object as a Handle (a Dask client through its concurrent.futures facade, once
    its scheduler has a worker)."""
    if not hasattr(executor, "submit"):
        raise TypeError(
            f"an executor must have submit(fn, *args) (a concurrent.futures.Executor, a "
            f"distributed.Client, a submitit executor), got {type(executor).__name__}"
        )
    if hasattr(executor, "get_executor") and type(executor).__module__.startswith("distributed"):
        address = getattr(getattr(executor, "scheduler", None), "address", "?")
        _wait_for_workers(executor, f"dask scheduler {address}", worker_timeout)
        return Handle(executor.get_executor(pure=False), f"dask scheduler {address}")
    return Handle(executor, type(executor).__name__, in_flight=1 if isinstance(executor, SerialExecutor) else None)


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
    ``executor`` (a spec string or an executor object, see the module docstring).

    With ``cache`` (default), tasks already in the cache are read, not computed, and every task
    computed is stored the moment it returns, so an interrupted sweep resumes where it stopped;
    the executor is not even opened when every task is cached. A task whose entry cannot be
    written (a read-only cache, a full disk) is kept in the result, with a ``CacheWarning``.
    Identical tasks (same key) are computed once. Returns a ``SweepResult``.

    Raises ``ExecutorError`` when the executor cannot run the tasks (module docstring, Faults),
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
