"""Upload a sweep's offline W&B runs: ``promptbench sync [OUTPUT_DIR] [--dry-run] [wandb sync options]``.

Every cell keeps its offline run in ``<output_dir>/results/.../seed_<S>/wandb/offline-run-*`` and
``promptbench table --wandb`` keeps its summary run under ``<output_dir>/tables/<name>/wandb``. This finds them all
and hands them to ``wandb sync`` (runs already uploaded are skipped). Without the ``promptbench`` entry point the
same works in plain bash::

    find outputs -type d -name 'offline-run-*' -prune -exec wandb sync --skip-synced {} +
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

BATCH = 200  # folders per `wandb sync` call (keeps the command line short)


def offline_runs(root: Path) -> list[Path]:
    """Every ``offline-run-*`` folder under ``root`` (not following the ``latest-run`` links)."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir() and not p.is_symlink())


def wandb_executable() -> str:
    beside = Path(sys.executable).parent / "wandb"
    found = str(beside) if beside.is_file() else shutil.which("wandb")
    if not found:
        raise FileNotFoundError("the `wandb` command is not installed: pip install wandb")
    return found


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="promptbench sync",
                                     description="Upload every offline W&B run under an output folder "
                                                 "(cells and table summaries) with `wandb sync`.")
    parser.add_argument("output_dir", nargs="?", type=Path, default=Path("outputs"),
                        help="the sweep's paths.output_dir (default: outputs)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    args, extra = parser.parse_known_args(list(argv))
    if not args.output_dir.is_dir():
        print(f"sync: no folder {args.output_dir} (give the sweep's paths.output_dir)", file=sys.stderr)
        return 2
    runs = offline_runs(args.output_dir)
    if not runs:
        print(f"sync: no offline W&B runs under {args.output_dir} (were the cells run with logger=wandb?)")
        return 0
    try:
        exe = wandb_executable()
    except FileNotFoundError as err:
        print(f"sync: {err}", file=sys.stderr)
        return 2
    print(f"sync: {len(runs)} offline run(s) under {args.output_dir}", flush=True)
    rc = 0
    for start in range(0, len(runs), BATCH):
        cmd = [exe, "sync", "--skip-synced", *(["--dry-run"] if args.dry_run else []), *extra,
               *map(str, runs[start:start + BATCH])]
        rc = max(rc, subprocess.run(cmd).returncode)
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
