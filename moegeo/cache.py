"""On-disk cache of finished runs, keyed by ``cfg.key()`` (a hash of the full config and of moegeo's
version and source).

**Format.** An entry is one Parquet file, ``<key>.parquet``: the frame's columns, and in the
file's key-value metadata (under ``moegeo.cache``) a JSON record of the format, the key,
moegeo's version, the row count, every column's name with its Arrow type and pandas dtype, a
sha256 digest of the content and, when ``MOEGEO_CACHE_KEY`` is set, an HMAC-SHA256 signature of
that record. Loading parses Parquet and JSON only: nothing is unpickled, so no entry, whoever
wrote it, runs code when it is read. Files of the former pickle format (``<key>.pkl``) are
never opened.

**Reading.** An entry is used only when it parses, its record names this key and this version,
its columns and their types are those the record lists, the tidy columns have their kinds
(``setting, arm, reading, metric, config_key``: strings; ``seed, layer, expert, step,
index``: integers; ``value``: a number) and every other column is a number, a boolean, a string
or all-null (integers and booleans with no missing value), its ``config_key`` rows (if any) are
this key, the digest of its content matches and, with ``MOEGEO_CACHE_KEY`` set, its signature
verifies. Anything else is a miss: a
``CacheWarning`` names the file and the reason and the run is recomputed. A reader never deletes
an entry (another environment may read what this one cannot); the next writer replaces it.

**Writing.** The entry is serialised in memory, written to a temporary file in the cache
directory with the mode an ordinary file gets under the process's umask (group-writable where
the umask allows, for a shared cache) and renamed into place. Data and metadata are one file,
so a reader sees a whole old entry or a whole new one, never a mix (the rename is atomic on
POSIX and on NFS). ``store`` raises ``OSError`` when the file cannot be written; ``cached`` and
``try_store`` warn instead (naming the path and the error) and keep the result.

**What the cache trusts.** The digest detects accidental damage (a truncated or torn file,
flipped bytes). It authenticates nothing: anyone can recompute it, so whoever can write to the
cache directory can plant a well-formed entry under the right key with wrong numbers, and it
is read as a valid result. Without ``MOEGEO_CACHE_KEY`` a cache is trusted as far as every user
who can write to it. Guaranteed whatever is planted: loading executes no code; an entry with
another key or version, a schema or dtype violation or damaged content is a miss, recomputed.
Not defended: the resources a reader spends on a large planted file.

**Sharing a cache safely.** Either make the directory writable only by the users whose results
you accept (e.g. a group of them: ``chgrp team DIR; chmod 2770 DIR`` and ``umask 002``), or
set ``MOEGEO_CACHE_KEY`` to a secret that only the trusted writers hold (e.g. ``export
MOEGEO_CACHE_KEY=$(cat ~/.moegeo-cache-key)``, the file readable by its owner only). With the
secret set, entries are signed, and an entry whose signature is missing or does not verify is a
miss, recomputed and replaced by a signed one; a reader without the secret accepts signed and
unsigned entries alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._version import __version__

#: the entry format this module writes and reads
FORMAT = "moegeo-cache/2"
#: the Parquet key-value metadata key holding an entry's JSON record
META_KEY = b"moegeo.cache"
#: file name suffix of an entry
SUFFIX = ".parquet"
#: kinds the tidy frame's columns must have where present (other columns: any of the kinds)
TIDY_KINDS = {
    **dict.fromkeys(("setting", "arm", "reading", "metric", "config_key"), frozenset({"string"})),
    **dict.fromkeys(("seed", "layer", "expert", "step", "index"), frozenset({"integer"})),
    "value": frozenset({"integer", "float"}),
}
#: pandas dtypes a column may have, by the kind of its Arrow type
_PANDAS_DTYPES = {"string": frozenset({"str", "string", "object"}), "null": frozenset({"object"})}
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


class CacheWarning(UserWarning):
    """A cache entry was not used (unreadable, damaged, foreign) or could not be written."""


def cache_dir() -> Path:
    """``$MOEGEO_CACHE``, else ``$XDG_CACHE_HOME/moegeo``, else ``~/.cache/moegeo``. A
    ``MOEGEO_CACHE`` that is set but empty is a ``ValueError`` (it is not the current directory)."""
    if "MOEGEO_CACHE" in os.environ:
        value = os.environ["MOEGEO_CACHE"]
        if not value.strip():
            raise ValueError(
                "MOEGEO_CACHE is set but empty: unset it for the default cache "
                "($XDG_CACHE_HOME/moegeo or ~/.cache/moegeo) or set it to a directory"
            )
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moegeo"


def _secret() -> bytes | None:
    """The HMAC secret of ``$MOEGEO_CACHE_KEY``; None when unset, ``ValueError`` when set but empty."""
    value = os.environ.get("MOEGEO_CACHE_KEY")
    if value is None:
        return None
    if not value:
        raise ValueError(
            "MOEGEO_CACHE_KEY is set but empty: unset it, or set it to the secret shared by the cache's trusted writers"
        )
    return value.encode()


def entry_path(key: str) -> Path:
    """The file of ``key``'s entry. ``key`` is letters, digits, ``-`` and ``_`` (a ``cfg.key()``
    is hex); anything else is a ``ValueError``."""
    if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
        raise ValueError(f"a cache key is letters, digits, - and _ only, got {key!r}")
    return cache_dir() / f"{key}{SUFFIX}"


# --------------------------------------------------------------------------- schema and digest
def _kind(t: pa.DataType) -> str | None:
    """The kind of an Arrow type the cache accepts, or None."""
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_null(t):
        return "null"
    return None


def _check_columns(columns, schema: pa.Schema) -> None:
    """Raise ``ValueError`` unless ``columns`` (the record's list) describes ``schema`` exactly
    and every column has a kind the cache accepts (and its tidy kind, for a tidy column)."""
    fields = {"name", "arrow", "pandas"}
    if not isinstance(columns, list) or not all(
        isinstance(c, dict) and set(c) == fields and all(isinstance(v, str) for v in c.values()) for c in columns
    ):
        raise ValueError("the record's column list is malformed")
    names = [c["name"] for c in columns]
    if names != schema.names:
        raise ValueError(f"the file's columns {schema.names} are not the recorded {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate column names in {names}")
    for c, f in zip(columns, schema):
        if str(f.type) != c["arrow"]:
            raise ValueError(f"column {f.name!r} has type {f.type}, recorded {c['arrow']}")
        kind = _kind(f.type)
        if kind is None:
            raise ValueError(f"column {f.name!r} has type {f.type}, not a number, a boolean, a string or null")
        want = TIDY_KINDS.get(f.name)
        if want is not None and kind not in want:
            raise ValueError(f"column {f.name!r} must be {' or '.join(sorted(want))}, got {f.type}")
        allowed = _PANDAS_DTYPES.get(kind) or {str(np.dtype(f.type.to_pandas_dtype()))}
        if c["pandas"] not in allowed:
            raise ValueError(f"column {f.name!r} of type {f.type} cannot have pandas dtype {c['pandas']!r}")


def _digest(table: pa.Table) -> str:
    """sha256 of a table's content: every column's name, type, length, validity and values (strings
    as lengths and bytes, numbers and booleans as little-endian values), independent of how the
    table is chunked or laid out in memory."""
    h = hashlib.sha256()
    for name, column in zip(table.column_names, table.columns):
        arr = column.combine_chunks()
        h.update(json.dumps([name, str(arr.type), len(arr), arr.null_count]).encode() + b"\0")
        kind = _kind(arr.type)
        if kind == "null" or len(arr) == 0:
            continue
        if arr.null_count:
            h.update(np.packbits(arr.is_valid().to_numpy(zero_copy_only=False)).tobytes())
        if kind == "string":
            arr = pc.fill_null(arr, "").cast(pa.large_string())
            offsets = np.frombuffer(arr.buffers()[1], dtype="<i8")[arr.offset : arr.offset + len(arr) + 1]
            h.update(np.diff(offsets).astype("<i8").tobytes())
            data = arr.buffers()[2]
            if data is not None:
                h.update(memoryview(data)[offsets[0] : offsets[-1]])
        else:
            values = pc.fill_null(arr, False if kind == "boolean" else 0).to_numpy(zero_copy_only=False)
            h.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def _signature(record: dict, secret: bytes) -> str:
    """HMAC-SHA256 of the record without its signature, as canonical JSON."""
    body = json.dumps({k: v for k, v in record.items() if k != "hmac"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def _encode(key: str, frame: pd.DataFrame, secret: bytes | None) -> pa.Buffer:
    """The Parquet bytes of ``key``'s entry; ``ValueError`` for a frame the format cannot hold."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"the cache stores DataFrames, got {type(frame).__name__}")
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        raise ValueError("the cache stores frames with a default index (0, 1, ...): reset_index(drop=True) first")
    if not all(isinstance(c, str) for c in frame.columns) or frame.columns.has_duplicates:
        raise ValueError(f"the cache stores frames with distinct string column names, got {list(frame.columns)}")
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    columns = [{"name": f.name, "arrow": str(f.type), "pandas": str(frame[f.name].dtype)} for f in table.schema]
    _check_columns(columns, table.schema)
    record = {
        "format": FORMAT,
        "key": key,
        "version": __version__,
        "rows": table.num_rows,
        "columns": columns,
        "digest": _digest(table),
    }
    if secret is not None:
        record["hmac"] = _signature(record, secret)
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(record, sort_keys=True)}), sink)
    return sink.getvalue()


