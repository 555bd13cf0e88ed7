"""Launcher helpers: SLURM/submitit job names and batch sizes (OmegaConf resolvers used by conf/hydra/launcher and
the experiment presets), and naming a running SLURM array task after its cell."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from omegaconf import OmegaConf

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


def register_resolvers() -> None:
    """The resolvers above, and promptbench's sweeper with Hydra (its plugin scan does not see an editable
    install's ``hydra_plugins`` package)."""
    for name, fn in (("pb_job_name", job_name), ("pb_sweep_batch", sweep_batch)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # first: its scan re-executes Hydra's own plugin modules (new BasicSweeper class)
    from hydra_plugins.promptbench_sweeper import CheckedGridSweeper

    plugins.register(CheckedGridSweeper)


def name_slurm_task(label: str) -> bool:
    """Rename the running SLURM job (array task) after its cell, so ``squeue`` shows which cell runs where.
    Best effort: no SLURM, no ``scontrol`` or a refusal leaves the array's name. Returns whether it was renamed."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or os.environ.get("PROMPTBENCH_SLURM_RENAME", "1") == "0" or not shutil.which("scontrol"):
        return False
    name = "pb_" + re.sub(r"[^A-Za-z0-9_.+-]", "_", label.replace("/", "_"))
    try:
        done = subprocess.run(["scontrol", "update", f"JobId={job}", f"JobName={name[:200]}"], capture_output=True,
                              timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


# --------------------------------------------------------------------------------------------- job configs
#: per process: (config name, Hydra overrides, group choices) -> (a composed job config, its value-override keys)
_JOB_CONFIGS: dict[tuple[Any, ...], tuple[Any, list[str]]] = {}


class GridConfigLoader:
    """Hydra's config loader, except that a worker composes each distinct set of config-group choices once: the
    next job with the same choices and the same value keys is a copy of that config with its own values applied
    by Hydra's override semantics, and its ``hydra.overrides.task`` / ``override_dirname`` set as Hydra sets them
    (equal to Hydra's own composition: tests/test_sweep.py). Used by the checked-grid sweeper for a grid promptbench
    has composed already; Hydra composed every job from scratch (~0.15 s a cell, 486 times in the demo)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # during unpickling, before __init__ state is restored
            raise AttributeError(name)
        return getattr(self.inner, name)

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> Any:
        return compose_job(self.inner, master_config, list(sweep_overrides))


def compose_job(loader: Any, master_config: Any, sweep_overrides: list[str]) -> Any:
    """``loader.load_sweep_config(master_config, sweep_overrides)``, reusing this process's earlier composition
    of the same config-group choices (see :class:`GridConfigLoader`)."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import open_dict, read_write

    from promptbench.sweep import parse_overrides

    choices = master_config.hydra.runtime.choices
    parsed = parse_overrides(sweep_overrides)
    task = [o for o in parsed if not o.is_hydra_override()]
    values = [o for o in task if o.key_or_group not in choices and "/" not in o.key_or_group
              and o.package is None]
    if any(o.type != OverrideType.CHANGE or o.is_sweep_override() for o in values):
        return loader.load_sweep_config(master_config, sweep_overrides)
    groups = tuple(o.input_line for o in parsed if o not in values)
    key = (master_config.hydra.job.config_name, tuple(master_config.hydra.overrides.hydra), groups)
    value_keys = [o.key_or_group for o in values]
    known = _JOB_CONFIGS.get(key)
    if known is None or known[1] != value_keys:
        cfg = loader.load_sweep_config(master_config, sweep_overrides)
        _JOB_CONFIGS[key] = (copy.deepcopy(cfg), value_keys)
        return cfg
    cfg = copy.deepcopy(known[0])
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.overrides.task = [o.input_line for o in task]
        naming = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=task, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys)
    OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
    return cfg
