"""``promptbench`` command line: ``train`` (one cell or a Hydra multirun), ``list``, ``sweep``, ``table``.

    promptbench train method=coop dataset=btmri shots=16 seed=1 backbone=biomedclip
    promptbench train -m method=zeroshot,coop seed=1,2,3
    promptbench sweep experiment=few_shot [--dry-run]
    promptbench table --experiment few_shot --expected few_shot
"""

from __future__ import annotations

import logging
import sys

from promptbench.cli.support import is_completion_request, unknown_command, version_text
from promptbench.config import CONFIG_DIR, config_dirs

USAGE = """usage: promptbench <command> [overrides...]

commands:
  train   run one experiment cell (Hydra overrides; -m for a multirun grid)
  list    list available backbones, methods, datasets and experiments
  sweep   run an experiment's grid (experiment=<name>; resumable; --dry-run lists cells and status)
  cache   list | clear the frozen image-feature store (paths.cache_dir, default $PROMPTBENCH_CACHE)
  table   results -> long CSV and mean±std tables (md/tex/html) and plots (--experiment, --expected)
  splits  few-shot subsets as shareable files: splits export dataset=btmri shots=16 seeds=1,2,3;
          splits import <reference shot_K-seed_S.pkl> dataset=btmri (docs/subsets.md)
  sync    upload a sweep's offline W&B runs: sync [outputs] [--dry-run] (docs/report.md)
  audit   near-duplicate images across train/val/test (dataset=<name>; --pretrain DIR; exit 1 on leakage)
  demo    the embedded demo: every method x X-ray/CT/MRI demo subsets x shots 1,4,16 x seeds 1-3 on the
          shipped medclip_tiny backbone (CPU, minutes), then its tables and plots
  completion  print the bash completion script: eval "$(promptbench completion bash)"

options: --version, -h/--help (also after a command: promptbench train --help)
"""


def _hydra_main(argv: list[str], prog: str = "train") -> int:
    """The Hydra app of ``train`` and ``sweep``: task function :func:`promptbench.sweep.run_cell`."""
    import hydra

    from promptbench.config.overrides import quiet_launcher_schema_warning
    from promptbench.sweep.launchers import register_plugins

    quiet_launcher_schema_warning()
    register_plugins()
    from promptbench.config import with_search_path

    sys.argv = [f"promptbench {prog}", *with_search_path(argv)]
    hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")(run_cell)()
    return 0


def run_cell(cfg):
    """Hydra's task function: :func:`promptbench.sweep.driver.run_cell`, imported when a cell runs (the driver
    imports the data layer and torch, which ``train --help`` and a refused grid never need)."""
    from promptbench.sweep.driver import run_cell as run

    return run(cfg)


def _train(argv: list[str]) -> int:
    from promptbench.cli.support import print_error, set_total, train_cells
    from promptbench.sweep.claims import export_variant_keys
    from promptbench.sweep.progress import TOTAL_ENV

    if is_completion_request(argv):
        return _completion([])
    cells, error = train_cells(argv)  # types and the grid, before anything loads
    if error:
        print_error(f"train: {error}")
        return 2
    if cells is not None and any(a in ("-m", "--multirun") for a in argv):
        from promptbench.sweep.progress import begin

        set_total(len(cells), TOTAL_ENV)  # [k/N] progress lines with an ETA
        begin(len(cells))
        export_variant_keys(cells)  # swept non-identity keys go into each cell's variant (folder)
        from promptbench.config.resolvers import grid_checked

        with grid_checked():  # composed and checked by train_cells: Hydra need not compose every job again
            return _hydra_main(argv, "train")
    return _hydra_main(argv, "train")


def _completion(argv: list[str]) -> int:
    from promptbench.cli.support import completion_script

    print(completion_script(COMMANDS, *argv[:1]))
    return 0


def _sweep(argv: list[str]) -> int:
    from promptbench.sweep.driver import sweep

    return sweep(argv, launch=lambda args: _hydra_main(args, "sweep"))


def _table(argv: list[str]) -> int:
    from promptbench.report.build import main as table_main

    return table_main(argv)


