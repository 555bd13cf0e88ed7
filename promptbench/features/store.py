"""A content-keyed store of frozen image-tower outputs: process memory (LRU) in front of a disk folder.

An entry is one float32 matrix (N, E) under a hex key that hashes everything the matrix depends on (see
:mod:`promptbench.features.keys`); a different backbone, image, transform, view or precision is a different key,
so an entry is never stale, only unused. On disk an entry is ``<root>/<key[:2]>/<key>.npy`` plus ``<key>.json``:
what it holds (for ``promptbench cache list``) and its key, shape, dtype and the sha256 of the array's bytes,
all verified on every read together with the shape the caller expects and finite values; an entry failing any
check is recomputed and replaced, never used. Entries are written once: to a temporary file in the same folder,
then ``os.replace`` (atomic on POSIX and on NFS within one folder), so a reader sees a whole entry or none. A
per-key file lock (``filelock``) lets concurrent workers or SLURM jobs wait for the one that is computing an entry
instead of computing it twice; where locks do not work (some shared filesystems) each process computes and the
identical results replace each other atomically. A folder that cannot be written (full, read-only) degrades the
store to process memory with one warning: the cache only ever costs time.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import Tensor

from promptbench.core.fileio import write_atomic

log = logging.getLogger("promptbench")

__all__ = ["FeatureStore", "memory_cache", "array_checksum", "FORMAT"]

FORMAT = 2  # sidecar with "sha256" (format 1, before it: no checksum; recomputed once on first read)
_WARNED: set[str] = set()  # one warning per process and (folder or entry, problem)
_UNWRITABLE: dict[Path, str] = {}  # folders this process failed to write: entries stay in memory


class _Memory:
    """Process-wide LRU of entries (shared by every store and cell of a process, e.g. a joblib worker)."""

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, Tensor] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        if key in self._items:
            old = self._items.pop(key)
            self._bytes -= old.numel() * old.element_size()
        self._items[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


memory_cache = _Memory()


_OLD = "has no checksum (written by an older promptbench)"
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def array_checksum(array: np.ndarray) -> str:
    """sha256 (hex) of the array's C-order bytes (hardware-accelerated: ~10 ms for a 7,500 x 512 float32 entry)."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _warn_once(tag: str, message: str) -> None:
    if tag in _WARNED:
        log.debug(message)
        return
    _WARNED.add(tag)
    log.warning(message)


def _fits(value: Tensor, rows: int | None, cols: int | None) -> bool:
    return value.dim() == 2 and (rows is None or value.shape[0] == rows) and (cols is None or value.shape[1] == cols)


def _sidecar_problem(meta: dict[str, Any], key: str, rows: int | None, cols: int | None) -> str | None:
    """What the sidecar contradicts: the key asked for, float32, a 2-D shape, the expected rows and columns."""
    shape = meta.get("shape")
    if meta.get("key") != key:
        return f"has the sidecar of another key ({str(meta.get('key'))[:16]})"
    if meta.get("dtype") != "float32":
        return f"has dtype {meta.get('dtype')}, not float32"
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int and n >= 0 for n in shape)):
        return f"has shape {shape}, not (rows, embedding)"
    if rows is not None and shape[0] != rows:
        return f"has {shape[0]} rows where {rows} are expected"
    if cols is not None and shape[1] != cols:
        return f"has {shape[1]} columns where the embedding has {cols}"
    if not isinstance(meta.get("sha256"), str):
        return "has no sha256 string in its sidecar"
    return None


