"""Cells shared between processes (issue 14): claims (a ``flock`` per cell, so concurrent sweeps compute each cell
once) and automatic variants (a swept non-identity setting goes into the cell's folder name)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: environment variable carrying the swept keys that are not part of a cell's identity (see :func:`auto_variant`)
VARIANT_KEYS_ENV = "PROMPTBENCH_VARIANT_KEYS"
#: override keys that are a cell's identity (its folder) or do not change what it computes
IDENTITY_KEYS = ("method", "dataset", "backbone", "protocol", "shots", "seed", "variant", "experiment")
RUNTIME_KEYS = ("paths", "logger", "trainer.threads", "trainer.accelerator", "trainer.num_workers",
                "trainer.enable_progress_bar", "trainer.eval_batch_size", "reuse_backbone", "skip_done",
                "continue_on_error", "table")
LOCK_FILE = ".lock"


# --------------------------------------------------------------------------------------------- claims
def lock_holder(run_dir: Path) -> str | None:
    """``pid <n> on <host>`` when another live process holds the cell's claim, else None."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def claim(run_dir: Path) -> Iterator[str | None]:
    """Claim a cell for this process: yields None when claimed, else the holder (``pid <n> on <host>``).

    An exclusive ``flock`` on ``<cell>/.lock``: the kernel drops it when its process dies (kill -9 included), so
    a stale lock from a dead process is taken over by the next claim; on NFS, Linux maps it to POSIX locks.
    """
    import socket

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    handle = os.fdopen(fd, "r+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield handle.read().strip() or "another process"
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield None
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


# --------------------------------------------------------------------------------------------- variants
def variant_keys(cells: Sequence[Sequence[str]]) -> list[str]:
    """Keys swept with more than one value that are neither a cell's identity nor runtime-only settings, e.g.
    ``method.epochs`` in ``sweep method.epochs=1,2``: their values go into the cell's variant (its folder)."""
    from promptbench.sweep import _is_group, parse_overrides

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
