"""A cell's status from its result file: done, stale, failed, missing or running; counts and the dry-run listing."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig

from promptbench.engine.results import (
    FAILURE_STATUSES,
    cell_dir,
    config_hash,
    current_inputs,
    identity,
    identity_mismatch,
    is_good,
    read_attempts,
    read_result,
    result_path,
    result_problem,
    staleness,
)
from promptbench.sweep.claims import lock_holder


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



STATUSES = ("done", "stale", "failed", "missing", "running")


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

