"""The cache (moegeo.cache) against planted and damaged entries and failed writes: no entry runs
code when read, schema and dtype violations and foreign entries are misses that are recomputed and
left in place, a digest detects damage but authenticates nothing (an HMAC secret does), a write
that fails keeps the result, entries get the umask's mode."""

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import moegeo
from moegeo import ExperimentConfig, cache, experiment
from moegeo.cli import main

TINY = ExperimentConfig(
    n_experts=4, d_model=8, d_hidden=16, n_samples=64, steps=20, record_every=10, trajectory_points=16, seeds=(0, 1)
)
SWEEP_ARGS = [
    "sweep",
    "--executor",
    "serial",
    "--chunk",
    "1",
    "--grid",
    "top_k=1,2",
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


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MOEGEO_CACHE_KEY", raising=False)


@pytest.fixture(scope="module")
def tiny_frame():
    return experiment.run(TINY, cache=False, progress=False)


class Planted:
    """Unpickling this creates the file ``marker``: the proof that a load ran planted code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def old_format_entry(key: str, marker: Path) -> bytes:
    """An entry of the former format (sha256 line + pickle) whose unpickling runs code."""
    payload = pickle.dumps({"key": key, "frame": Planted(marker)})
    return hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def tidy_frame(key: str, n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A frame with the tidy frame's columns and kinds, config columns included."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "setting": "mlp",
            "seed": rng.integers(0, 3, n),
            "arm": rng.choice(["topk", "soft"], n),
            "layer": 0,
            "expert": rng.integers(-1, 4, n),
            "reading": rng.choice(["jacobian=mean", "pca_site=input"], n),
            "metric": rng.choice(["sigma1", "cosine"], n),
            "step": 10,
            "index": -1,
            "value": rng.normal(size=n),
            "n_experts": 4,
            "lr": 1e-3,
            "data": None,
            "config_key": key,
        }
    )


def describe(table: pa.Table) -> list[dict]:
    """The record's column list that describes ``table`` truthfully."""
    pandas_name = {"string": "str", "large_string": "str", "null": "object", "double": "float64"}
    return [
        {"name": f.name, "arrow": str(f.type), "pandas": pandas_name.get(str(f.type), str(f.type))}
        for f in table.schema
    ]


def plant(key: str, table: pa.Table, columns=None, record=None) -> Path:
    """Write ``table`` as ``key``'s entry the way an outsider could: a record that describes it
    (or ``columns``), its digest recomputed, ``record`` overriding any field."""
    if columns is None:
        columns = describe(table)
    try:
        digest = cache._digest(table)
    except Exception:  # a type the cache does not hash: the schema check must refuse it first
        digest = "0" * 64
    rec = {
        "format": cache.FORMAT,
        "key": key,
        "version": moegeo.__version__,
        "rows": table.num_rows,
        "columns": columns,
        "digest": digest,
        **(record or {}),
    }
    path = cache.entry_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({cache.META_KEY: json.dumps(rec)}), path)
    return path


def table_of(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)


def count_computes(monkeypatch) -> list:
    calls = []
    real = experiment._compute
    monkeypatch.setattr(experiment, "_compute", lambda *a: calls.append(1) or real(*a))
    return calls


# --------------------------------------------------------------------------- no code execution
def test_a_planted_pickle_is_never_loaded_nor_executed(tmp_path, tiny_frame, monkeypatch):
    """A pickle that runs code when unpickled, planted under the former name (``<key>.pkl``, with
    a valid sha256 line) and under the entry's name: ``run(cfg)`` executes neither and computes."""
    marker = tmp_path / "pwned"
    key = TINY.key()
    d = cache.cache_dir()
    d.mkdir(parents=True)
    (d / f"{key}.pkl").write_bytes(old_format_entry(key, marker))
    cache.entry_path(key).write_bytes(pickle.dumps(Planted(marker)))
    calls = count_computes(monkeypatch)
    with pytest.warns(cache.CacheWarning, match="is not used"):
        df = experiment.run(TINY, progress=False)
    assert not marker.exists()
    assert calls == [1]
    pd.testing.assert_frame_equal(df, tiny_frame, check_exact=True)
    pd.testing.assert_frame_equal(cache.load(key), tiny_frame, check_exact=True)  # replaced by the writer


