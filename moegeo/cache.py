"""On-disk cache of finished runs, keyed by the hash of the full config and package version.

An entry is ``<sha256 of payload>\\n<pickled {"key", "frame"}>``, written to a temporary file
and renamed into place (atomic on POSIX). On read, a checksum or key mismatch or an unreadable
file means the entry is corrupt or stale: it is removed and the run recomputed, never trusted.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import pandas as pd


def cache_dir() -> Path:
    """``$MOEGEO_CACHE``, else ``$XDG_CACHE_HOME/moegeo``, else ``~/.cache/moegeo``."""
    if "MOEGEO_CACHE" in os.environ:
        return Path(os.environ["MOEGEO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moegeo"


def load(key: str) -> pd.DataFrame | None:
    """The cached frame for ``key``, or None if absent, corrupt or stale."""
    path = cache_dir() / f"{key}.pkl"
    if not path.exists():
        return None
    try:
        blob = path.read_bytes()
        digest, payload = blob.split(b"\n", 1)
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise ValueError("checksum mismatch")
        entry = pickle.loads(payload)
        if entry["key"] != key:
            raise ValueError(f"entry holds key {entry['key']}")
        return entry["frame"]
    except Exception as err:  # any failure to read back means: do not trust it
        warnings.warn(f"discarding corrupt cache entry {path}: {err}")
        path.unlink(missing_ok=True)
        return None


def store(key: str, frame: pd.DataFrame) -> Path:
    """Write ``frame`` under ``key`` atomically."""
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    payload = pickle.dumps({"key": key, "frame": frame}, protocol=pickle.HIGHEST_PROTOCOL)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{key}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    path = d / f"{key}.pkl"
    os.replace(tmp, path)
    return path


def cached(cfg, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``compute()`` once per ``cfg.key()``; later calls read the stored frame."""
    key = cfg.key()
    frame = load(key)
    if frame is None:
        frame = compute()
        store(key, frame)
    return frame
