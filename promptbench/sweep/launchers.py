"""Launcher helpers: SLURM/submitit job names and batch sizes (OmegaConf resolvers used by conf/hydra/launcher and
the experiment presets), naming a running SLURM array task after its cell, and the joblib launch loop in which a
worker that dies mid-cell fails only its own cell (:func:`run_in_workers`)."""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import OmegaConf

from promptbench.config.overrides import parse_overrides
from promptbench.engine.results import cell_dir, now_iso
from promptbench.sweep.claims import auto_variant, env_variant_keys, holder_pid, record_cut_short
from promptbench.sweep.grid import cell_label
from promptbench.sweep.progress import TOTAL_ENV, finish


def register_plugins() -> None:
    """promptbench's sweeper and launcher with Hydra (its plugin scan does not see an editable install's
    ``hydra_plugins`` package); called before a Hydra main launches a multirun."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # first: its scan re-executes Hydra's own plugin modules (new BasicSweeper class)
    from hydra_plugins.promptbench_sweeper import CheckedGridSweeper, ResilientJoblibLauncher

    plugins.register(CheckedGridSweeper)
    plugins.register(ResilientJoblibLauncher)


def name_slurm_task(label: str) -> bool:
    """Rename the running SLURM job (array task) after its cell, so ``squeue`` shows which cell runs where.
    Best effort: no SLURM, no ``scontrol`` or a refusal leaves the array's name. Returns whether it was renamed.

    An array task names itself ``<array job id>_<task id>``: ``JobId=$SLURM_JOB_ID`` of the task whose job id equals
    the array's id renames every task of the array (seen on slurm-wlm 22.05, issue 26)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    if not job or os.environ.get("PROMPTBENCH_SLURM_RENAME", "1") == "0" or not shutil.which("scontrol"):
        return False
    name = "pb_" + re.sub(r"[^A-Za-z0-9_.+-]", "_", label.replace("/", "_"))
    try:
        done = subprocess.run(["scontrol", "update", f"JobId={job}", f"JobName={name[:200]}"], capture_output=True,
                              timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


class _SacctSaidOnce(logging.Filter):
    """submitit's "Bypassing sacct error ..., status may be inaccurate" on every status poll of a cluster without
    accounting (several times a poll, issue 26): passed once with what it means, then dropped."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if type(self).said:
            return False
        type(self).said = True
        record.msg = (f"{record.getMessage()} (said once: this cluster's sacct does not answer, e.g. no SLURM "
                      "accounting; submitit then reads each task's state from its own result files)")
        record.args = ()
        return True


def quiet_sacct_polling() -> None:
    """Say submitit's sacct warning once per process (idempotent)."""
    log = logging.getLogger("submitit")
    if not any(isinstance(f, _SacctSaidOnce) for f in log.filters):
        log.addFilter(_SacctSaidOnce())


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


# --------------------------------------------------------------------------------------------- joblib workers
#: seconds an idle worker lives before it exits (loky starts a new one for the next cell), as joblib's pool
IDLE_WORKER_S = 300
_SLOTS: list[Any] = []  # one single-worker loky executor per concurrent cell, reused across launches
_SLOT_ENV: dict[str, str] = {}  # the workers' environment (joblib's thread limits for that many workers)


def _new_slot() -> Any:
    from joblib.externals.loky import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=1, timeout=IDLE_WORKER_S, env=dict(_SLOT_ENV))


def _slots(n: int) -> list[Any]:
    """``n`` worker slots, each its own single-worker loky executor: a worker that dies (SIGKILL, OOM) breaks only
    its own executor (loky's shared pool kills every worker when one dies), and is replaced."""
    from joblib._parallel_backends import LokyBackend

    if len(_SLOTS) != n:
        shutdown_slots()
        _SLOT_ENV.update(LokyBackend()._prepare_worker_env(n_jobs=n))  # joblib's: cores // workers threads each
        _SLOTS.extend(_new_slot() for _ in range(n))
    return list(_SLOTS)


def _replace_slot(k: int) -> None:
    _SLOTS[k].shutdown(wait=False, kill_workers=True)
    _SLOTS[k] = _new_slot()


def shutdown_slots(kill: bool = False) -> None:
    """Stop the workers (``kill``: at once, e.g. after an interruption they have recorded already)."""
    for slot in _SLOTS:
        slot.shutdown(wait=False, kill_workers=kill)
    _SLOTS.clear()
    _SLOT_ENV.clear()


def _worker_process(slot: Any) -> Any:
    """The slot's worker process (loky starts it at the first submit), or None."""
    return next(iter(getattr(slot, "_processes", {}).values()), None)


