"""Read ``result.json`` files into one long DataFrame (one row per result)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from promptbench.engine.results import read_result

log = logging.getLogger("promptbench")

#: identity columns of a result (``result.json`` → ``identity``)
ID_COLUMNS = ["protocol", "dataset", "modality", "organ", "backbone", "method", "variant", "shots", "seed"]
#: what identifies a cell across seeds (``method`` here is the method label: name[+variant])
CELL_KEY = ["protocol", "backbone", "method", "dataset", "shots"]


def find_results(root: Path) -> list[Path]:
    """Every ``result.json`` under ``root`` (sorted)."""
    root = Path(root)
    return sorted(root.rglob("result.json")) if root.is_dir() else []


def method_label(method: str, variant: str | None) -> str:
    return f"{method}+{variant}" if variant else str(method)


def result_row(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """One long-table row: identity, status, error, config hash, timing, parameters, then every metric."""
    ident = result.get("identity") or {}
    row: dict[str, Any] = {k: ident.get(k) for k in ID_COLUMNS}
    row["method_name"] = row["method"]
    row["method"] = method_label(str(row["method"]), row.get("variant"))
    row.update(
        status=result.get("status"),
        error=result.get("error"),
        config_hash=(result.get("hashes") or {}).get("config"),
        finished=result.get("finished"),
        wall_s=(result.get("timing") or {}).get("wall_s"),
        trainable_params=(result.get("params") or {}).get("trainable"),
        path=str(path),
    )
    for key, value in (result.get("metrics") or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            log.warning("%s: metric %s=%r is not a number; ignored", path, key, value)
            continue
        row[str(key)] = value
    return row


def load_results(paths: Iterable[Path]) -> pd.DataFrame:
    """A long DataFrame of the given result files (unreadable files are skipped with a warning)."""
    rows = []
    for path in paths:
        result = read_result(Path(path))
        if not result or "identity" not in result:
            log.warning("skipping unreadable result file %s", path)
            continue
        rows.append(result_row(result, Path(path)))
    df = pd.DataFrame(rows, columns=None if rows else [*ID_COLUMNS, "method_name", "status", "path"])
    if not df.empty:
        df["shots"] = df["shots"].astype(int)
        df["seed"] = df["seed"].astype(int)
        df["variant"] = df["variant"].fillna("")
        df = df.sort_values(["protocol", "backbone", "dataset", "method", "shots", "seed"], kind="stable")
    return df.reset_index(drop=True)


def collect(root: Path) -> pd.DataFrame:
    """All results under ``root`` (e.g. ``outputs/results``) as a long DataFrame."""
    return load_results(find_results(root))
