"""The executors of a sweep (``moegeo.sweeps``): an executor from a spec string or an object, open
for the duration of a sweep, and the faults of opening one as ``ExecutorError``.

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
  ``BrokenProcessPool``; a Dask ``KilledWorker``), raised by ``moegeo.sweeps.execute``. The
  tasks finished before are stored in the cache (with ``cache=True``), so a rerun computes only
  the rest.

A ``processes[:N]`` pool stops its workers when the sweep ends in any way: on an error or
Ctrl-C, and on SIGTERM (Slurm's pre-emption), which while the pool is open stops the workers
and then exits with status 143 (or calls the SIGTERM handler that was installed before). Its
workers also exit by themselves within ``PARENT_POLL_SECONDS`` when the sweep's process dies
(SIGKILL included), so none is left orphaned.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import cache as cache_mod

#: the executor specs, as an error message shows them
SPECS = ("serial", "processes[:N]", "dask://host:port", "dask-local[:N]", "slurm[:partition]")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a Slurm allocation, a container's
    cpuset, ``taskset``), not every core of the machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


#: the executor of ``pytest claims/`` and ``python -m moegeo sweep`` when none is given: one process per usable core
DEFAULT_EXECUTOR = f"processes:{usable_cores()}"
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


class SerialExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once, in this process, and returns its finished future. Torch's
    thread count is restored after every call (``moegeo.sweeps.compute_task`` sets it to 1)."""

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