def _decode(key: str, blob: bytes, secret: bytes | None) -> pd.DataFrame:
    """The frame of an entry's bytes, or ``ValueError`` (or a Parquet error) saying why it is not
    ``key``'s valid entry."""
    table = pq.read_table(pa.BufferReader(blob))
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError("no moegeo record in the file")
    record = json.loads(raw)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} entry")
    if secret is not None:
        signature = record.get("hmac")
        if not isinstance(signature, str) or not hmac.compare_digest(signature, _signature(record, secret)):
            raise ValueError(
                "its signature does not verify with MOEGEO_CACHE_KEY (unsigned, or signed with another secret)"
            )
    if record.get("key") != key:
        raise ValueError(f"it holds key {record.get('key')!r}, not {key!r}")
    if record.get("version") != __version__:
        raise ValueError(f"it was written by moegeo {record.get('version')!r}, this is {__version__}")
    columns = record.get("columns")
    _check_columns(columns, table.schema)
    if record.get("rows") != table.num_rows:
        raise ValueError(f"it has {table.num_rows} rows, recorded {record.get('rows')!r}")
    for name, column in zip(table.column_names, table.columns):
        if column.null_count and _kind(column.type) in ("integer", "boolean"):
            raise ValueError(f"column {name!r} of type {column.type} has missing values")
    if "config_key" in table.column_names and table.num_rows:
        keys = set(table.column("config_key").unique().to_pylist())
        if keys != {key}:
            raise ValueError(f"its rows are of config_key {sorted(keys, key=str)}, not {key!r}")
    if record.get("digest") != _digest(table):
        raise ValueError("its content does not match its digest (damaged)")
    frame = table.replace_schema_metadata(None).to_pandas()
    for c in columns:
        if str(frame[c["name"]].dtype) != c["pandas"]:
            frame[c["name"]] = frame[c["name"]].astype(c["pandas"])
    return frame