class FeatureStore:
    """``get_or_compute(key, compute, meta)``: memory → verified disk entry → ``compute()`` (then saved to both).

    ``root=None`` keeps entries in process memory only. ``lock_timeout`` bounds the wait for another process
    computing the same entry; after it this process computes the entry itself. ``hits`` counts where entries came
    from, and ``rejected`` the disk entries that failed verification (each recomputed).
    """

    def __init__(self, root: str | Path | None, *, memory: bool = True, lock_timeout: float = 900.0):
        self.root = Path(root) if root is not None else None
        self.memory = memory or self.root is None  # a store without a folder keeps entries in memory
        self.lock_timeout = float(lock_timeout)
        self.hits = {"memory": 0, "disk": 0, "computed": 0, "rejected": 0}

    # -- paths ---------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        if self.root is None:
            raise RuntimeError("this feature store has no disk folder")
        return self.root / key[:2] / f"{key}.npy"

    @property
    def writable(self) -> bool:
        """False without a folder, or once this process failed to write it (full, read-only)."""
        return self.root is not None and self.root not in _UNWRITABLE

    def _in_memory(self) -> bool:
        return self.memory or not self.writable  # an unwritable folder degrades the store to memory

    # -- access --------------------------------------------------------------------------------------
    def get(self, key: str, rows: int | None = None, cols: int | None = None, *, warn: bool = True) -> Tensor | None:
        """The entry (float32, CPU, shape (rows, cols) where given) or None. A disk entry that fails verification
        counts as missing, with one warning naming it (``warn=False``: silently, for a read retried under the lock).
        """
        if self._in_memory() and (value := memory_cache.get(key)) is not None and _fits(value, rows, cols):
            self.hits["memory"] += 1
            return value
        if self.root is None:
            return None
        value, problem = self.read(key, rows, cols)
        if problem is not None:
            if warn:
                self.hits["rejected"] += 1
                self._report(key, problem)
            return None
        if value is None:
            return None
        self.hits["disk"] += 1
        if self._in_memory():
            memory_cache.put(key, value)
        return value

    def read(self, key: str, rows: int | None = None, cols: int | None = None) -> tuple[Tensor | None, str | None]:
        """``(entry, None)`` for a verified disk entry, ``(None, None)`` when there is none, ``(None, problem)``
        for one that is unreadable, contradicts its sidecar or the expected shape, fails its checksum or holds
        non-finite values."""
        path = self.path(key)
        try:
            if not path.is_file():
                return None, None
            text = path.with_suffix(".json").read_text()
        except FileNotFoundError:
            return None, _OLD  # no sidecar: a stray file, or one the first version wrote before its sidecar
        except OSError as err:
            return None, f"is unreadable ({err.strerror or err})"
        try:
            meta = json.loads(text)
        except ValueError:
            return None, "has an unreadable sidecar (.json)"
        if not isinstance(meta, dict):
            return None, "has an unreadable sidecar (.json)"
        if "sha256" not in meta:
            return None, _OLD
        if (problem := _sidecar_problem(meta, key, rows, cols)) is not None:
            return None, problem
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as err:  # empty, truncated or foreign file: numpy raises several kinds
            return None, f"is unreadable ({type(err).__name__}: {err})"
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or list(array.shape) != meta["shape"]:
            what = f"{array.dtype} {list(array.shape)}" if isinstance(array, np.ndarray) else type(array).__name__
            return None, f"holds {what} where its sidecar says float32 {meta['shape']}"
        if not array.flags.c_contiguous:
            return None, "is not stored in C order"
        if array_checksum(array) != meta["sha256"]:
            return None, "fails its checksum (its content changed after it was written)"
        if not np.isfinite(array).all():
            return None, "holds non-finite values"
        return torch.from_numpy(array), None

    def _report(self, key: str, problem: str) -> None:
        entry = f"{key[:2]}/{key}.npy"
        if problem == _OLD:
            _warn_once(f"{self.root}:old", f"feature cache {self.root}: entry {entry} {problem}; recomputing it and "
                                           f"every other entry without a checksum once (this warning is not repeated)")
        else:
            _warn_once(f"{self.root}/{entry}:{problem}",
                       f"feature cache {self.root}: entry {entry} {problem}; recomputing it (it is never used)")

    def put(self, key: str, value: Tensor, meta: dict[str, Any] | None = None) -> Tensor:
        """Keep ``value`` (float32, CPU) in memory and, with its checksum, on disk. A folder that cannot be written
        degrades this process's stores of it to memory (one warning); a non-finite or non-2-D value stays off disk
        (it could never pass verification)."""
        value = value.detach().to("cpu", torch.float32).contiguous()
        if self._in_memory():
            memory_cache.put(key, value)
        if not self.writable:
            return value
        array = value.numpy()
        if array.ndim != 2 or not np.isfinite(array).all():
            log.debug("feature cache: entry %s is not a finite matrix; not written to disk", key)
            return value
        path = self.path(key)
        info = {**(meta or {}), "key": key, "shape": list(array.shape), "dtype": "float32", "format": FORMAT,
                "sha256": array_checksum(array), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path.with_suffix(".json"), json.dumps(info, sort_keys=True))
            write_atomic(path, lambda f: np.save(f, array, allow_pickle=False))
        except OSError as err:
            self._stop_writing(err)
            memory_cache.put(key, value)
        return value

    def _stop_writing(self, err: OSError) -> None:
        reason = str(err.strerror or err) + (f": {err.filename}" if err.filename else "")
        _UNWRITABLE[self.root] = reason
        _warn_once(f"{self.root}:unwritable",
                   f"feature cache {self.root} cannot be written ({reason}); keeping features in memory for this "
                   f"process (free space, fix permissions, or set paths.cache_dir=DIR)")

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the cross-process lock of ``key`` (no-op without a writable folder or where locks fail)."""
        if not self.writable:
            yield
            return
        lock_path = self.path(key).with_suffix(".lock")
        lock = FileLock(str(lock_path), timeout=self.lock_timeout)
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._stop_writing(err)
            yield
            return
        try:
            lock.acquire()
        except Timeout as err:
            _warn_once(f"{self.root}:timeout", f"feature cache lock {lock_path} still held after "
                                               f"{self.lock_timeout:.0f} s ({err}); computing without it")
            yield
            return
        except (OSError, NotImplementedError) as err:
            if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
                self._stop_writing(err)
            else:
                _warn_once(f"{self.root}:lock", f"feature cache {self.root}: file locks unavailable ({err}); "
                                                f"processes may compute an entry twice (with identical results)")
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def get_or_compute(self, key: str, compute: Callable[[], Tensor], meta: dict[str, Any] | None = None,
                       rows: int | None = None, cols: int | None = None) -> Tensor:
        """The entry of ``key``; computed (once across processes where file locks work) when missing or when
        the disk entry fails verification. ``rows`` / ``cols``: the expected shape (rows, embedding dim)."""
        value = self.get(key, rows, cols, warn=False)
        if value is not None:
            return value
        with self.lock(key):
            value = self.get(key, rows, cols)  # another process may have written it meanwhile
            if value is None:
                self.hits["computed"] += 1
                value = self.put(key, compute(), meta)
        return value

    # -- maintenance ---------------------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        """Metadata of every complete disk entry (``.npy`` present), sorted by creation time (not verified:
        ``checked`` is false for entries without a checksum)."""
        if self.root is None or not self.root.is_dir():
            return []
        out = []
        for npy in self.root.glob("??/*.npy"):
            meta_path = npy.with_suffix(".json")
            try:
                meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"key": npy.stem}
            except (OSError, ValueError):
                meta = {"key": npy.stem}
            if not isinstance(meta, dict):
                meta = {"key": npy.stem}
            meta["checked"] = "sha256" in meta
            meta["bytes"] = npy.stat().st_size
            meta["path"] = str(npy)
            out.append(meta)
        return sorted(out, key=lambda m: str(m.get("created", "")))

    def clear(self) -> int:
        """Delete every disk entry (and this process's memory entries); returns the number of entries removed."""
        memory_cache.clear()
        n = len(self.entries())
        if self.root is not None and self.root.is_dir():
            for sub in self.root.iterdir():
                if sub.is_dir() and len(sub.name) == 2:
                    shutil.rmtree(sub, ignore_errors=True)
        return n
