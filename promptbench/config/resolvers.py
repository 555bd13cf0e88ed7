"""OmegaConf resolvers of the shipped configs (pure functions of the config and the environment)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _pb_if(condition: Any, if_true: Any, if_false: Any) -> Any:
    """``${pb_if:cond,a,b}``: ``a`` when ``cond`` is true (bool or "true"/"yes"/"1"), else ``b``."""
    flag = condition if isinstance(condition, bool) else str(condition).strip().lower() in ("true", "yes", "1")
    return if_true if flag else if_false



GRID_CHECKED_ENV = "PROMPTBENCH_GRID_CHECKED"


@contextmanager
def grid_checked() -> Iterator[None]:
    """Within this block the multirun's grid counts as composed and checked already (``promptbench sweep`` and
    ``train -m`` do that before launching): the sweeper ``hydra_plugins.promptbench_sweeper.CheckedGridSweeper``
    launches it without composing every job a second time in the driver, as one batch."""
    before = os.environ.get(GRID_CHECKED_ENV)
    os.environ[GRID_CHECKED_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(GRID_CHECKED_ENV, None)
        else:
            os.environ[GRID_CHECKED_ENV] = before


def grid_is_checked() -> bool:
    return os.environ.get(GRID_CHECKED_ENV) == "1"


def _choice(root: Any, group: str) -> str | None:
    try:
        value = root.hydra.runtime.choices.get(group)
    except Exception:  # noqa: BLE001 - outside Hydra (tests, compose without the hydra node)
        return None
    return str(value) if value not in (None, "null") else None


def job_name(*, _root_: Any) -> str:
    """``${pb_job_name:}``: ``pb_<experiment>`` (or ``pb_<method>_<dataset>`` without one) for the job array."""
    experiment = _choice(_root_, "experiment")
    if experiment:
        name = f"pb_{experiment}"
    else:
        name = f"pb_{_root_.method.name}_{_root_.dataset.name}" if "method" in _root_ else "promptbench"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def sweep_batch(size: Any, *, _root_: Any) -> int | None:
    """``${pb_sweep_batch:200}``: Hydra's ``max_batch_size`` for the launcher in use. SLURM gets ``null``: the whole
    grid is one job array, throttled by ``array_parallelism``, instead of one array per batch waiting for its
    slowest cell. submitit's local executor runs a batch all at once, so it gets one cell per CPU core. Other
    launchers get ``size`` (Hydra composing thousands of jobs before the first one starts takes minutes), or the
    whole grid as one batch when promptbench has checked it already (:func:`grid_checked`): a pool of workers then
    never waits for a batch's slowest cell."""
    try:
        target = str(_root_.hydra.launcher.get("_target_", ""))
    except Exception:  # noqa: BLE001
        target = ""
    size = int(size) if size not in (None, "null") else None
    if "submitit" in target and target.endswith("SlurmLauncher"):
        return None
    if "submitit" in target:  # submitit's local executor starts a whole batch at once: one cell per CPU core
        return min(size or 10**9, os.cpu_count() or 1)
    return None if grid_is_checked() else size

