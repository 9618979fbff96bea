"""Sweeps (moegeo.sweeps, moegeo.executors): tasks, executor specs, bit-identity with the serial run
on a process pool and on a real Dask LocalCluster, resumption after a kill, the progress bar, the
CLI, and the cache under concurrent writers and a writer killed mid-write."""

import concurrent.futures
import dataclasses
import os
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from configs import TINY_LM

from moegeo import Arm, ExperimentConfig, cache, executors, experiment, frame, sweeps
from moegeo.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ExperimentConfig(
    n_experts=4,
    d_model=8,
    d_hidden=16,
    n_samples=64,
    steps=20,
    record_every=10,
    trajectory_points=16,
    seeds=(0, 1, 2),
    arms=(Arm.DENSE, Arm.TOPK, Arm.SOFT),
)

GRID = {"mlp": TINY, "lm": TINY_LM}
#: the cheapest run, for tests about the machinery rather than the numbers
FAST = dataclasses.replace(TINY, steps=10, record_every=5, arms=(Arm.TOPK,))
KEYS = frame.KEYS


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGEO_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def serial_chunked():
    """The reference: every seed its own task, computed one after another in this process."""
    return sweeps.sweep(GRID, executor="serial", chunk=1, cache=False, progress=False)


def assert_same_frames(a: sweeps.SweepResult, b: sweeps.SweepResult) -> None:
    assert list(a.frames) == list(b.frames)
    for name in a.frames:
        pd.testing.assert_frame_equal(a.frames[name], b.frames[name], check_exact=True)


# --------------------------------------------------------------------------- specs and tasks
@pytest.mark.parametrize(
    "spec, kind, arg",
    [
        ("serial", "serial", None),
        ("processes", "processes", None),
        ("processes:3", "processes", 3),
        ("dask://127.0.0.1:8786", "dask", "tcp://127.0.0.1:8786"),
        ("dask://tls://sched:8786", "dask", "tls://sched:8786"),
        ("dask-local", "dask-local", None),
        ("dask-local:2", "dask-local", 2),
        ("slurm", "slurm", None),
        ("slurm:short", "slurm", "short"),
    ],
)
def test_executor_specs_parse(spec, kind, arg):
    parsed = executors.parse_executor(spec)
    assert (parsed.kind, parsed.arg) == (kind, arg)
    assert executors.parse_executor(str(parsed)) == parsed


@pytest.mark.parametrize(
    "spec, why",
    [
        ("", "unknown executor"),
        ("threads:2", "unknown executor"),
        ("processes:0", ">= 1"),
        ("processes:two", "whole number"),
        ("dask://", "dask://host:port"),
        ("dask://sched", "dask://host:port"),
        ("dask://sched:port", "dask://host:port"),
        ("dask-local:-1", "whole number"),
        ("slurm:", "partition is empty"),
        ("processes:1_6", "whole number"),
        ("dask-local:\u0663", "whole number"),
        ("slurm:a:b c", "partition name"),
        ("dask://foo://bar", "dask://protocol://host:port"),
        ("dask://a://b://c:1", "dask://protocol"),
    ],
)
def test_a_bad_executor_spec_is_a_clear_error(spec, why):
    with pytest.raises(ValueError, match=why) as err:
        executors.parse_executor(spec)
    assert "expected one of serial, processes[:N], dask://host:port, dask-local[:N], slurm[:partition]" in str(
        err.value
    )
    with pytest.raises(ValueError, match="bad executor spec"):  # before anything is computed
        sweeps.sweep(TINY, executor=spec)


def test_an_object_without_submit_is_refused():
    with pytest.raises(TypeError, match="must have submit"):
        sweeps.sweep(TINY, executor=object(), cache=False)


@pytest.mark.parametrize(
    "spec, module, extra",
    [
        ("dask-local:2", "distributed", "dask"),
        ("dask://127.0.0.1:8786", "distributed", "dask"),
        ("slurm:short", "submitit", "slurm"),
    ],
)
def test_a_missing_optional_package_names_its_extra(monkeypatch, spec, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ImportError, match=rf"pip install 'moegeo\[{extra}\]'"):
        with executors.open_executor(spec):
            pass


