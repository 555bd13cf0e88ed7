"""One GPU per joblib worker: ids shared out through lock files."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

#: comma-separated GPU ids shared out one per joblib worker (default: CUDA_VISIBLE_DEVICES, else all GPUs)
GPUS_ENV = "PROMPTBENCH_GPUS"


# --------------------------------------------------------------------------------------------- a job
_PINNED_GPU: TextIO | None = None  # lock file held for the worker's lifetime


def pin_worker_gpu(lock_dir: Path, gpus: Sequence[str], job_num: int = 0) -> str | None:
    """Give this worker process one GPU of ``gpus`` for its whole life (``CUDA_VISIBLE_DEVICES``).

    Each worker takes the first GPU whose lock file in ``lock_dir`` it can lock; the lock lives as long as the
    process, so with ``n_jobs <= len(gpus)`` every worker has its own GPU even though joblib reuses workers.
    With more workers than GPUs the extra ones share by job number. Call before CUDA is initialised.
    """
    global _PINNED_GPU
    if _PINNED_GPU is not None or len(gpus) < 2:
        return os.environ.get("CUDA_VISIBLE_DEVICES") if _PINNED_GPU is not None else None
    lock_dir.mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        handle = open(lock_dir / f"gpu-{gpu}.lock", "a")  # noqa: SIM115 - kept open on purpose
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _PINNED_GPU = handle
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        return str(gpu)
    gpu = str(gpus[job_num % len(gpus)])
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def _visible_gpus() -> list[str]:
    listed = os.environ.get(GPUS_ENV) or os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]  # NVML count: does not initialise CUDA

