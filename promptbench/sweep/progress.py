"""Multirun progress lines: ``[k/N] <cell> done (...)  elapsed 0:12:03, ETA 0:41:10``, numbered in the order cells
finish (also across joblib workers or SLURM tasks, which share the sweep folder).

Each finished cell appends one line to ``<sweep dir>/.progress`` under a file lock; ``k`` is the number of lines.
The ETA is the mean wall time per cell that actually ran (skipped cells cost nothing) times the cells still to run,
divided by the cells running at once as observed so far (elapsed since the sweep started).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

#: environment: the sweep's start time (epoch seconds) and the number of cells still to run when it started
#: environment variable carrying the number of cells to the jobs (for "[i/N]" progress lines)
TOTAL_ENV = "PROMPTBENCH_SWEEP_TOTAL"
START_ENV = "PROMPTBENCH_SWEEP_START"
PENDING_ENV = "PROMPTBENCH_SWEEP_PENDING"
FILE = ".progress"


def begin(pending: int | None) -> None:
    """Called by the command that launches a multirun (``sweep``, ``train -m``) before the launcher starts."""
    os.environ[START_ENV] = f"{time.time():.3f}"
    if pending is not None:
        os.environ[PENDING_ENV] = str(pending)


def hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def finish(sweep_dir: str | Path, total: str, outcome: str) -> tuple[str, str]:
    """Record one finished cell (``outcome``: skip / done / failed); returns (``"[k/N] "``, ETA suffix)."""
    path = Path(sweep_dir) / FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(f"{outcome}\n")
            fh.flush()
            fh.seek(0)
            outcomes = fh.read().split()
    except OSError:
        return "", ""
    prefix = f"[{len(outcomes)}/{total}] "
    start, pending = os.environ.get(START_ENV), os.environ.get(PENDING_ENV)
    ran = sum(o != "skip" for o in outcomes)
    if not start or not ran or outcome == "skip":
        return prefix, ""
    elapsed = time.time() - float(start)
    text = f"  elapsed {hms(elapsed)}"
    if pending and pending.isdigit():
        left = max(int(pending) - ran, 0)
        text += f", ETA {hms(elapsed / ran * left)}" if left else ""
    return prefix, text