def test_a_worker_with_other_moegeo_code_refuses_the_task():
    """The sweep stores a worker's frame under its own key: a worker whose moegeo computes another
    key for the config (other version or source) must not return numbers."""
    with pytest.raises(RuntimeError, match="same moegeo"):
        sweeps.compute_task(TINY, key="0" * 20)


def test_tasks_split_the_seeds_into_chunks():
    cfg = dataclasses.replace(TINY, seeds=(4, 5, 6, 7, 8))
    assert [t.cfg for t in sweeps.tasks({"a": cfg})] == [cfg]  # default: the config itself
    assert [t.cfg for t in sweeps.tasks({"a": cfg}, chunk=5)] == [cfg]
    ts = sweeps.tasks({"a": cfg}, chunk=2)
    assert [t.cfg.seeds for t in ts] == [(4, 5), (6, 7), (8,)]
    assert [(t.name, t.index) for t in ts] == [("a", 0), ("a", 1), ("a", 2)]
    assert all(dataclasses.replace(t.cfg, seeds=cfg.seeds) == cfg for t in ts)
    assert len({t.key for t in ts} | {cfg.key()}) == 4
    assert [t.name for t in sweeps.tasks([cfg, TINY_LM])] == ["0", "1"]
    assert [t.name for t in sweeps.tasks(cfg)] == ["0"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="chunk must be"):
            sweeps.tasks(cfg, chunk=bad)
    with pytest.raises(ValueError, match="no config"):
        sweeps.tasks({})
    with pytest.raises(TypeError, match="grid entry 'a'"):
        sweeps.tasks({"a": "topk"})