def test_a_planted_pickle_does_not_run_through_the_sweep_cli(tmp_path, capsys):
    """``python -m moegeo sweep`` over entries all replaced by code-running pickles (and the same
    under the former ``.pkl`` names): nothing runs, every task is recomputed, the same table prints."""
    marker = tmp_path / "pwned"
    assert main(SWEEP_ARGS) == 0
    first = capsys.readouterr().out.splitlines()
    entries = sorted(cache.cache_dir().glob("*.parquet"))
    assert len(entries) == 4
    for path in entries:
        key = path.name.removesuffix(".parquet")
        path.write_bytes(pickle.dumps(Planted(marker)))
        path.with_suffix(".pkl").write_bytes(old_format_entry(key, marker))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(SWEEP_ARGS) == 0
    second = capsys.readouterr().out.splitlines()
    assert not marker.exists()
    assert "4 computed, 0 from the cache" in second[0]
    assert second[1:] == first[1:]


def test_a_pickle_in_parquet_extension_metadata_does_not_run(tmp_path):
    """Arrow's former pickle-based extension type (``arrow.py_extension_type``) declared on a column
    with a code-running pickle as its metadata: reading the entry does not unpickle it."""
    marker = tmp_path / "pwned"
    frame = tidy_frame("k")
    table = table_of(frame)
    i = table.schema.get_field_index("value")
    field = table.schema.field(i).with_metadata(
        {
            b"ARROW:extension:name": b"arrow.py_extension_type",
            b"ARROW:extension:metadata": pickle.dumps(Planted(marker)),
        }
    )
    plant("k", table.set_column(i, field, table.column(i)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = cache.load("k")
    assert not marker.exists()
    assert got is None or got.equals(frame)


# --------------------------------------------------------------------------- what a digest can and cannot defend
def test_a_well_formed_planted_entry_is_read_without_a_secret_and_rejected_with_one(monkeypatch, tiny_frame):
    """Wrong numbers under the right key with a recomputed digest are a valid entry to a digest:
    without ``MOEGEO_CACHE_KEY`` they are read (the documented limit: a cache is trusted as far as
    its writers). With the secret, an entry it did not sign is a miss, recomputed and replaced by a
    signed entry; an entry signed with another secret is a miss too."""
    key = TINY.key()
    wrong = tiny_frame.assign(value=tiny_frame.value + 1.0)
    cache.store(key, wrong)
    calls = count_computes(monkeypatch)
    pd.testing.assert_frame_equal(experiment.run(TINY, progress=False), wrong, check_exact=True)
    assert calls == []

    monkeypatch.setenv("MOEGEO_CACHE_KEY", "the trusted writers' secret")
    with pytest.warns(cache.CacheWarning, match="signature does not verify"):
        pd.testing.assert_frame_equal(experiment.run(TINY, progress=False), tiny_frame, check_exact=True)
    assert calls == [1]
    pd.testing.assert_frame_equal(experiment.run(TINY, progress=False), tiny_frame, check_exact=True)
    assert calls == [1]  # the signed entry is read

    monkeypatch.setenv("MOEGEO_CACHE_KEY", "an outsider's secret")
    cache.store(key, wrong)
    monkeypatch.setenv("MOEGEO_CACHE_KEY", "the trusted writers' secret")
    with pytest.warns(cache.CacheWarning, match="signature does not verify"):
        assert cache.load(key) is None
    monkeypatch.delenv("MOEGEO_CACHE_KEY")
    pd.testing.assert_frame_equal(cache.load(key), wrong, check_exact=True)  # without the secret: read as is


def test_a_signed_entry_whose_record_is_edited_is_rejected(monkeypatch):
    """The signature covers the whole record (key, version, columns, digest): editing it, e.g. to
    match changed values, breaks the signature."""
    monkeypatch.setenv("MOEGEO_CACHE_KEY", "s3cret")
    frame = tidy_frame("k")
    path = cache.store("k", frame)
    record = json.loads(pq.read_schema(path).metadata[cache.META_KEY])
    table = table_of(frame.assign(value=frame.value * 2))
    record["digest"] = cache._digest(table)
    pq.write_table(table.replace_schema_metadata({cache.META_KEY: json.dumps(record)}), path)
    with pytest.warns(cache.CacheWarning, match="signature does not verify"):
        assert cache.load("k") is None


# --------------------------------------------------------------------------- schema, dtypes, key, version
def _violations():
    f = tidy_frame("k")
    t = table_of(f)

    def swap(name, frame):
        return t.set_column(t.schema.get_field_index(name), name, table_of(frame[[name]]).column(0))

    unknown = [dict(c, pandas="x") for c in describe(t)]
    extra = describe(t) + [{"name": "extra", "arrow": "int64", "pandas": "int64"}]
    retyped, narrowed = describe(t), describe(t)
    retyped[1]["arrow"] = "int32"  # seed
    narrowed[1]["pandas"] = "int8"
    return {
        "value as strings": (swap("value", f.assign(value=f.value.astype(str))), None, {}, "column 'value' must be"),
        "seed as floats": (
            swap("seed", f.assign(seed=f.seed.astype(float))),
            None,
            {},
            "column 'seed' must be integer",
        ),
        "arm as integers": (swap("arm", f.assign(arm=1)), None, {}, "column 'arm' must be string"),
        "a binary column": (t.append_column("blob", pa.array([b"x"] * len(f))), None, {}, "not a number"),
        "integers with missing values": (
            t.set_column(1, "seed", pa.array([None] + [1] * (len(f) - 1), pa.int64())),
            None,
            {},
            "column 'seed' of type int64 has missing values",
        ),
        "booleans with missing values": (
            t.append_column("flag", pa.array([None, True] * (len(f) // 2))),
            None,
            {},
            "column 'flag' of type bool has missing values",
        ),
        "a list column": (t.append_column("lst", pa.array([[1]] * len(f))), None, {}, "column 'lst' has type"),
        "columns not as recorded": (t, extra, {}, "are not the recorded"),
        "a type not as recorded": (t, retyped, {}, "recorded int32"),
        "a pandas dtype that does not fit": (t, narrowed, {}, "cannot have pandas dtype 'int8'"),
        "an unknown pandas dtype": (t, unknown, {}, "cannot have pandas dtype 'x'"),
        "a malformed column list": (t, "seed,value", {}, "malformed"),
        "rows of another config": (swap("config_key", f.assign(config_key="other")), None, {}, "config_key"),
        "another key": (t, None, {"key": "other"}, "holds key 'other'"),
        "another version": (t, None, {"version": "0.0.1"}, "written by moegeo '0.0.1'"),
        "another format": (t, None, {"format": "moegeo-cache/1"}, "not a moegeo-cache/2 entry"),
        "a wrong row count": (t, None, {"rows": 3}, "recorded 3"),
        "a wrong digest": (t, None, {"digest": "0" * 64}, "does not match its digest"),
    }


VIOLATIONS = _violations()


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_a_schema_dtype_key_or_digest_violation_is_a_miss_left_in_place(case):
    table, columns, record, why = VIOLATIONS[case]
    path = plant("k", table, columns, record)
    before = path.read_bytes()
    with pytest.warns(cache.CacheWarning, match="is not used") as got:
        assert cache.load("k") is None
    assert why in str(got[0].message) and str(path) in str(got[0].message)
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"PAR1", b"not parquet at all", "no record", "bad json", "a JSON list"])
def test_a_file_that_is_not_an_entry_is_a_miss_left_in_place(content):
    path = cache.entry_path("k")
    path.parent.mkdir(parents=True)
    t = table_of(tidy_frame("k"))
    if content == "no record":
        pq.write_table(t, path)
    elif content == "bad json":
        pq.write_table(t.replace_schema_metadata({cache.META_KEY: b"{not json"}), path)
    elif content == "a JSON list":
        pq.write_table(t.replace_schema_metadata({cache.META_KEY: b"[1, 2]"}), path)
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.warns(cache.CacheWarning, match="is not used"):
        assert cache.load("k") is None
    assert path.read_bytes() == before


def test_a_tidy_frame_round_trips_exactly_with_its_dtypes(tiny_frame):
    for frame in (
        tiny_frame,
        tidy_frame("k"),
        pd.DataFrame({"a": pd.Series([], dtype="int64")}),
        pd.DataFrame({"o": pd.Series(["x", "y"], dtype=object), "b": [True, False], "f": [np.nan, -0.0]}),
    ):
        key = frame.config_key.iloc[0] if "config_key" in frame else "k"
        cache.store(key, frame)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = cache.load(key)
        pd.testing.assert_frame_equal(got, frame, check_exact=True)
        assert list(got.dtypes.astype(str)) == list(frame.dtypes.astype(str))


def test_a_frame_the_format_cannot_hold_is_refused_before_writing():
    for frame, why in [
        (pd.DataFrame({"a": [1, 2]}, index=[5, 6]), "default index"),
        (pd.DataFrame({0: [1]}), "string column names"),
        (pd.DataFrame({"a": pd.to_datetime(["2020-01-01"])}), "not a number"),
        (pd.DataFrame({"value": ["x"]}), "column 'value' must be"),
    ]:
        with pytest.raises(ValueError, match=why):
            cache.store("k", frame)
    assert not cache.cache_dir().exists() or not list(cache.cache_dir().iterdir())


@pytest.mark.parametrize("key", ["", "../escape", ".hidden", "a/b", "k\n"])
def test_a_key_that_is_not_a_plain_name_is_refused(key):
    with pytest.raises(ValueError, match="a cache key is"):
        cache.store(key, pd.DataFrame({"a": [1]}))
    with pytest.raises(ValueError, match="a cache key is"):
        cache.load(key)


# --------------------------------------------------------------------------- damage
def test_truncated_or_flipped_bytes_never_read_as_other_numbers():
    """Every truncation and a byte flip at 200 positions spread over the file (data pages,
    footer, record): each load is a miss or the very frame stored, never another one; the flips
    inside the data are caught."""
    frame = tidy_frame("k", n=300)
    path = cache.store("k", frame)
    good = path.read_bytes()
    misses = 0
    positions = sorted(set(np.linspace(0, len(good) - 1, 200).astype(int)))
    damaged = [good[:n] for n in range(0, len(good), max(1, len(good) // 50))]
    damaged += [good[:p] + bytes([good[p] ^ 0x5A]) + good[p + 1 :] for p in positions]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cache.CacheWarning)
        for blob in damaged:
            path.write_bytes(blob)
            got = cache.load("k")
            if got is None:
                misses += 1
            else:
                pd.testing.assert_frame_equal(got, frame, check_exact=True)
    assert misses > len(damaged) // 2


# --------------------------------------------------------------------------- readers never delete
def test_an_entry_of_another_environment_is_a_miss_and_is_not_deleted(monkeypatch, tiny_frame):
    """An entry this moegeo cannot use (here: written by another version) is left for its writer;
    ``run`` recomputes it, and only the writer of the new result replaces it."""
    key = TINY.key()
    with monkeypatch.context() as m:
        m.setattr(cache, "__version__", "9.9.9")
        path = cache.store(key, tiny_frame)
    foreign = path.read_bytes()
    for _ in range(2):
        with pytest.warns(cache.CacheWarning, match="written by moegeo '9.9.9'"):
            assert cache.load(key) is None
        assert path.read_bytes() == foreign
    inode = path.stat().st_ino
    with pytest.warns(cache.CacheWarning, match="written by moegeo"):
        pd.testing.assert_frame_equal(experiment.run(TINY, progress=False), tiny_frame, check_exact=True)
    assert path.stat().st_ino != inode  # renamed into place, not rewritten in place
    pd.testing.assert_frame_equal(cache.load(key), tiny_frame, check_exact=True)


# --------------------------------------------------------------------------- failed writes keep the result
class Cfg:
    """The one thing ``cache.cached`` asks of a config: its key."""

    def key(self):
        return "k"


@contextlib.contextmanager
def unprivileged():
    """Run the block as an unprivileged user when this process is root (whom permission bits do not
    stop), so that a read-only directory is read-only."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_a_read_only_cache_directory_warns_and_returns_the_result(tiny_frame, monkeypatch):
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        d = base / "cache"
        d.mkdir()
        d.chmod(0o555)
        monkeypatch.setenv("MOEGEO_CACHE", str(d))
        frame = tidy_frame("k")
        with unprivileged(), pytest.warns(cache.CacheWarning, match="cannot write cache entry") as got:
            assert cache.cached(Cfg(), lambda: frame) is frame
        assert str(d / "k.parquet") in str(got[0].message) and "Permission denied" in str(got[0].message)
        assert not list(d.iterdir())
        with pytest.raises(OSError), unprivileged():
            cache.store("k", frame)  # store itself still raises
    finally:
        d.chmod(0o755)
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
        base.rmdir()


class FullDisk:
    """Stands in for ``os`` in moegeo.cache: files it opens fail to write with ENOSPC."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fdopen(fd, mode):
        f = os.fdopen(fd, mode)

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return f.__exit__(*exc)

            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return Full()


def test_a_full_disk_warns_and_returns_the_result_of_run(monkeypatch, tiny_frame):
    monkeypatch.setattr(cache, "os", FullDisk())
    with pytest.warns(cache.CacheWarning, match="cannot write cache entry") as got:
        df = experiment.run(TINY, progress=False)
    pd.testing.assert_frame_equal(df, tiny_frame, check_exact=True)
    message = str(got[0].message)
    assert str(cache.entry_path(TINY.key())) in message and "No space left on device" in message
    assert not list(cache.cache_dir().iterdir())  # no entry, no temporary


FILE_SIZE_LIMIT = """
import resource, warnings
import numpy as np, pandas as pd
from moegeo import cache
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
class Cfg:
    def key(self):
        return "big"
frame = pd.DataFrame({"value": np.arange(100_000, dtype=float)})
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    assert cache.cached(Cfg(), lambda: frame) is frame
print(w[0].message)
"""


def test_a_file_size_limit_warns_and_returns_the_result():
    out = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT], env=os.environ.copy(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "cannot write cache entry" in out.stdout and "File too large" in out.stdout
    assert not cache.entry_path("big").exists()


# --------------------------------------------------------------------------- mode and settings
@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_an_entry_gets_the_mode_of_an_ordinary_file_and_keeps_it(umask):
    old = os.umask(umask)
    try:
        path = cache.store("k", pd.DataFrame({"a": [1]}))
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
        path.chmod(0o600)
        path = cache.store("k", pd.DataFrame({"a": [2]}))  # a new file, with the umask's mode again
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
        assert cache.load("k").equals(pd.DataFrame({"a": [2]}))
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # reading changes nothing
    finally:
        os.umask(old)


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_moegeo_cache_is_refused(monkeypatch, tmp_path, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOEGEO_CACHE", value)
    monkeypatch.setattr(experiment, "_compute", lambda *a: pytest.fail("computed before the setting was checked"))
    for call in (cache.cache_dir, lambda: experiment.run(TINY, progress=False)):
        with pytest.raises(ValueError, match="MOEGEO_CACHE is set but empty"):
            call()
    assert not list(tmp_path.iterdir())


def test_an_empty_moegeo_cache_key_is_refused(monkeypatch):
    monkeypatch.setenv("MOEGEO_CACHE_KEY", "")
    with pytest.raises(ValueError, match="MOEGEO_CACHE_KEY is set but empty"):
        cache.store("k", pd.DataFrame({"a": [1]}))


def test_signed_entries_are_read_by_readers_without_the_secret(monkeypatch):
    monkeypatch.setenv("MOEGEO_CACHE_KEY", "s3cret")
    frame = tidy_frame("k")
    path = cache.store("k", frame)
    assert "hmac" in json.loads(pq.read_schema(path).metadata[cache.META_KEY])
    monkeypatch.delenv("MOEGEO_CACHE_KEY")
    pd.testing.assert_frame_equal(cache.load("k"), frame, check_exact=True)


def test_the_sweep_keeps_results_it_cannot_cache(monkeypatch):
    from moegeo import sweeps

    cfg = dataclasses.replace(TINY, steps=10, record_every=5, seeds=(0, 1))
    monkeypatch.setattr(cache, "os", FullDisk())
    with pytest.warns(cache.CacheWarning, match="cannot write cache entry"):
        res = sweeps.sweep(cfg, executor="serial", chunk=1, progress=False)
    assert len(res.computed) == 2 and set(res.frames["0"].seed) == {0, 1}