def _demo(argv: list[str]) -> int:
    """Run the demo sweep (resumable), then build its tables; print the 16-shot modality table."""
    import time
    from pathlib import Path

    from promptbench.config import compose

    start = time.perf_counter()
    out_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("paths.output_dir=")), None)
    out_dir = Path(out_dir or compose(["dataset=demo_btmri"]).paths.output_dir)
    from promptbench.sweep.grid import compositions_reused

    with compositions_reused():  # the sweep and both tables compose the grid once
        rc = _sweep(["experiment=demo", *argv])
        _table(["--experiment", "demo", *argv])
        _table(["--experiment", "demo", "--name", "demo_k16", "--no-plots", "shots=16", "table.rows=[method]",
                "table.columns=[dataset]", *argv])
    table = out_dir / "tables" / "demo_k16" / "table.md"
    if table.is_file():
        print("\n" + table.read_text())
    minutes = (time.perf_counter() - start) / 60
    _write_demo_timing(out_dir / "tables" / "demo" / "timing.json", minutes, rc)
    print(f"demo finished in {minutes:.1f} min; tables and plots: {out_dir / 'tables' / 'demo'} and "
          f"{out_dir / 'tables' / 'demo_k16'}; per-run results: {out_dir / 'results'}")
    return rc


def _write_demo_timing(path, minutes: float, rc: int) -> None:
    """The demo's wall time beside its tables (README's timing line is regenerated from it)."""
    import json
    import os
    from datetime import datetime, timezone

    from promptbench.sweep.progress import TOTAL_ENV

    if not os.environ.get(TOTAL_ENV):  # every cell was already done: nothing was timed
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"minutes": round(minutes, 2), "cells": int(os.environ.get(TOTAL_ENV) or 0),
                                "exit_status": rc, "cpu_count": os.cpu_count(),
                                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")


def _cache(argv: list[str]) -> int:
    from promptbench.cli.cache import main as cache_main

    return cache_main(argv)


def _list(_: list[str]) -> int:
    from promptbench.methods.registry import METHODS

    for group in ("backbone", "method", "dataset", "protocol", "experiment"):
        found = (p.stem for d in config_dirs() for p in (d / group).glob("*.yaml"))
        names = sorted({n for n in found if not n.startswith("_")})
        print(f"{group + ':':12s} {' '.join(names)}")
    print(f"{'registered:':12s} {' '.join(METHODS.declared_names())}")
    return 0


def _splits(argv: list[str]) -> int:
    from promptbench.data.subsets import export_main

    return export_main(argv)


def _sync(argv: list[str]) -> int:
    from promptbench.tracking.sync import main as sync_main

    return sync_main(argv)


def _audit(argv: list[str]) -> int:
    from promptbench.data.audit import main as audit_main

    return audit_main(argv)


COMMANDS = {"train": _train, "list": _list, "sweep": _sweep, "table": _table, "demo": _demo, "splits": _splits,
            "sync": _sync, "audit": _audit, "cache": _cache, "completion": _completion}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("--version", "-V", "version"):
        print(version_text())
        return 0
    if command not in COMMANDS:
        print(unknown_command(command, COMMANDS), file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    return _dispatch(command, rest)


def _dispatch(command: str, rest: list[str]) -> int:
    """Run a command with the CLI's error contract: a user error is one line on stderr (exit 1; the traceback
    with ``--debug`` or HYDRA_FULL_ERROR=1); SIGINT/SIGTERM are recorded by the running cell and exit 130/143."""
    import os

    from promptbench.core.errors import error_line
    from promptbench.engine.guards import Interrupted, handled_signals

    saved = os.environ.get("HYDRA_FULL_ERROR")
    debug = "--debug" in rest or saved == "1"
    rest = [a for a in rest if a != "--debug"]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own trace; we print one line
    signals = handled_signals(forward=command in ("sweep", "demo"))  # until this command returns (issue 21)
    signals.__enter__()
    try:
        return COMMANDS[command](rest)
    except Interrupted as err:
        print(f"promptbench {command}: interrupted by {err}; the running cell is recorded as interrupted and "
              f"will be retried by the next sweep (exit {err.exit_code})", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"promptbench {command}: interrupted (exit 130)", file=sys.stderr, flush=True)
        return 130
    except Exception as err:
        if debug:
            raise
        detail = error_line(err)
        print(f"promptbench {command}: {detail} (--debug for the traceback)", file=sys.stderr, flush=True)
        return 1
    finally:
        signals.__exit__(None, None, None)
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved
