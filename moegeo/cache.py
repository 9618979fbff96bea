"""On-disk cache of finished runs, keyed by the hash of the full config and package version.

An entry is ``<sha256 of payload>\\n<pickled {"key", "frame"}>``, written to a temporary file
in the cache directory and renamed into place (atomic on POSIX, and on NFS, where the rename is
one server operation). On read, a checksum or key mismatch or a payload that does not unpickle
means the entry is corrupt or stale: it is removed (unless another writer has replaced the file
meanwhile) and the run recomputed, never trusted. A file that cannot be read at all (a stale NFS
handle, a permission error) is not trusted either, but is left in place.
"""
from __future__ import annotations

import contextlib
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
    try:
        with open(path, "rb") as f:
            seen = os.fstat(f.fileno())
            blob = f.read()
    except FileNotFoundError:
        return None
    except OSError as err:  # unreadable now, not shown corrupt: recompute, keep the file
        warnings.warn(f"cannot read cache entry {path} ({err}); recomputing it")
        return None
    try:
        digest, payload = blob.split(b"\n", 1)
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise ValueError("checksum mismatch")
        entry = pickle.loads(payload)
        if entry["key"] != key:
            raise ValueError(f"entry holds key {entry['key']}")
        return entry["frame"]
    except Exception as err:  # the bytes read are not a valid entry: do not trust them
        warnings.warn(f"discarding corrupt cache entry {path}: {err}")
        with contextlib.suppress(OSError):
            now = os.stat(path)
            if (now.st_ino, now.st_dev, now.st_mtime_ns) == (seen.st_ino, seen.st_dev, seen.st_mtime_ns):
                path.unlink()  # still the file that was read, not a good one renamed in since
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
    """Write ``frame`` under ``key`` atomically."""
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    payload = pickle.dumps({"key": key, "frame": frame}, protocol=pickle.HIGHEST_PROTOCOL)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{key}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as an ordinary file: mkstemp's 0600 would hide a shared cache
        with os.fdopen(fd, "wb") as f:
            f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        path = d / f"{key}.pkl"
        os.replace(tmp, path)
    except BaseException:  # no half-written temporary left behind (a SIGKILL still can: never read)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def cached(cfg, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``compute()`` once per ``cfg.key()``; later calls read the stored frame."""
    key = cfg.key()
    frame = load(key)
    if frame is None:
        frame = compute()
        store(key, frame)
    return frame
