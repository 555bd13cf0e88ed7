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
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig, OmegaConf

from promptbench.config import CONFIG_DIR
from promptbench.engine.results import cell_dir, config_hash, identity, read_result, result_path

#: environment variable carrying the number of cells to the jobs (for "[i/N]" progress lines)
TOTAL_ENV = "PROMPTBENCH_SWEEP_TOTAL"
#: comma-separated GPU ids shared out one per joblib worker (default: CUDA_VISIBLE_DEVICES, else all GPUs)
GPUS_ENV = "PROMPTBENCH_GPUS"
#: overrides ``promptbench sweep`` adds before the user's own (which therefore still win)
SWEEP_DEFAULTS = ("skip_done=true", "continue_on_error=true")
STATUSES = ("done", "stale", "failed", "missing")


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


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def _is_group(override: Any) -> bool:
    """True for a config-group choice (``method=coop``, ``hydra/launcher=joblib``), false for a value."""
    key = override.key_or_group
    return "/" in key or (CONFIG_DIR / key).is_dir()


def grid(overrides: Sequence[str]) -> list[list[str]]:
    """Every cell's override list, in launch order, as Hydra's BasicSweeper builds it.

    The experiment's ``hydra.sweeper.params`` come first and command-line overrides after, so a command-line
    sweep or value replaces the experiment's list for that key.
    """
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = _parse(overrides)
    task = [o for o in parsed if not o.is_hydra_override()]
    if any(o.key_or_group == "experiment" and o.is_sweep_override() for o in task):
        raise ValueError("sweep one experiment at a time (experiment=<name>)")
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with _hydra():
        cfg = compose(config_name="train", overrides=fixed, return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    merged = _parse([f"{k}={v}" for k, v in params.items()]) + task
    return BasicSweeper.split_arguments(merged, None)[0]


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


def result_status(result: dict[str, Any] | None, expected_hash: str | None) -> tuple[str, str]:
    """(status, detail) of a result file's content: ``done`` (ok, same config hash), ``stale`` (ok, other hash:
    will re-run), ``failed`` (detail = the recorded error) or ``missing``."""
    if not result:
        return "missing", ""
    if result.get("status") == "failed":
        return "failed", str(result.get("error") or "")
    if result.get("status") == "ok":
        same = result.get("hashes", {}).get("config") == expected_hash
        return ("done", "") if same else ("stale", "config changed since this result")
    return "missing", f"status {result.get('status')!r}"


def cell_status(cfg: DictConfig) -> tuple[str, str]:
    """(status, detail) of a composed cell (see :func:`result_status`)."""
    result = read_result(result_path(cfg))
    return result_status(result, config_hash(cfg) if result else None)


def compose_cells(cells: Sequence[Sequence[str]], with_status: bool = True, keep_config: bool = False
                  ) -> list[Cell]:
    """Compose each cell: one Hydra composition per distinct set of config-group choices, then the cell's value
    overrides applied with Hydra's own override semantics; read its status. Config hashes are computed only
    where a result exists (or with ``keep_config``), which keeps a dry run of a few thousand cells quick."""
    from hydra import compose
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.types import OverrideType

    cache: dict[tuple[str, ...], DictConfig] = {}
    keys: dict[tuple[str, ...], list[str]] = {}  # value keys set on a cached config (reused only for the same)
    out: list[Cell] = []
    with _hydra():
        for overrides in cells:
            parsed = [o for o in _parse(overrides) if not o.is_hydra_override()]
            groups = tuple(o.input_line for o in parsed if _is_group(o))
            values = [o for o in parsed if not _is_group(o)]
            if groups not in cache:
                cache[groups] = compose(config_name="train", overrides=list(groups))
                keys[groups] = [o.key_or_group for o in values]
            in_place = (not keep_config and keys[groups] == [o.key_or_group for o in values]
                        and all(o.type == OverrideType.CHANGE for o in values))
            cfg = cache[groups] if in_place else copy.deepcopy(cache[groups])
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
            cell = Cell(list(overrides), cell_label(cfg), result_path(cfg), identity(cfg),
                        cfg=None if in_place else cfg)
            result = read_result(cell.path) if with_status or keep_config else None
            if result or keep_config:
                cell.config_hash = config_hash(cfg)
            if with_status:
                cell.status, cell.detail = result_status(result, cell.config_hash)
            out.append(cell)
    return out


def count(cells: Sequence[Cell]) -> dict[str, int]:
    return {s: sum(c.status == s for c in cells) for s in STATUSES}


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
    label = cell_label(cfg)
    if cfg.get("skip_done") and is_done(cfg):
        print(f"{prefix}{label} skip (done)" if prefix else f"skip (done): {result_path(cfg)}", flush=True)
        return "skip"
    if hc is not None and prefix and "joblib" in str(hc.launcher.get("_target_", "")).lower():
        pin_worker_gpu(Path(hc.sweep.dir) / ".gpu_locks", _visible_gpus(), int(hc.job.num))
    from promptbench.engine.run import run

    try:
        result = run(cfg)
    except Exception as err:  # noqa: BLE001 - recorded in result.json; one line for the user
        line = f"{type(err).__name__}: {err}".splitlines()[0]
        print(f"{prefix}{label} FAILED: {line}" if prefix else f"FAILED {result_path(cfg)}: {line}",
              file=sys.stderr, flush=True)
        if not cfg.get("continue_on_error"):
            raise SystemExit(1) from None
        return "failed"
    shown = ", ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items() if k.endswith("/acc"))
    print(f"{prefix}{label} done ({shown})" if prefix else f"done: {shown}  ->  {result_path(cfg)}", flush=True)
    return "done"


# --------------------------------------------------------------------------------------------- the command
SWEEP_USAGE = """usage: promptbench sweep [experiment=<name>] [overrides...] [--dry-run]

Runs the experiment's grid (its hydra.sweeper.params, merged with command-line sweeps) as a Hydra multirun
with skip_done=true continue_on_error=true: finished cells are skipped, failed ones recorded and retried on
the next run. --dry-run lists the cells and their status without running anything.
Launchers: hydra/launcher=basic (default, in-process), joblib (hydra.launcher.n_jobs=N), slurm.
"""


def sweep(argv: Sequence[str], launch: Callable[[list[str]], int]) -> int:
    """``promptbench sweep``: dry run, or launch the multirun through ``launch(argv)`` and print a summary.

    Exit status: 0 when every cell is done, 1 when some failed or are still missing, 2 on a usage error.
    """
    args = [a for a in argv if a not in ("--dry-run", "-m", "--multirun")]
    if any(a in ("-h", "--help") for a in args):
        print(SWEEP_USAGE)
        return 0
    dry = "--dry-run" in argv
    try:
        cells = grid([*SWEEP_DEFAULTS, *args])
    except Exception as err:  # noqa: BLE001 - a bad override: one line, not a traceback
        print(f"sweep: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    if dry:
        composed = compose_cells(cells)
        print_cells(composed)
        return 0
    before = compose_cells(cells)
    pending = sum(c.status != "done" for c in before)
    print(f"sweep: {len(cells)} cells, {len(cells) - pending} already done", flush=True)
    if not pending:  # nothing to launch: Hydra would start (and skip) every job
        print("sweep finished: " + ", ".join(f"{v} {k}" for k, v in count(before).items()), flush=True)
        return 0
    os.environ[TOTAL_ENV] = str(len(cells))
    launch(["-m", *SWEEP_DEFAULTS, *args])
    composed = compose_cells(cells)
    bad = [c for c in composed if c.status != "done"]
    for cell in bad:
        detail = f": {cell.detail}" if cell.detail else ""
        print(f"  {cell.status.upper() if cell.status == 'failed' else cell.status} {cell.label}{detail}")
    print("sweep finished: " + ", ".join(f"{v} {k}" for k, v in count(composed).items()), flush=True)
    return 1 if bad else 0