def death_line(exitcode: int | None, err: BaseException | None = None) -> str:
    """One line saying how a worker died: ``worker killed by signal 9 (SIGKILL): out of memory? ...``."""
    if exitcode is None and err is not None:
        found = re.search(r"\{\s*([A-Z0-9]+)\((-?\d+)\)", str(err))  # loky: "exit codes of the workers are {...}"
        exitcode = int(found.group(2)) if found else None
    if exitcode is None:
        return "worker process died (exit code unknown)"
    import signal

    if exitcode in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # it recorded its cell as interrupted, then left
        return f"worker stopped by {signal.Signals(exitcode - 128).name} (exit {exitcode})"
    if exitcode < 0:
        signum = -exitcode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        hint = (": out of memory? (the OOM killer sends SIGKILL: dmesg | grep -i oom; fewer workers or a smaller "
                "batch)" if signum == signal.SIGKILL else "")
        return f"worker killed by signal {signum} ({name}){hint}"
    return f"worker exited with code {exitcode} while running the cell"


def _dead_worker_job(launcher: Any, idx: int, overrides: Sequence[str], started: str, pid: int | None,
                     line: str) -> Any:
    """Record the cell a dead worker was running (unless the worker recorded it, e.g. interrupted by a signal it
    handled) and return its job result: ``failed`` (an error with ``continue_on_error=false``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import open_dict


    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
        cfg.hydra.job.num = idx
    HydraConfig.instance().set_config(cfg)
    task = copy.deepcopy(cfg)
    with open_dict(task):
        del task["hydra"]
    auto_variant(task, env_variant_keys())
    pid = pid or holder_pid(cell_dir(task))
    record_cut_short(task, started, line, pid=pid)

    prefix, eta = finish(cfg.hydra.sweep.dir, os.environ.get(TOTAL_ENV, "?"), "failed")
    print(f"{prefix}{cell_label(task)} FAILED: {line}{eta}", file=sys.stderr, flush=True)
    error = RuntimeError(f"{cell_label(task)}: {line}")
    ok = bool(task.get("continue_on_error"))
    return JobReturn(overrides=list(overrides), cfg=task, hydra_cfg=cfg, working_dir=os.getcwd(),
                     task_name=str(cfg.hydra.job.name), status=JobStatus.COMPLETED if ok else JobStatus.FAILED,
                     _return_value="failed" if ok else error)


def launch_joblib(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    """hydra-joblib-launcher's ``launch``: the same ``execute_job`` in loky worker processes, through
    :func:`run_in_workers`, so a worker dying mid-cell (SIGKILL, the OOM killer) fails only that cell, recorded by
    the driver, and the other cells go on."""
    from pathlib import Path

    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, setup_globals
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    state = Singleton.get_state()
    calls = [(execute_job, initial_job_idx + i, list(overrides), launcher.hydra_context, launcher.config,
              launcher.task_function, state) for i, overrides in enumerate(job_overrides)]

    def on_death(i: int, started: str, pid: int | None, line: str) -> Any:
        return _dead_worker_job(launcher, initial_job_idx + i, job_overrides[i], started, pid, line)

    return run_in_workers(int(launcher.joblib.get("n_jobs") or 1), calls, on_death)


def run_in_workers(n_jobs: int, calls: Sequence[tuple[Any, ...]],
                   on_death: Callable[[int, str, int | None, str], Any]) -> list[Any]:
    """``fn(*args)`` of each ``(fn, *args)`` in ``calls`` in ``n_jobs`` worker processes (-1: one per core), one
    call at a time each, in order; returns their results. When a worker dies mid-call, its result is
    ``on_death(index, started ISO time, worker pid, one-line cause)``, a new worker takes its place and the other
    workers' calls go on. A call's own error is raised once the calls in flight have finished; an interruption
    (the driver's signal) stops the workers at once."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from joblib.externals.loky.process_executor import BrokenProcessPool


    n_jobs = max(1, (os.cpu_count() or 1) if n_jobs < 0 else n_jobs)
    slots = _slots(n_jobs)
    todo = list(enumerate(calls))[::-1]
    results: list[Any] = [None] * len(calls)
    running: dict[Any, tuple[int, int, str, Any]] = {}  # future -> (slot, call, started, worker process)
    error: BaseException | None = None
    try:
        while running or (todo and error is None):
            busy = {k for k, *_ in running.values()}
            for k in range(n_jobs):
                if k in busy or not todo or error is not None:
                    continue
                i, (fn, *args) = todo.pop()
                started = now_iso()
                try:
                    future = slots[k].submit(fn, *args)
                except BrokenProcessPool:  # its idle worker died (e.g. a signal): a new one takes the call
                    _replace_slot(k)
                    slots = list(_SLOTS)
                    future = slots[k].submit(fn, *args)
                running[future] = (k, i, started, _worker_process(slots[k]))
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                k, i, started, process = running.pop(future)
                try:
                    results[i] = future.result()
                except BrokenProcessPool as err:  # TerminatedWorkerError: this slot's worker died mid-call
                    if process is not None:
                        process.join(timeout=5)
                    line = death_line(getattr(process, "exitcode", None), err)
                    _replace_slot(k)
                    slots = list(_SLOTS)
                    results[i] = on_death(i, started, getattr(process, "pid", None), line)
                except BaseException as err:  # noqa: BLE001 - the call's own error: after the calls in flight
                    error = error or err
    except BaseException:
        shutdown_slots(kill=True)  # interrupted: the workers got the signal and recorded their cells
        raise
    if error is not None:
        raise error
    return results
