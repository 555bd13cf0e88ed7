"""Read ``result.json`` files into one long DataFrame (one row per cell and seed).

A result is the cell its folder says it is (docs/reliability.md, "Identity"): a file is counted only at its
identity's own path ``<protocol>/<dataset>/<backbone>/<method>[+variant]/shots_<K>/seed_<S>/result.json``
(whatever the folder above ``<protocol>/``). Files claiming one cell are counted once, the one at the cell's
path (the shallowest if several are), with one warning naming them all; a file at no cell's own path (e.g. only
a ``coop.bak`` copy) is left out with one warning naming it and the cell it claims. Unreadable, malformed or
future-schema files are left out with one warning each (:func:`promptbench.engine.results.result_problem`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from promptbench.engine.limits import is_debug_result
from promptbench.engine.results import at_own_path, identity_parts, load_result

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
        if not math.isfinite(value):  # bare NaN/Infinity: Python's JSON reader accepts them, ours never writes them
            log.warning("%s: metric %s=%r is not finite; ignored", path, key, value)
            continue
        row[str(key)] = value
    return row


def load_results(paths: Iterable[Path]) -> pd.DataFrame:
    """A long DataFrame of the given result files, one row per cell (see the module docstring for the files
    left out, each named in a warning; ``df.attrs["left_out"]`` counts them)."""
    claims: dict[tuple[str, ...], list[tuple[Path, dict[str, Any]]]] = {}
    left_out = 0
    for path in dict.fromkeys(p if isinstance(p, Path) else Path(p) for p in paths):  # a path given twice: once
        result, problem = load_result(path)
        if result is None:
            log.warning("skipping result file %s: %s", path, problem)
            left_out += 1
            continue
        if is_debug_result(result):  # debug=default runs (conf/debug) are never counted
            log.debug("skipping debug-run result %s", path)
            continue
        claims.setdefault(identity_parts(result["identity"]), []).append((path, result))
    rows = []
    for cell, files in claims.items():
        chosen = _counted(cell, files)
        left_out += len(files) - (chosen is not None)
        if chosen is not None:
            rows.append(result_row(chosen[1], chosen[0]))
    df = pd.DataFrame(rows, columns=None if rows else [*ID_COLUMNS, "method_name", "status", "path"])
    if not df.empty:
        df["shots"] = df["shots"].astype(int)
        df["seed"] = df["seed"].astype(int)
        df["variant"] = df["variant"].fillna("")
        df = df.sort_values(["protocol", "backbone", "dataset", "method", "shots", "seed"], kind="stable")
    df = df.reset_index(drop=True)
    df.attrs["left_out"] = left_out  # result files not counted (each named in a warning)
    return df


def _counted(cell: tuple[str, ...], files: list[tuple[Path, dict[str, Any]]]
             ) -> tuple[Path, dict[str, Any]] | None:
    """The one file counted for ``cell`` among those claiming it: the one at the cell's own path (the shallowest
    of several); None when none is there. Warns once when any file is left out."""
    if len(files) == 1 and at_own_path(files[0][1], files[0][0]):
        return files[0]
    own = sorted((f for f in files if at_own_path(f[1], f[0])), key=lambda f: (len(f[0].parts), str(f[0])))
    label = "/".join(cell)
    if not own:
        log.warning("skipping result file(s) %s: the result of %s, not at that cell's path (.../%s/result.json); "
                    "move it there to count it", ", ".join(str(f[0]) for f in files), label, label)
        return None
    others = [str(f[0]) for f in files if f is not own[0]]
    log.warning("%d result files claim %s: counting %s (the cell's path), ignoring %s (a copied or moved folder?)",
                len(files), label, own[0][0], ", ".join(others))
    return own[0]


def collect(root: Path) -> pd.DataFrame:
    """All results under ``root`` (e.g. ``outputs/results``) as a long DataFrame."""
    return load_results(find_results(root))