# --------------------------------------------------------------------------- load and store
def load(key: str) -> pd.DataFrame | None:
    """The cached frame for ``key``, or None when there is no usable entry (none, unreadable,
    damaged, of another key or version, not signed with ``MOEGEO_CACHE_KEY`` when that is set;
    all but the first warn with a ``CacheWarning``). Never executes code from the entry and never
    deletes it."""
    path = entry_path(key)
    secret = _secret()
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        warnings.warn(
            f"cannot read cache entry {path} ({err}); recomputing it (the entry is left in place)",
            CacheWarning,
            stacklevel=2,
        )
        return None
    try:
        return _decode(key, blob, secret)
    except Exception as err:  # whatever the bytes are, they are not this key's valid entry
        warnings.warn(
            f"cache entry {path} is not used: {err}; recomputing it (the entry is left in place for the "
            "next writer to replace)",
            CacheWarning,
            stacklevel=2,
        )
        return None


def _umask() -> int:
    """This process's umask, read without setting it (``os.umask`` would change it for every
    thread for a moment); 0o022 where /proc does not say."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return 0o022


def store(key: str, frame: pd.DataFrame) -> Path:
    """Write ``frame`` as ``key``'s entry atomically (signed when ``MOEGEO_CACHE_KEY`` is set) and
    return its path. The file gets mode ``0o666 & ~umask``. A failed write raises ``OSError`` and
    leaves no temporary file; a frame the format cannot hold (a non-default index, non-string
    column names, a column that is not numbers, booleans, strings or all-null) is a ``ValueError``
    raised before anything is written."""
    path = entry_path(key)
    blob = _encode(key, frame, _secret())
    d = path.parent
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{key}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as an ordinary file: mkstemp's 0600 would hide a shared cache
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(blob))
        os.replace(tmp, path)
    except BaseException:  # no half-written temporary left behind (a SIGKILL still can: never read)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def try_store(key: str, frame: pd.DataFrame) -> Path | None:
    """``store``, except that a write that fails with ``OSError`` (a read-only directory, a full
    disk, a file-size limit) gives a ``CacheWarning`` naming the path and the error and returns
    None."""
    try:
        return store(key, frame)
    except OSError as err:
        warnings.warn(
            f"cannot write cache entry {entry_path(key)} ({err}); the result is returned but not cached",
            CacheWarning,
            stacklevel=2,
        )
        return None


def cached(cfg, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``compute()`` once per ``cfg.key()``: later calls read the stored frame. A result that
    cannot be written to the cache is returned all the same (with a ``CacheWarning``)."""
    key = cfg.key()
    frame = load(key)
    if frame is None:
        frame = compute()
        try_store(key, frame)
    return frame
