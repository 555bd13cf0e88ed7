"""Cells shared between processes (issue 14): claims (a ``flock`` per cell, so concurrent sweeps compute each cell
once) and automatic variants (a swept non-identity setting goes into the cell's folder name)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from omegaconf import DictConfig, OmegaConf

from promptbench.config.overrides import _is_group, parse_overrides

#: environment variable carrying the swept keys that are not part of a cell's identity (see :func:`auto_variant`)
VARIANT_KEYS_ENV = "PROMPTBENCH_VARIANT_KEYS"
#: override keys that are a cell's identity (its folder) or do not change what it computes
IDENTITY_KEYS = ("method", "dataset", "backbone", "protocol", "shots", "seed", "variant", "experiment")
RUNTIME_KEYS = ("paths", "logger", "trainer.threads", "trainer.accelerator", "trainer.num_workers",
                "trainer.enable_progress_bar", "trainer.eval_batch_size", "reuse_backbone", "skip_done",
                "continue_on_error", "table")
LOCK_FILE = ".lock"


# --------------------------------------------------------------------------------------------- claims
#: errnos of a filesystem that cannot lock at all (NFS without lockd, some FUSE mounts), unlike EWOULDBLOCK/EAGAIN
#: (another process holds the lock)
NO_LOCK_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "EINVAL", "ENOSYS")
                           if hasattr(errno, name))
#: environment variable: set once this process (or the sweep driver, for its workers) has warned about it
NO_LOCKS_ENV = "PROMPTBENCH_NO_LOCKS_WARNED"


def _no_locks(path: Path, err: OSError) -> None:
    """Warn once per sweep (the driver's warning covers the workers it starts) that cells run without claims."""
    if os.environ.get(NO_LOCKS_ENV):
        return
    os.environ[NO_LOCKS_ENV] = "1"
    name = errno.errorcode.get(err.errno or 0, str(err.errno))
    print(f"promptbench: warning: cannot lock files under {path.parent} ({name}: {err.strerror}); cells run "
          "without claims, so two sweeps on this folder at once may compute a cell twice (run one at a time, or "
          "put paths.output_dir on a filesystem with working flock)", file=sys.stderr, flush=True)


def _try_lock(handle: IO[str], flags: int, path: Path) -> bool | None:
    """``flock``: True when locked, False when another process holds it, None when this filesystem cannot lock
    (warned once; callers then go on without the lock)."""
    try:
        fcntl.flock(handle, flags | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in NO_LOCK_ERRNOS:
            _no_locks(path, err)
            return None
        return False
    return True


def locks_work(directory: Path) -> bool:
    """Whether ``flock`` works under ``directory`` (created if needed); warns once when it does not. Called by a
    sweep driver before it launches, so that its workers stay quiet about it."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / LOCK_FILE
    with open(path, "a+") as handle:
        locked = _try_lock(handle, fcntl.LOCK_SH, path)
        if locked:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return locked is not None


def lock_holder(run_dir: Path) -> str | None:
    """``pid <n> on <host>`` when another live process holds the cell's claim, else None (also when this
    filesystem cannot lock: nothing is ever shown as running)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    with open(path) as handle:
        locked = _try_lock(handle, fcntl.LOCK_SH, path)
        if locked is False:
            return handle.read().strip() or "another process"
        if locked:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def claim(run_dir: Path) -> Iterator[str | None]:
    """Claim a cell for this process: yields None when claimed, else the holder (``pid <n> on <host>``).

    An exclusive ``flock`` on ``<cell>/.lock``: the kernel drops it when its process dies (kill -9 included), so
    a stale lock from a dead process is taken over by the next claim; on NFS, Linux maps it to POSIX locks. On a
    filesystem that cannot lock at all (ENOLCK, EOPNOTSUPP, ...) the cell is run unclaimed, with one warning.
    """
    import socket

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    handle = os.fdopen(fd, "r+")
    try:
        locked = _try_lock(handle, fcntl.LOCK_EX, path)
        if locked is False:
            yield handle.read().strip() or "another process"
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield None
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def holder_pid(run_dir: Path) -> int | None:
    """The pid of the last process that claimed the cell (``.lock`` keeps it after the claim ends), if any."""
    try:
        words = (Path(run_dir) / LOCK_FILE).read_text().split()
    except OSError:
        return None
    return int(words[1]) if len(words) > 1 and words[0] == "pid" and words[1].isdigit() else None


def record_cut_short(cfg: DictConfig, started: str, error: str, status: str = "failed", pid: int | None = None
                     ) -> bool:
    """Record an attempt of ``cfg``'s cell that ended without recording itself (its process was killed or is
    exiting at once): ``status`` and one-line ``error``, in attempts.jsonl and, unless it holds a good result,
    result.json. Nothing is written when the process ``pid`` (default: this one) recorded an attempt of the cell
    since ``started`` (ISO time). Returns whether it wrote."""
    from promptbench.engine.results import (
        SCHEMA_VERSION,
        cell_dir,
        config_hash,
        identity,
        now_iso,
        read_attempts,
        record_outcome,
        result_path,
    )

    pid = os.getpid() if pid is None else pid
    if any(a.get("pid") == pid and str(a.get("started") or "") >= started for a in read_attempts(cell_dir(cfg))):
        return False
    payload = {"schema": SCHEMA_VERSION, "identity": identity(cfg), "started": started,
               "hashes": {"config": config_hash(cfg)}, "status": status, "error": error, "finished": now_iso()}
    with contextlib.suppress(Exception):  # the resolved config is a courtesy; the record must not depend on it
        payload["config"] = OmegaConf.to_container(cfg, resolve=True)
    record_outcome(result_path(cfg), payload)
    return True


# --------------------------------------------------------------------------------------------- variants
def variant_keys(cells: Sequence[Sequence[str]]) -> list[str]:
    """Keys swept with more than one value that are neither a cell's identity nor runtime-only settings, e.g.
    ``method.epochs`` in ``sweep method.epochs=1,2``: their values go into the cell's variant (its folder)."""

    values: dict[str, set[str]] = {}
    for overrides in cells:
        for o in parse_overrides(overrides):
            key = o.key_or_group
            if o.is_hydra_override() or _is_group(o) or key in IDENTITY_KEYS:
                continue  # config-group choices sharing a folder are refused by _refuse_shared_paths
            if any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS):
                continue
            values.setdefault(key, set()).add(str(o.value()))
    return sorted(k for k, v in values.items() if len(v) > 1)


def auto_variant(cfg: DictConfig, keys: Sequence[str]) -> None:
    """Append ``<key>_<value>`` of each of ``keys`` to ``cfg.variant`` (``method.`` dropped), e.g.
    ``coop+epochs_2``, so cells that differ only in a swept setting never share a folder."""
    if not keys:
        return
    parts = [str(cfg.get("variant") or "")]
    for key in keys:
        value = OmegaConf.select(cfg, key)
        short = key[len("method."):] if key.startswith("method.") else key
        parts.append(f"{short}_{value}".replace("/", "-").replace(" ", ""))
    cfg.variant = "+".join(p for p in parts if p)


def export_variant_keys(cells: Sequence[Sequence[str]]) -> list[str]:
    """Compute :func:`variant_keys` and hand them to the jobs (environment, inherited by launcher workers)."""
    keys = variant_keys(cells)
    os.environ[VARIANT_KEYS_ENV] = ",".join(keys)
    return keys


def env_variant_keys() -> list[str]:
    return [k for k in os.environ.get(VARIANT_KEYS_ENV, "").split(",") if k]
