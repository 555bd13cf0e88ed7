"""``promptbench`` command line: ``train`` (one cell or a Hydra multirun), ``list``, ``sweep``, ``table``.

    promptbench train method=coop dataset=btmri shots=16 seed=1 backbone=biomedclip
    promptbench train -m method=zeroshot,coop seed=1,2,3
    promptbench sweep experiment=few_shot [--dry-run]
    promptbench table --experiment few_shot --expected few_shot
"""

from __future__ import annotations

import logging
import sys

from promptbench.config import CONFIG_DIR

USAGE = """usage: promptbench <command> [overrides...]

commands:
  train   run one experiment cell (Hydra overrides; -m for a multirun grid)
  list    list available backbones, methods, datasets and experiments
  sweep   run an experiment's grid (experiment=<name>; resumable; --dry-run lists cells and status)
  cache   list | clear the frozen image-feature store (paths.cache_dir or $PROMPTBENCH_CACHE)
  table   results -> long CSV and mean±std tables (md/tex/html) and plots (--experiment, --expected)
  demo    the embedded demo: every method x X-ray/CT/MRI demo subsets x shots 1,4,16 x seeds 1-3 on the
          shipped medclip_tiny backbone (CPU, minutes), then its tables and plots
"""


def quiet_libraries() -> None:
    """Keep the console for progress and results: library INFO chatter and known-intentional warnings off."""
    import warnings

    for name in ("root", "lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero", "open_clip", "timm", "transformers"):
        logging.getLogger(None if name == "root" else name).setLevel(logging.WARNING)
    logging.getLogger("promptbench").setLevel(logging.INFO)
    for pattern in (".*module\\(s\\) in eval mode.*", ".*smaller than the logging interval.*", ".*LeafSpec.*",
                    ".*does not have many workers.*", ".*litlogger.*", ".*No pretrained weights loaded.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _hydra_main(argv: list[str], prog: str = "train") -> int:
    """The Hydra app of ``train`` and ``sweep``: task function :func:`promptbench.sweep.run_cell`."""
    import hydra

    from promptbench.sweep import quiet_launcher_schema_warning, run_cell

    quiet_launcher_schema_warning()
    sys.argv = [f"{sys.argv[0]} {prog}", *argv]
    hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")(run_cell)()
    return 0


def _train(argv: list[str]) -> int:
    return _hydra_main(argv, "train")


def _sweep(argv: list[str]) -> int:
    from promptbench.sweep import sweep

    return sweep(argv, launch=lambda args: _hydra_main(args, "sweep"))


def _table(argv: list[str]) -> int:
    from promptbench.tables.build import main as table_main

    return table_main(argv)


def _demo(argv: list[str]) -> int:
    """Run the demo sweep (resumable), then build its tables; print the 16-shot modality table."""
    import time
    from pathlib import Path

    from promptbench.config import compose

    start = time.perf_counter()
    out_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("paths.output_dir=")), None)
    out_dir = Path(out_dir or compose(["dataset=demo_btmri"]).paths.output_dir)
    rc = _sweep(["experiment=demo", *argv])
    _table(["--experiment", "demo", *argv])
    _table(["--experiment", "demo", "--name", "demo_k16", "--no-plots", "shots=16", "table.rows=[method]",
            "table.columns=[dataset]", *argv])
    table = out_dir / "tables" / "demo_k16" / "table.md"
    if table.is_file():
        print("\n" + table.read_text())
    minutes = (time.perf_counter() - start) / 60
    print(f"demo finished in {minutes:.1f} min; tables and plots: {out_dir / 'tables' / 'demo'} and "
          f"{out_dir / 'tables' / 'demo_k16'}; per-run results: {out_dir / 'results'}")
    return rc


def _cache(argv: list[str]) -> int:
    from promptbench.features.cli import main as cache_main

    return cache_main(argv)


def _list(_: list[str]) -> int:
    from promptbench.methods import load_all

    for group in ("backbone", "method", "dataset", "protocol", "experiment"):
        names = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))
        print(f"{group + ':':12s} {' '.join(names)}")
    print(f"{'registered:':12s} {' '.join(sorted(load_all()))}")
    return 0


COMMANDS = {"train": _train, "list": _list, "sweep": _sweep, "table": _table, "demo": _demo,
            "cache": _cache}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command '{command}'.\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
