"""Content hashes of files (weights, images), computed once per file and cached by what identifies the file.

A file's identity is (absolute path, size, mtime_ns, inode, device, ctime_ns). ``ctime`` cannot be set from user
space: rewriting a file in place and restoring its mtime with ``os.utime`` still changes it, so a cached hash is
never reused for changed bytes. A copy or a ``chmod`` also changes it: the file is then hashed again (cost only).

The cache is a small JSON file (``$PROMPTBENCH_HASH_CACHE``, default ``$XDG_CACHE_HOME/promptbench/filehash.json``,
i.e. ``~/.cache/promptbench/filehash.json``), read once per process and written atomically after new hashes; two
processes writing at once may drop each other's new entries (they are recomputed next time, never wrong).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from promptbench.core.fileio import write_atomic

CACHE_ENV = "PROMPTBENCH_HASH_CACHE"
_MEMORY: dict[str, str] = {}
_LOADED: set[str] = set()   # cache files read into _MEMORY
_NEW: dict[str, dict[str, str]] = {}  # cache file -> entries not yet written


def cache_file() -> Path:
    """Where hashes are kept (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "promptbench" / "filehash.json"


def file_key(path: str | os.PathLike[str], st: os.stat_result | None = None) -> str:
    """The identity a cached hash is keyed by (raises ``OSError`` when the file cannot be stat'ed)."""
    st = st or os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_dev}|{st.st_ctime_ns}"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, uncached."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _load(cache: Path) -> None:
    name = str(cache)
    if name in _LOADED:
        return
    _LOADED.add(name)
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return
    if isinstance(data, dict):
        _MEMORY.update({k: v for k, v in data.items() if isinstance(v, str)})


def hashes(paths: Iterable[str | os.PathLike[str]]) -> list[str | None]:
    """sha256 of each file (None for one that cannot be read), from the cache where its identity matches; new
    hashes are written to the cache once at the end."""
    cache = cache_file()
    _load(cache)
    out: list[str | None] = []
    for path in paths:
        try:
            key = file_key(path)
        except OSError:
            out.append(None)
            continue
        digest = _MEMORY.get(key)
        if digest is None:
            try:
                digest = sha256_file(path)
            except OSError:
                out.append(None)
                continue
            if file_key(path) == key:  # not changed while it was read: safe to cache
                _MEMORY[key] = digest
                _NEW.setdefault(str(cache), {})[key] = digest
        out.append(digest)
    flush()
    return out


def file_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of one file, cached (raises ``OSError`` when it cannot be read)."""
    digest = hashes([path])[0]
    if digest is None:
        raise OSError(f"cannot read {path}")
    return digest


def flush() -> None:
    """Write new hashes to their cache file (merged with what other processes wrote meanwhile); best effort."""

    for name, entries in list(_NEW.items()):
        if not entries:
            continue
        cache = Path(name)
        try:
            on_disk = json.loads(cache.read_text()) if cache.is_file() else {}
        except (OSError, ValueError):
            on_disk = {}
        merged = {**(on_disk if isinstance(on_disk, dict) else {}), **entries}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache, json.dumps(merged, separators=(",", ":")))
        except OSError:
            continue  # a read-only home: hashes stay in memory for this process
        _NEW[name] = {}


__all__ = ["CACHE_ENV", "cache_file", "file_key", "sha256_file", "hashes", "file_hash", "flush"]
