"""Sweeps (moegeo.sweeps, moegeo.executors) when things go wrong: a process-pool sweep SIGTERMed or
SIGKILLed leaves no worker behind, a pool worker killed mid-task is a clear error that keeps the
finished tasks, a Dask scheduler that is unreachable or has no worker is a clear error, not a hang."""

import dataclasses
import importlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from moegeo import Arm, ExperimentConfig, cache, executors, sweeps

CFG = ExperimentConfig(
    n_experts=4,
    d_model=8,
    d_hidden=16,
    n_samples=64,
    steps=10,
    record_every=5,
    trajectory_points=16,
    seeds=(0, 1),
    arms=(Arm.TOPK,),
)

#: the task every executor runs, replaced: it records its worker's pid, then sleeps for the seeds
#: listed in $MOEGEO_TEST_SLOW and returns a small frame at once for the others
FAULTY = textwrap.dedent("""
    import os, time
    from pathlib import Path
    import pandas as pd

    def compute(cfg, key=None):
        folder = Path(os.environ["MOEGEO_TEST_PIDS"])
        seed = cfg.seeds[0]
        (folder / f"{seed}.tmp").write_text(str(os.getpid()))
        os.replace(folder / f"{seed}.tmp", folder / str(seed))
        if str(seed) in os.environ.get("MOEGEO_TEST_SLOW", "").split(","):
            time.sleep(60)
        return pd.DataFrame({"seed": list(cfg.seeds), "value": [float(s) for s in cfg.seeds]}), 0.0
""")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGEO_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def pids(tmp_path, monkeypatch) -> Path:
    """The folder where the faulty task writes its worker's pid, one file per seed; the faulty
    task module importable here and in spawned workers (they inherit sys.path and the environment)."""
    folder = tmp_path / "pids"
    folder.mkdir()
    (tmp_path / "moegeo_faulty_task.py").write_text(FAULTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "moegeo_faulty_task", raising=False)
    monkeypatch.setenv("MOEGEO_TEST_PIDS", str(folder))
    return folder


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def running(procs) -> list:
    """The processes of ``procs`` still running (a zombie has exited)."""
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


SWEEP = """
import sys
import moegeo_faulty_task
from moegeo import ExperimentConfig, Arm, sweeps
sweeps.compute_task = moegeo_faulty_task.compute
cfg = ExperimentConfig(n_experts=4, d_model=8, d_hidden=16, n_samples=64, steps=10, record_every=5,
                       trajectory_points=16, seeds=(0, 1), arms=(Arm.TOPK,))
sweeps.sweep(cfg, executor="processes:2", chunk=1, progress=False)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signalled_process_pool_sweep_leaves_no_worker(pids, tmp_path, monkeypatch, sig):
    """A ``processes:2`` sweep whose two workers are busy: SIGTERM to the sweep's process stops its
    workers and exits with 143; SIGKILL leaves them orphaned, and they exit by themselves. Either
    way no child of the sweep is running a few seconds later."""
    monkeypatch.setenv("MOEGEO_TEST_SLOW", "0,1")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", SWEEP], env=env)
    try:
        wait_for(lambda: (pids / "0").exists() and (pids / "1").exists(), 60, "both workers to start their task")
        children = psutil.Process(proc.pid).children(recursive=True)
        workers = {int((pids / s).read_text()) for s in ("0", "1")}
        assert workers <= {c.pid for c in children}
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    wait_for(lambda: not running(children), 5, f"the workers {sorted(workers)} to exit")


def test_the_sigterm_handler_is_installed_only_while_the_pool_is_open():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with executors.open_executor("processes:1"):
            assert signal.getsignal(signal.SIGTERM) is not mine
        assert signal.getsignal(signal.SIGTERM) is mine
        with executors.open_executor("serial"):
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_pool_worker_killed_mid_task_is_a_clear_error_and_finished_tasks_stay_cached(pids, monkeypatch):
    """Seed 0 finishes at once, seed 1 runs long and its worker is SIGKILLed (as by the
    out-of-memory killer): the sweep raises ``ExecutorError`` naming the executor, seed 0's
    entry is in the cache, and no worker is left."""
    monkeypatch.setenv("MOEGEO_TEST_SLOW", "1,2")
    faulty = importlib.import_module("moegeo_faulty_task")
    monkeypatch.setattr(sweeps, "compute_task", faulty.compute)
    cfg = dataclasses.replace(CFG, seeds=(0, 1, 2))
    keys = [t.key for t in sweeps.tasks(cfg, chunk=1)]
    killed, workers = [], []  # the pool's workers, listed before the kill

    def kill_the_slow_worker():
        deadline = time.monotonic() + 60
        while not ((pids / "1").exists() and cache.entry_path(keys[0]).exists()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        workers.extend(psutil.Process(int(f.read_text())) for f in pids.iterdir() if f.name.isdigit())
        pid = int((pids / "1").read_text())
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_slow_worker, daemon=True)
    killer.start()
    with pytest.raises(
        executors.ExecutorError, match=r"a worker of executor 'processes:2' \(2 processes\) died"
    ) as err:
        sweeps.sweep(cfg, executor="processes:2", chunk=1, progress=False)
    killer.join()
    assert killed, "the slow task never started"
    message = str(err.value)
    assert "0[1]" in message and "0[0]" not in message
    assert "run the sweep again" in message and "BrokenProcessPool" in message
    assert cache.load(keys[0]) is not None and cache.load(keys[1]) is None
    wait_for(lambda: not running(workers), 5, "the pool's workers to exit")


def test_a_dask_scheduler_without_workers_is_a_clear_error(monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("MOEGEO_DASK_WORKER_TIMEOUT", "1")
    with distributed.LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        spec = "dask://" + address.removeprefix("tcp://")
        t0 = time.monotonic()
        with pytest.raises(executors.ExecutorError, match="has no worker after 1 s") as err:
            sweeps.sweep(CFG, executor=spec, cache=False, progress=False)
        assert time.monotonic() - t0 < 15
        assert spec in str(err.value)
        with distributed.Client(address) as client, pytest.raises(executors.ExecutorError, match=address):
            with executors.open_executor(client, worker_timeout=0.5):
                pass


def test_a_bad_worker_timeout_is_refused(monkeypatch):
    monkeypatch.setenv("MOEGEO_DASK_WORKER_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MOEGEO_DASK_WORKER_TIMEOUT must be a number of seconds > 0, got 'soon'"):
        with executors.open_executor("serial"):
            pass


def test_an_unreachable_dask_scheduler_is_a_clear_error(monkeypatch):
    pytest.importorskip("distributed")
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MOEGEO_DASK_CONNECT_TIMEOUT", "1")
    spec = f"dask://127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(executors.ExecutorError, match="cannot reach the Dask scheduler") as err:
        sweeps.sweep(CFG, executor=spec, cache=False, progress=False)
    assert time.monotonic() - t0 < 15
    assert f"executor '{spec}'" in str(err.value) and "Check that a scheduler runs there" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)