# --------------------------------------------------------------------------- bit-identity
def test_the_default_task_is_the_run_itself_bit_for_bit():
    """One task per config: the frame and the cache entry of ``run(cfg)`` computed single-threaded
    (as ``pytest claims/`` computes it), so the claims' cache and verdicts do not change."""
    threads = torch.get_num_threads()
    res = sweeps.sweep({"a": TINY}, executor="serial", progress=False)
    assert torch.get_num_threads() == threads  # the serial executor restores it
    torch.set_num_threads(1)
    try:
        ref = experiment.run(TINY, cache=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(res.frames["a"], ref, check_exact=True)
    pd.testing.assert_frame_equal(experiment.run(TINY, progress=False), ref, check_exact=True)  # run reads its entry
    assert [t.key for t in res.computed] == [TINY.key()]


def test_a_process_pool_equals_the_serial_run_bit_for_bit(serial_chunked):
    res = sweeps.sweep(GRID, executor="processes:2", chunk=1, progress=False)
    assert_same_frames(res, serial_chunked)
    assert len(res.computed) == 5 and not res.cached
    for t in res.tasks:  # merged into the cache, one entry per task
        pd.testing.assert_frame_equal(
            cache.load(t.key),
            res.frames[t.name][res.frames[t.name].seed.isin(t.cfg.seeds)].reset_index(drop=True),
            check_exact=True,
        )
    again = sweeps.sweep(GRID, executor="processes:2", chunk=1, progress=False)
    assert not again.computed and len(again.cached) == 5
    assert_same_frames(again, serial_chunked)


def test_a_dask_cluster_equals_the_serial_run_bit_for_bit(dask_cluster, serial_chunked):
    """A real Dask scheduler with 2 worker processes, reached by its address as a user would."""
    import distributed

    address = dask_cluster.scheduler_address
    res = sweeps.sweep(GRID, executor="dask://" + address.removeprefix("tcp://"), chunk=1, progress=False)
    assert_same_frames(res, serial_chunked)
    assert len(res.computed) == 5
    with distributed.Client(address) as client:  # a Client object works too
        assert len(client.scheduler_info()["workers"]) == 2
        res = sweeps.sweep({"lm": TINY_LM}, executor=client, chunk=1, cache=False, progress=False)
    pd.testing.assert_frame_equal(res.frames["lm"], serial_chunked.frames["lm"], check_exact=True)


def test_dask_local_starts_its_own_cluster():
    pytest.importorskip("distributed")
    res = sweeps.sweep({"a": FAST}, executor="dask-local:2", cache=False, progress=False)
    ref = sweeps.sweep({"a": FAST}, executor="serial", cache=False, progress=False)
    assert_same_frames(res, ref)


def test_a_submitit_executor_is_polled(tmp_path):
    """submitit's local backend (the Slurm path without Slurm): jobs are not concurrent futures."""
    submitit = pytest.importorskip("submitit")
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    ex.update_parameters(timeout_min=10)
    res = sweeps.sweep({"a": FAST}, executor=ex, cache=False, progress=False)
    assert_same_frames(res, sweeps.sweep({"a": FAST}, executor="serial", cache=False, progress=False))


def test_a_chunked_config_agrees_with_its_unchunked_run_to_rounding(serial_chunked):
    """Seeds train batched: a chunk of one seed need not round like the same seed inside the
    batch of all seeds (README, Sweeps; measured here for the tiny MLP config: about a fifth of
    its values differ in the last bits). The rows are the same and the values agree to float32
    rounding; this is why the default task holds all the seeds of a config."""
    whole = sweeps.sweep(GRID, executor="serial", cache=False, progress=False)
    for name, df in whole.frames.items():
        chunked = serial_chunked.frames[name]
        assert len(chunked) == len(df)
        m = df.merge(chunked, on=KEYS, suffixes=("_whole", "_chunked"), validate="one_to_one")
        assert len(m) == len(df)
        pd.testing.assert_series_equal(m.value_whole, m.value_chunked, check_names=False, rtol=1e-4, atol=1e-6)
        assert chunked.config_key.nunique() == len(sweeps.tasks({name: GRID[name]}, chunk=1))


# --------------------------------------------------------------------------- resuming
class LosesOneTask:
    """Executor mixin: the ``lost``-th task submitted dies at once (a worker lost midway)."""

    lost = 2
    calls = 0

    def submit(self, fn, /, *args, **kwargs):
        self.calls += 1
        if self.calls == self.lost:
            future = concurrent.futures.Future()
            future.set_exception(RuntimeError("worker lost"))
            return future
        return super().submit(fn, *args, **kwargs)


class FailsOnSecond(LosesOneTask, executors.SerialExecutor):
    """Serial, but the second task submitted dies."""


def test_a_failed_sweep_keeps_its_finished_tasks():
    cfg = FAST
    keys = [t.key for t in sweeps.tasks(cfg, chunk=1)]
    with pytest.raises(RuntimeError, match="worker lost"):
        sweeps.sweep(cfg, executor=FailsOnSecond(), chunk=1, progress=False)
    res = sweeps.sweep(cfg, executor="serial", chunk=1, progress=False)
    assert [t.key for t in res.cached] == keys[:1] and [t.key for t in res.computed] == keys[1:]


class FailsFirstOnThreads(LosesOneTask, concurrent.futures.ThreadPoolExecutor):
    """Two threads; the first submitted task fails at once while the next one is running."""

    lost = 1

    def __init__(self):
        super().__init__(2)


def test_a_failed_task_lets_the_running_ones_finish_and_be_stored():
    """The first task fails while the second runs: the error is raised only after the second has
    finished and been cached (its work is not thrown away); the third, queued, is cancelled or
    finished, never lost half-way."""
    keys = [t.key for t in sweeps.tasks(FAST, chunk=1)]
    threads = torch.get_num_threads()
    try:
        with FailsFirstOnThreads() as ex, pytest.raises(RuntimeError, match="worker lost"):
            sweeps.sweep(FAST, executor=ex, chunk=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert cache.load(keys[0]) is None and cache.load(keys[1]) is not None


def test_a_process_pool_worker_computes_with_one_torch_thread():
    with executors.open_executor("processes:1") as handle:
        handle.executor.submit(sweeps.compute_task, FAST).result()
        assert handle.executor.submit(torch.get_num_threads).result() == 1


KILLED_SWEEP = """
import pickle, sys
from moegeo import sweeps
cfg = pickle.load(open(sys.argv[1], "rb"))
sweeps.sweep(cfg, executor="serial", chunk=1, progress=False)
"""


def test_a_killed_sweep_reruns_only_its_missing_tasks(tmp_path):
    """SIGKILL a sweep (a real process) once its first task is stored; the rerun computes only
    the tasks without an entry, and the frame equals an uninterrupted run."""
    cfg = dataclasses.replace(FAST, seeds=tuple(range(4)))
    (tmp_path / "cfg.pkl").write_bytes(pickle.dumps(cfg))
    keys = [t.key for t in sweeps.tasks(cfg, chunk=1)]
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SWEEP, str(tmp_path / "cfg.pkl")], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while not any(cache.entry_path(k).exists() for k in keys):
            assert proc.poll() is None, "the sweep ended before its first task was stored"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    stored = {k for k in keys if cache.entry_path(k).exists()}
    assert 1 <= len(stored) < len(keys), "killed too late to test anything"
    res = sweeps.sweep(cfg, executor="serial", chunk=1, progress=False)
    assert {t.key for t in res.cached} == stored
    assert {t.key for t in res.computed} == set(keys) - stored
    ref = sweeps.sweep(cfg, executor="serial", chunk=1, cache=False, progress=False)
    assert_same_frames(res, ref)


def test_progress_counts_tasks_done_of_the_total_with_an_eta(capsys):
    sweeps.sweep({"a": FAST}, executor="serial", chunk=1, progress=True)
    err = capsys.readouterr().err
    assert "sweep on serial" in err and "3/3" in err and "<00:00" in err  # elapsed<remaining


# --------------------------------------------------------------------------- the cache under concurrency
LOAD_CACHE = """
import os, pickle, sys, time
from moegeo import cache
"""

RACING_WRITER = (
    LOAD_CACHE
    + """
key, frame_path, go, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
frame = pickle.load(open(frame_path, "rb"))
open(frame_path + ".ready", "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
for _ in range(n):
    cache.store(key, frame)
"""
)


def frame_of(value: float, n: int = 100_000) -> pd.DataFrame:
    return pd.DataFrame({"seed": range(n), "value": [value] * n})


def test_processes_racing_on_one_key_never_leave_a_bad_entry(tmp_path):
    """Two real processes store different frames under the same key over and over while this
    one reads it: every read is one writer's whole frame (or None before the first write)."""
    frames = [frame_of(1.0), frame_of(2.0)]
    go = tmp_path / "go"
    procs = []
    for i, f in enumerate(frames):
        path = tmp_path / f"frame{i}.pkl"
        path.write_bytes(pickle.dumps(f))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RACING_WRITER, "race", str(path), str(go), "100"], env=os.environ.copy()
            )
        )
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"frame{i}.pkl.ready").exists() for i in range(2)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.touch()
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unusable entry would warn
        while any(p.poll() is None for p in procs):
            got = cache.load("race")
            if got is not None:
                seen.append(float(got.value.iloc[0]))
                pd.testing.assert_frame_equal(got, frames[int(got.value.iloc[0]) - 1], check_exact=True)
        last = cache.load("race")
    assert [p.returncode for p in procs] == [0, 0]
    assert last is not None and float(last.value.iloc[0]) in (1.0, 2.0)
    assert seen, "no read overlapped the writers"
    assert not [p for p in cache.cache_dir().iterdir() if p.name.endswith(".tmp")], (
        "a finished writer left a temporary file"
    )


