"""A content-keyed store of frozen image-tower outputs: process memory (LRU) in front of a disk folder.

An entry is one float32 matrix (N, E) under a hex key that hashes everything the matrix depends on (see
:mod:`promptbench.features.keys`); a different backbone, image, transform, view or precision is a different key,
so an entry is never stale, only unused. On disk an entry is ``<root>/<key[:2]>/<key>.npy`` (read memory-mapped)
plus ``<key>.json`` (what it holds, for ``promptbench cache list``). Entries are written once: to a temporary file
in the same folder, then ``os.replace`` (atomic on POSIX and on NFS within one folder), so a reader sees a whole
entry or none. A per-key file lock (``filelock``) lets concurrent workers or SLURM jobs wait for the one that is
computing an entry instead of computing it twice; where locks do not work (some shared filesystems) each
process computes and the identical results replace each other atomically.
"""

from __future__ import annotations

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

from promptbench.fileio import write_atomic

log = logging.getLogger("promptbench")

__all__ = ["FeatureStore", "memory_cache"]


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


class FeatureStore:
    """``get_or_compute(key, compute, meta)``: memory → disk → ``compute()`` (then saved to both).

    ``root=None`` keeps entries in process memory only. ``lock_timeout`` bounds the wait for another process
    computing the same entry; after it this process computes the entry itself.
    """

    def __init__(self, root: str | Path | None, *, memory: bool = True, lock_timeout: float = 900.0):
        self.root = Path(root) if root is not None else None
        self.memory = memory or self.root is None  # a store without a folder keeps entries in memory
        self.lock_timeout = float(lock_timeout)
        self.hits = {"memory": 0, "disk": 0, "computed": 0}

    # -- paths ---------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        if self.root is None:
            raise RuntimeError("this feature store has no disk folder")
        return self.root / key[:2] / f"{key}.npy"

    # -- access --------------------------------------------------------------------------------------
    def get(self, key: str) -> Tensor | None:
        """The entry (float32, CPU) or None; an unreadable disk entry counts as missing."""
        if self.memory and (value := memory_cache.get(key)) is not None:
            self.hits["memory"] += 1
            return value
        if self.root is None:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, mmap_mode="r")
            value = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
        except (OSError, ValueError) as err:  # truncated by a crash before this design, or foreign file
            log.warning("feature cache entry %s unreadable (%s); recomputing it", path, err)
            return None
        self.hits["disk"] += 1
        if self.memory:
            memory_cache.put(key, value)
        return value

    def put(self, key: str, value: Tensor, meta: dict[str, Any] | None = None) -> Tensor:
        value = value.detach().to("cpu", torch.float32).contiguous()
        if self.memory:
            memory_cache.put(key, value)
        if self.root is None:
            return value
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {**(meta or {}), "key": key, "shape": list(value.shape), "dtype": "float32",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_atomic(path.with_suffix(".json"), json.dumps(info, sort_keys=True))
        write_atomic(path, lambda f: np.save(f, value.numpy(), allow_pickle=False))
        return value

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the cross-process lock of ``key`` (no-op without a disk folder or where locks fail)."""
        if self.root is None:
            yield
            return
        lock_path = self.path(key).with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path), timeout=self.lock_timeout)
        try:
            lock.acquire()
        except (Timeout, OSError, NotImplementedError) as err:
            log.warning("feature cache lock %s unavailable (%s); computing without it", lock_path, err)
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def get_or_compute(self, key: str, compute: Callable[[], Tensor], meta: dict[str, Any] | None = None,
                       rows: int | None = None) -> Tensor:
        """The entry of ``key``; computed (once across processes where file locks work) when missing.
        ``rows``: the expected number of rows; an entry of another length is recomputed."""
        value = self._valid(self.get(key), rows)
        if value is not None:
            return value
        with self.lock(key):
            value = self._valid(self.get(key), rows)  # another process may have written it meanwhile
            if value is None:
                self.hits["computed"] += 1
                value = self.put(key, compute(), meta)
        return value

    @staticmethod
    def _valid(value: Tensor | None, rows: int | None) -> Tensor | None:
        if value is None or rows is None or value.shape[0] == rows:
            return value
        return None

    # -- maintenance ---------------------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        """Metadata of every complete disk entry (``.npy`` present), sorted by creation time."""
        if self.root is None or not self.root.is_dir():
            return []
        out = []
        for npy in self.root.glob("??/*.npy"):
            meta_path = npy.with_suffix(".json")
            try:
                meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"key": npy.stem}
            except (OSError, ValueError):
                meta = {"key": npy.stem}
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
