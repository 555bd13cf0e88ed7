"""Sweeps: the grid of an ``experiment`` preset, run through Hydra multirun, resumable and idempotent.

    promptbench sweep experiment=few_shot                       # run (skips finished cells, retries failed)
    promptbench sweep experiment=few_shot --dry-run             # list cells: done / failed / stale / missing
    promptbench sweep experiment=demo hydra/launcher=joblib hydra.launcher.n_jobs=4

The grid is the experiment's ``hydra.sweeper.params`` merged with command-line sweeps (the command line wins),
exactly as Hydra's BasicSweeper builds it. A cell is skipped when its ``result.json`` is ``ok`` with the same
config hash (:func:`promptbench.engine.results.is_done`); a failed cell is recorded and retried next time.
This module is light at import time (no torch): the table builder and the dry run use it too.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig, OmegaConf

from promptbench.cells import (  # noqa: F401 - claims and automatic variants (issue 14), re-exported here
    VARIANT_KEYS_ENV,
    auto_variant,
    claim,
    env_variant_keys,
    export_variant_keys,
    lock_holder,
    variant_keys,
)
from promptbench.config import CONFIG_DIR, with_search_path
from promptbench.engine.results import (
    FAILURE_STATUSES,
    cell_dir,
    config_hash,
    current_inputs,
    error_line,
    identity,
    identity_mismatch,
    is_good,
    read_attempts,
    read_result,
    result_path,
    result_problem,
    staleness,
)

#: environment variable carrying the number of cells to the jobs (for "[i/N]" progress lines)
TOTAL_ENV = "PROMPTBENCH_SWEEP_TOTAL"
#: comma-separated GPU ids shared out one per joblib worker (default: CUDA_VISIBLE_DEVICES, else all GPUs)
GPUS_ENV = "PROMPTBENCH_GPUS"
#: overrides ``promptbench sweep`` adds before the user's own (which therefore still win)
SWEEP_DEFAULTS = ("skip_done=true", "continue_on_error=true")
STATUSES = ("done", "stale", "failed", "missing", "running")


def _pb_if(condition: Any, if_true: Any, if_false: Any) -> Any:
    """``${pb_if:cond,a,b}``: ``a`` when ``cond`` is true (bool or "true"/"yes"/"1"), else ``b``."""
    flag = condition if isinstance(condition, bool) else str(condition).strip().lower() in ("true", "yes", "1")
    return if_true if flag else if_false


if not OmegaConf.has_resolver("pb_if"):
    OmegaConf.register_new_resolver("pb_if", _pb_if)
if not OmegaConf.has_resolver("pb_methods"):  # presets' method lists: listed order + every other registered method
    from promptbench.methods.registry import preset_methods

    OmegaConf.register_new_resolver("pb_methods", preset_methods)


def quiet_launcher_schema_warning() -> None:
    """conf/hydra/launcher/{basic,joblib}.yaml deliberately shadow the plugins' configs of the same name (they
    carry every field themselves); Hydra warns about the automatic schema match each time. Silence that."""
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema.*")


quiet_launcher_schema_warning()  # at import too: joblib workers import this module before composing their job


# --------------------------------------------------------------------------------------------- the grid
@contextlib.contextmanager
def _hydra() -> Iterator[None]:
    """A Hydra compose context on ``conf/`` (clearing a finished app's global state first)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    quiet_launcher_schema_warning()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        yield


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    """Hydra override objects of ``overrides`` (each string parsed once per process)."""
    return [_parse_one(line) for line in overrides]


@functools.lru_cache(maxsize=4096)
def _parse_one(line: str) -> Any:
    """One override, parsed by Hydra's grammar (cached: a grid repeats the same few hundred strings)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([line])[0]


def _is_group(override: Any) -> bool:
    """True for a config-group choice (``method=coop``, ``hydra/launcher=joblib``), false for a value."""
    key = override.key_or_group
    return "/" in key or (CONFIG_DIR / key).is_dir()


def grid(overrides: Sequence[str]) -> list[list[str]]:
    """Every cell's override list, in launch order, as Hydra's BasicSweeper builds it.

    The experiment's ``hydra.sweeper.params`` come first and command-line overrides after, so a command-line
    sweep or value replaces the experiment's list for that key. A command-line ``hydra.searchpath`` is part of
    what composes every cell, so it ends each cell's list (:func:`compose_cells` composes with it).
    """
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parse_overrides(overrides)
    task = [o for o in parsed if not o.is_hydra_override()]
    if any(o.key_or_group == "experiment" and o.is_sweep_override() for o in task):
        raise ValueError("sweep one experiment at a time (experiment=<name>)")
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with _hydra():
        cfg = compose(config_name="train", overrides=with_search_path(fixed), return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    merged = parse_overrides([f"{k}={v}" for k, v in params.items()]) + task
    search = [o.input_line for o in parsed if _is_search_path(o)]
    return [[*cell, *search] for cell in BasicSweeper.split_arguments(merged, None)[0]]


def _is_search_path(override: Any) -> bool:
    return override.key_or_group.lstrip("+") == "hydra.searchpath"


@dataclass
class Cell:
    """One experiment cell: its overrides, identity, result path, status (and config when asked for)."""

    overrides: list[str]
    label: str
    path: Path
    identity: dict[str, Any]
    status: str = "missing"
    detail: str = ""
    config_hash: str | None = None  # computed when a result exists (or the config is kept)
    cfg: DictConfig | None = None


def cell_label(cfg: DictConfig) -> str:
    """``<protocol>/<dataset>/<backbone>/<method>/shots_<K>/seed_<S>`` (the cell's folder under results/)."""
    path = cell_dir(cfg)
    return "/".join(path.parts[-6:])


def result_status(result: dict[str, Any] | None, expected_hash: str | None, data_hash: str | None = None,
                  last_attempt: dict[str, Any] | None = None, current: dict[str, Any] | None = None,
                  cell: dict[str, Any] | None = None) -> tuple[str, str]:
    """(status, detail) of a result file's content (``cell``: the identity of the cell whose path it is at):

    * ``done``: a good (ok) result that is not stale (same config, weights, subset, data); the sweep skips it. A
      later failed attempt (e.g. ``train`` re-run by hand) does not undo it (detail says so).
    * ``stale``: a good result for another config, other weights, subset or data, or another result schema
      (:func:`promptbench.engine.results.staleness`; ``current``: today's input hashes): tables still read it;
      the sweep re-runs the cell, and a failed re-run keeps it (detail shows the last attempt).
    * ``failed``: no good result; result.json holds the latest failure (``failed``, ``diverged`` or
      ``interrupted``, named in the detail); the sweep retries it.
    * ``missing``: no result, or (with ``cell``) a malformed one or another cell's (a copied or moved
      result.json; the detail names the cell it claims). Tables do not count it for this cell either.
    """
    last = ""
    if last_attempt and last_attempt.get("status") in FAILURE_STATUSES:
        last = f"last attempt {last_attempt['status']}: {last_attempt.get('error') or ''}".rstrip(": ")
    if not result:
        return "missing", ""
    foreign = identity_mismatch(result, cell) if cell is not None else ""
    if foreign:
        return "missing", foreign
    if result.get("status") in FAILURE_STATUSES:
        kind = result["status"]
        error = str(result.get("error") or "")
        return "failed", error if kind == "failed" or error.startswith(("Diverged", "interrupted")) else \
            f"{kind}: {error}"
    if is_good(result):
        why = staleness(result, expected_hash, data_hash, current)
        status = "stale" if why else "done"
        if last and last_attempt and str(last_attempt.get("finished") or "") >= str(result.get("finished", "")):
            why = f"{why}; {last}" if why else f"good result kept; {last}"
        return status, why
    return "missing", f"status {result.get('status')!r}"


def _current(cfg: DictConfig, result: dict[str, Any] | None, memo: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Today's input hashes (weights, subset, data), only where they matter: those a good, well-formed result
    recorded."""
    if not is_good(result) or result_problem(result):
        return {}
    return current_inputs(cfg, result, memo)


def cell_status(cfg: DictConfig) -> tuple[str, str]:
    """(status, detail) of a composed cell (see :func:`result_status`)."""
    result = read_result(result_path(cfg))
    attempts = read_attempts(cell_dir(cfg)) if result else []
    status = result_status(result, config_hash(cfg) if result else None, None, attempts[-1] if attempts else None,
                           _current(cfg, result), identity(cfg))
    holder = lock_holder(cell_dir(cfg)) if status[0] != "done" else None
    return ("running", holder) if holder else status


class _Compositions:
    """Composed configs and config hashes, keyed by what determines them (the config-group choices with the
    search path; plus the value overrides and swept keys for a hash). Shared across :func:`compose_cells` calls
    only inside :func:`compositions_reused`, so a long-lived process never sees config files as they were."""

    def __init__(self) -> None:
        self.configs: dict[tuple[str, ...], DictConfig] = {}  # pristine: never modified
        self.hashes: dict[tuple[Any, ...], str] = {}


_SHARED: _Compositions | None = None
#: value overrides that never change a config hash (non-semantic keys nothing else interpolates): a sweep's
#: ``skip_done=true`` and a table's layout share the hashes of the bare grid
_HASH_NEUTRAL = ("skip_done", "continue_on_error", "table", "tags")


def _hash_neutral(key: str) -> bool:
    return key.split(".", 1)[0] in _HASH_NEUTRAL


@contextlib.contextmanager
def compositions_reused() -> Iterator[None]:
    """Within this block every :func:`compose_cells` call reuses the compositions and config hashes of earlier
    ones (a sweep's status before and after launching, then its tables: one composition per group choice)."""
    global _SHARED
    outer = _SHARED
    _SHARED = outer or _Compositions()
    try:
        yield
    finally:
        _SHARED = outer


def compose_cells(cells: Sequence[Sequence[str]], with_status: bool = True, keep_config: bool = False
                  ) -> list[Cell]:
    """Compose each cell: one Hydra composition per distinct set of config-group choices, then the cell's value
    overrides applied with Hydra's own override semantics; read its status. Config hashes are computed only
    where a result exists (or with ``keep_config``), which keeps a dry run of a few thousand cells quick."""
    from hydra import compose
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.types import OverrideType

    from promptbench.schema import validate

    memo = _SHARED or _Compositions()
    inputs: dict[str, Any] = {}  # today's weights / data hashes, once per backbone and dataset in this call
    work: dict[tuple[str, ...], DictConfig] = {}  # this call's copy per group choice, edited in place
    keys: dict[tuple[str, ...], list[str]] = {}   # value keys set on that copy (reused only for the same keys)
    out: list[Cell] = []
    swept = variant_keys(cells)
    with _hydra():
        for overrides in cells:
            every = parse_overrides(overrides)
            parsed = [o for o in every if not o.is_hydra_override()]
            search = [o.input_line for o in every if _is_search_path(o)]  # config folders given on the command line
            groups = tuple(with_search_path([*(o.input_line for o in parsed if _is_group(o)), *search]))
            values = [o for o in parsed if not _is_group(o)]
            if groups not in memo.configs:
                memo.configs[groups] = compose(config_name="train", overrides=list(groups))
            if groups not in work:
                work[groups] = copy.deepcopy(memo.configs[groups])
                keys[groups] = [o.key_or_group for o in values]
            in_place = (not keep_config and not swept and keys[groups] == [o.key_or_group for o in values]
                        and all(o.type == OverrideType.CHANGE for o in values))
            cfg = work[groups] if in_place else copy.deepcopy(memo.configs[groups])
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
            auto_variant(cfg, swept)
            cell = Cell(list(overrides), cell_label(cfg), result_path(cfg), identity(cfg),
                        cfg=None if in_place else cfg)
            validate(cfg)  # ranges and allowed values (promptbench.schema): a bad grid is refused before launching
            result = read_result(cell.path) if with_status or keep_config else None
            if result or keep_config:
                hash_key = (groups, tuple(o.input_line for o in values if not _hash_neutral(o.key_or_group)),
                            tuple(swept))
                if hash_key not in memo.hashes:
                    memo.hashes[hash_key] = config_hash(cfg)
                cell.config_hash = memo.hashes[hash_key]
            if with_status:
                attempts = read_attempts(cell.path.parent) if result else []
                cell.status, cell.detail = result_status(result, cell.config_hash, None, attempts[-1] if attempts
                                                         else None, _current(cfg, result, inputs), cell.identity)
                holder = lock_holder(cell.path.parent) if cell.status != "done" else None
                if holder:
                    cell.status, cell.detail = "running", holder
            out.append(cell)
    return out


def count(cells: Sequence[Cell]) -> dict[str, int]:
    """Cells per status (``running``, claimed by another live process, only when there are any)."""
    counts = {s: sum(c.status == s for c in cells) for s in STATUSES}
    if not counts["running"]:
        del counts["running"]
    return counts


def print_cells(cells: Sequence[Cell], stream: TextIO | None = None) -> None:
    """One line per cell: ``[i/N] status  label  (detail)``, then the counts."""
    stream = stream or sys.stdout
    width = len(str(len(cells)))
    for i, cell in enumerate(cells, 1):
        detail = f"  ({cell.detail})" if cell.detail else ""
        print(f"[{i:>{width}}/{len(cells)}] {cell.status:<7} {cell.label}{detail}", file=stream)
    counts = count(cells)
    print(f"{len(cells)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items()), file=stream)


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


def _job_context() -> tuple[str, Any]:
    """("[i/N] " in a multirun, else ""; the Hydra config or None)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return "", None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return "", hc
    return f"[{int(hc.job.num) + 1}/{os.environ.get(TOTAL_ENV, '?')}] ", hc


def _progress(prefix: str, hc: Any, outcome: str) -> tuple[str, str]:
    """In a multirun: ``[k/N] `` numbered in finishing order and an elapsed/ETA suffix (promptbench.progress)."""
    if not prefix:
        return prefix, ""
    from promptbench.progress import finish

    new_prefix, eta = finish(hc.sweep.dir, os.environ.get(TOTAL_ENV, "?"), outcome)
    return new_prefix or prefix, eta


def run_cell(cfg: DictConfig) -> str:
    """Hydra task function of ``train`` and ``sweep``: skip / run / record one cell; returns its outcome
    (``skip``, ``done``, ``failed``). In a multirun each cell prints ``[i/N] <cell> done|skip|FAILED``."""
    from promptbench.engine.results import is_done

    try:  # the CLI's console hygiene (library INFO chatter off); Hydra resets logging per job, so here
        from promptbench.cli import quiet_libraries

        quiet_libraries()
    except ImportError:
        pass
    prefix, hc = _job_context()
    try:
        auto_variant(cfg, env_variant_keys())
        label = cell_label(cfg)  # also validates shots / seed (one line: "shots=1.5 is not an integer")
        from promptbench.schema import validate

        validate(cfg)  # ranges and allowed values, for a config composed by Hydra's own main
    except ValueError as err:  # before Hydra's "Error executing job" banner: one line, exit 2
        print(f"{prefix}{err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if hc is not None and "submitit" in str(hc.launcher.get("_target_", "")).lower():
        from promptbench.launchers import name_slurm_task

        name_slurm_task(label)
    if cfg.get("skip_done") and is_done(cfg):
        prefix, _ = _progress(prefix, hc, "skip")
        print(f"{prefix}{label} skip (done)" if prefix else f"skip (done): {result_path(cfg)}", flush=True)
        return "skip"
    from promptbench.engine.guards import handled_signals, start_parent_watchdog

    in_worker = hc is not None and bool(prefix) and "joblib" in str(hc.launcher.get("_target_", "")).lower()
    with handled_signals():  # SIGTERM/SIGINT: the cell is recorded as interrupted; the old handlers come back after
        if in_worker:
            start_parent_watchdog()    # a joblib worker stops when its driver is gone (no orphans)
            pin_worker_gpu(Path(hc.sweep.dir) / ".gpu_locks", _visible_gpus(), int(hc.job.num))
        try:
            return _claim_and_run(cfg, prefix, label, hc)
        except BaseException as err:
            if in_worker and type(err).__name__ == "Interrupted":  # recorded: this worker process ends here
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(getattr(err, "exit_code", 143))
            raise


def _claim_and_run(cfg: DictConfig, prefix: str, label: str, hc: Any = None) -> str:
    from promptbench.engine.results import is_done

    with claim(cell_dir(cfg)) as holder:
        if holder is not None:
            prefix, _ = _progress(prefix, hc, "skip")
            print(f"{prefix}{label} skip (running: {holder})" if prefix
                  else f"{cell_dir(cfg)} is being computed by {holder}; not started", flush=True)
            if not prefix and not cfg.get("continue_on_error"):
                raise SystemExit(1)
            return "running"
        if cfg.get("skip_done") and is_done(cfg):  # finished by another sweep while we waited for the claim
            prefix, _ = _progress(prefix, hc, "skip")
            print(f"{prefix}{label} skip (done)" if prefix else f"skip (done): {result_path(cfg)}", flush=True)
            return "skip"
        return _run_claimed(cfg, prefix, label, hc)


def _run_claimed(cfg: DictConfig, prefix: str, label: str, hc: Any = None) -> str:
    from promptbench.cells import record_cut_short
    from promptbench.engine.guards import recorded_if_killed
    from promptbench.engine.results import now_iso
    from promptbench.engine.run import run

    started = now_iso()

    def last_words(signum: int) -> None:  # a later signal ends the process before run() recorded the attempt
        import signal

        record_cut_short(cfg, started, f"interrupted by {signal.Signals(signum).name}", status="interrupted")

    try:
        with recorded_if_killed(last_words):
            result = run(cfg)
    except Exception as err:  # noqa: BLE001 - recorded beside result.json; one line for the user
        line = error_line(err)
        kind = "DIVERGED" if type(err).__name__ == "Diverged" else "FAILED"
        prefix, eta = _progress(prefix, hc, kind.lower())
        print(f"{prefix}{label} {kind}: {line}{eta}" if prefix else f"{kind} {result_path(cfg)}: {line}",
              file=sys.stderr, flush=True)
        if not cfg.get("continue_on_error"):
            raise SystemExit(1) from None
        return "failed"
    shown = ", ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items() if k.endswith("/acc"))
    prefix, eta = _progress(prefix, hc, "done")
    print(f"{prefix}{label} done ({shown}){eta}" if prefix else f"done: {shown}  ->  {result_path(cfg)}", flush=True)
    return "done"


# --------------------------------------------------------------------------------------------- the command
SWEEP_USAGE = """usage: promptbench sweep [experiment=<name>] [overrides...] [--dry-run]

Runs the experiment's grid (its hydra.sweeper.params, merged with command-line sweeps) as a Hydra multirun
with skip_done=true continue_on_error=true: finished cells are skipped, failed ones recorded and retried on
the next run. --dry-run lists the cells and their status without running anything. Before launching, every
pending cell's backbone weights and data are checked once (--no-check skips that).
Launchers: hydra/launcher=basic (default, in-process), joblib (hydra.launcher.n_jobs=N), slurm.
"""


def sweep(argv: Sequence[str], launch: Callable[[list[str]], int]) -> int:
    """``promptbench sweep``: dry run, or launch the multirun through ``launch(argv)`` and print a summary.

    Exit status: 0 when every cell is done, 1 when some failed or are still missing, 2 on a usage error.
    """
    from promptbench.engine.guards import handled_signals

    with compositions_reused(), handled_signals(forward=True):  # the grid is composed once; signals: this sweep's
        return _sweep(argv, launch)


def _sweep(argv: Sequence[str], launch: Callable[[list[str]], int]) -> int:
    args = [a for a in argv if a not in ("--dry-run", "-m", "--multirun", "--no-check")]
    if any(a in ("-h", "--help") for a in args):
        print(SWEEP_USAGE)
        return 0
    dry = "--dry-run" in argv
    from promptbench.config_choices import choice_error, grid_choice_error

    try:
        if error := choice_error(args):  # method=cop: one did-you-mean line, not Hydra's listing
            raise _ChoiceError(error)
        cells = grid([*SWEEP_DEFAULTS, *args])
        if error := grid_choice_error(cells):  # the experiment's own sweeper params too
            raise _ChoiceError(error)
        composed = compose_cells(cells)
        _refuse_shared_paths(composed)
    except Exception as err:  # noqa: BLE001 - a bad override or value: one line, not a traceback
        print(f"sweep: {err if isinstance(err, _ChoiceError) else error_line(err)}", file=sys.stderr)
        return 2
    if dry:
        print_cells(composed)
        return 0
    pending = sum(c.status != "done" for c in composed)
    print(f"sweep: {len(cells)} cells, {len(cells) - pending} already done", flush=True)
    if not pending:  # nothing to launch: Hydra would start (and skip) every job
        print("sweep finished: " + ", ".join(f"{v} {k}" for k, v in count(composed).items()), flush=True)
        return 0
    if "--no-check" not in argv:  # every pending cell's weights and data, checked once before launching
        from promptbench.preflight import preflight

        problem = preflight([c for c in composed if c.status != "done"])
        if problem:
            print(problem, file=sys.stderr, flush=True)
            return 2
    os.environ[TOTAL_ENV] = str(len(cells))
    from promptbench.progress import begin

    begin(pending)
    os.environ["PROMPTBENCH_DRIVER_PID"] = str(os.getpid())  # watched by joblib workers (engine.guards)
    export_variant_keys(cells)
    from promptbench.cells import locks_work

    locks_work(next(c.path.parent for c in composed if c.status != "done"))  # warns once here, not per worker
    stopped: BaseException | None = None
    from promptbench.launchers import grid_checked

    try:
        with grid_checked():  # composed and checked above: Hydra need not compose every job again
            launch(["-m", *SWEEP_DEFAULTS, *args])
    except BaseException as err:  # noqa: BLE001 - a signal or a launcher error: summary first, then the outcome
        if isinstance(err, SystemExit):
            raise
        stopped = err
    composed = compose_cells(cells)
    bad = [c for c in composed if c.status != "done"]
    for cell in bad:
        detail = f": {cell.detail}" if cell.detail else ""
        print(f"  {cell.status.upper() if cell.status == 'failed' else cell.status} {cell.label}{detail}")
    print("sweep finished: " + ", ".join(f"{v} {k}" for k, v in count(composed).items()), flush=True)
    if stopped is not None:
        raise stopped  # the CLI prints one line and exits 130 / 143 (signal) or 1 (error)
    return 1 if bad else 0


class _ChoiceError(ValueError):
    """An unknown config-group option (its message is the whole line)."""


def _refuse_shared_paths(cells: Sequence[Cell]) -> None:
    """Two cells of one sweep that would write one folder: a one-line error (set ``variant=``)."""
    seen: dict[Path, int] = {}
    for i, cell in enumerate(cells, 1):
        if cell.path in seen:
            raise ValueError(f"cells {seen[cell.path]} and {i} of this sweep both write {cell.label} "
                             f"({' '.join(cell.overrides)}); give them different variant=<name>")
        seen[cell.path] = i