KILLED_WRITER = (
    LOAD_CACHE
    + """
key, frame_path, marker = sys.argv[1], sys.argv[2], sys.argv[3]
frame = pickle.load(open(frame_path, "rb"))


class SlowFile:
    \"\"\"Writes in 4 KiB pieces, slowly, and says when it is part way through.\"\"\"

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

    def write(self, data):
        for i in range(0, len(data), 4096):
            self.f.write(data[i:i + 4096])
            self.f.flush()
            if i == 4 * 4096:
                open(marker, "w").close()
            time.sleep(0.005)


class SlowOs:
    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fdopen(fd, mode):
        return SlowFile(os.fdopen(fd, mode))


cache.os = SlowOs()
cache.store(key, frame)
"""
)


def test_an_unreadable_entry_is_recomputed_but_not_deleted(monkeypatch):
    """A read error (a stale NFS handle, EIO) says nothing about the entry: it stays."""
    path = cache.store("k", pd.DataFrame({"a": [1]}))

    def stale(*args, **kwargs):
        raise OSError(116, "Stale file handle")

    with monkeypatch.context() as m:
        m.setattr(cache, "open", stale, raising=False)
        with pytest.warns(UserWarning, match="cannot read cache entry"):
            assert cache.load("k") is None
    assert path.exists() and cache.load("k").equals(pd.DataFrame({"a": [1]}))


