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

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from promptbench.config.choices import choice_error, grid_choice_error
from promptbench.config.overrides import quiet_launcher_schema_warning
from promptbench.config.resolvers import grid_checked
from promptbench.config.schema import validate
from promptbench.core.console import quiet_libraries
from promptbench.engine.guards import handled_signals, recorded_if_killed, start_parent_watchdog
from promptbench.engine.results import cell_dir, error_line, is_done, now_iso, result_path
from promptbench.sweep.claims import (
    auto_variant,
    claim,
    env_variant_keys,
    export_variant_keys,
    locks_work,
    record_cut_short,
)
from promptbench.sweep.gpus import _visible_gpus, pin_worker_gpu
from promptbench.sweep.grid import cell_label, compose_cells, compositions_reused, grid
from promptbench.sweep.inputs import preflight
from promptbench.sweep.launchers import name_slurm_task, quiet_sacct_polling
from promptbench.sweep.progress import TOTAL_ENV, begin, finish
from promptbench.sweep.status import Cell, count, print_cells

#: overrides ``promptbench sweep`` adds before the user's own (which therefore still win)
SWEEP_DEFAULTS = ("skip_done=true", "continue_on_error=true")


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
    """In a multirun: ``[k/N] `` numbered in finishing order and an elapsed/ETA suffix (promptbench.sweep.progress)."""
    if not prefix:
        return prefix, ""

    new_prefix, eta = finish(hc.sweep.dir, os.environ.get(TOTAL_ENV, "?"), outcome)
    return new_prefix or prefix, eta


def run_cell(cfg: DictConfig) -> str:
    """Hydra task function of ``train`` and ``sweep``: skip / run / record one cell; returns its outcome
    (``skip``, ``done``, ``failed``). In a multirun each cell prints ``[i/N] <cell> done|skip|FAILED``."""

    try:  # the CLI's console hygiene (library INFO chatter off); Hydra resets logging per job, so here

        quiet_libraries()
    except ImportError:
        pass
    prefix, hc = _job_context()
    try:
        auto_variant(cfg, env_variant_keys())
        label = cell_label(cfg)  # also validates shots / seed (one line: "shots=1.5 is not an integer")

        validate(cfg)  # ranges and allowed values, for a config composed by Hydra's own main
    except ValueError as err:  # before Hydra's "Error executing job" banner: one line, exit 2
        print(f"{prefix}{err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if hc is not None and "submitit" in str(hc.launcher.get("_target_", "")).lower():

        name_slurm_task(label)
    if cfg.get("skip_done") and is_done(cfg):
        prefix, _ = _progress(prefix, hc, "skip")
        print(f"{prefix}{label} skip (done)" if prefix else f"skip (done): {result_path(cfg)}", flush=True)
        return "skip"

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

    with compositions_reused(), handled_signals(forward=True):  # the grid is composed once; signals: this sweep's
        return _sweep(argv, launch)


def _sweep(argv: Sequence[str], launch: Callable[[list[str]], int]) -> int:
    args = [a for a in argv if a not in ("--dry-run", "-m", "--multirun", "--no-check")]
    if any(a in ("-h", "--help") for a in args):
        print(SWEEP_USAGE)
        return 0
    dry = "--dry-run" in argv
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

        problem = preflight([c for c in composed if c.status != "done"])
        if problem:
            print(problem, file=sys.stderr, flush=True)
            return 2
    os.environ[TOTAL_ENV] = str(len(cells))

    begin(pending)
    os.environ["PROMPTBENCH_DRIVER_PID"] = str(os.getpid())  # watched by joblib workers (engine.guards)
    export_variant_keys(cells)

    locks_work(next(c.path.parent for c in composed if c.status != "done"))  # warns once here, not per worker
    stopped: BaseException | None = None

    try:
        quiet_sacct_polling()  # a cluster without accounting: submitit's warning once, not every poll
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


quiet_launcher_schema_warning()  # at import too: joblib workers import this module before composing their job