def test_a_corrupt_entry_is_left_in_place_and_replaced_by_the_next_writer():
    """A reader that cannot use an entry never deletes it (another environment may read it, and a
    good entry may have been renamed in meanwhile); the next writer replaces it atomically."""
    path = cache.store("k", pd.DataFrame({"a": [1]}))
    path.write_bytes(b"garbage")
    with pytest.warns(cache.CacheWarning, match="is not used"):
        assert cache.load("k") is None
    assert path.read_bytes() == b"garbage"
    cache.store("k", pd.DataFrame({"a": [2]}))
    assert cache.load("k").equals(pd.DataFrame({"a": [2]}))


def test_a_failed_write_leaves_no_temporary_and_entries_are_readable_by_others(monkeypatch):
    assert "MOEGEO_CACHE" in os.environ  # the isolated cache, never the user's

    def fail(*args):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(cache.os, "replace", fail)
        with pytest.raises(OSError, match="No space"):
            cache.store("k", pd.DataFrame({"a": [1]}))
    assert not list(cache.cache_dir().glob(".k.*.tmp"))
    path = cache.store("k", pd.DataFrame({"a": [1]}))
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("before", ["no entry", "a good entry"])
def test_a_writer_killed_mid_write_leaves_the_old_entry_or_none(tmp_path, before):
    old, new = frame_of(1.0), frame_of(2.0)
    if before == "a good entry":
        cache.store("k", old)
    path, marker = tmp_path / "new.pkl", tmp_path / "half"
    path.write_bytes(pickle.dumps(new))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, "k", str(path), str(marker)], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the writer finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.001)
    finally:
        proc.kill()  # SIGKILL, part way through the write
        proc.wait()
    assert proc.returncode == -9
    tmp = list(cache.cache_dir().glob(".k.*.tmp"))
    assert len(tmp) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cache.load("k")
    if before == "no entry":
        assert got is None
    else:
        pd.testing.assert_frame_equal(got, old, check_exact=True)
    cache.store("k", new)  # the next writer is not disturbed by the debris
    pd.testing.assert_frame_equal(cache.load("k"), new, check_exact=True)
    assert 0 < tmp[0].stat().st_size < cache.entry_path("k").stat().st_size  # the debris was half-written


# --------------------------------------------------------------------------- the CLI and pytest claims/
TINY_ARGS = [
    "--seeds",
    "2",
    "--quiet",
    "--set",
    "n_experts=4",
    "d_model=8",
    "d_hidden=16",
    "n_samples=64",
    "steps=10",
    "record_every=5",
    "trajectory_points=16",
    "arms=topk+soft",
]


def test_cli_sweeps_a_grid_and_resumes_from_the_cache(capsys, tmp_path):
    args = ["sweep", "--executor", "serial", "--chunk", "1", "--grid", "top_k=1,2", "--csv", str(tmp_path / "f.csv")]
    assert main(args + TINY_ARGS) == 0
    out = capsys.readouterr().out
    assert "2 config(s) x 2 seed(s), 4 task(s) on serial: 4 computed, 0 from the cache" in out
    assert "top_k=1" in out and "top_k=2" in out and "soft" in out
    df = pd.read_csv(tmp_path / "f.csv")
    assert set(df.config) == {"top_k=1", "top_k=2"} and set(df.top_k) == {1, 2} and set(df.seed) == {0, 1}
    assert main(args + TINY_ARGS) == 0
    assert "0 computed, 4 from the cache" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--executor", "bogus"], "bad executor spec"),
        (["--grid", "nope=1,2"], "no field 'nope'"),
        (["--set", "seeds=3"], "no field 'seeds'"),
        (["--grid", "top_k"], "FIELD=V1,V2"),
        (["--grid", "top_k=one"], "top_k takes int"),
        (["--set", "arms=bogus"], "bogus"),
        (["--grid", "top_k=1", "--set", "top_k=2"], "both --set and --grid"),
        (["--chunk", "0"], "chunk must be"),
    ],
)
def test_cli_refuses_bad_input_clearly(capsys, args, message):
    with pytest.raises(SystemExit) as err:
        main(["sweep"] + args)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_pytest_claims_refuses_a_bad_executor(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "claims/", "--executor", "processes:0", "-q"],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 4, out.stdout + out.stderr  # pytest's usage error
    assert "--executor: bad executor spec 'processes:0'" in out.stderr
