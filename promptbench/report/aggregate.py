"""Seeds → cells → paper tables: mean ± sample std over seeds, per-group (modality) and overall averages,
base-to-novel harmonic means, missing and failed cells.

Definitions (also printed under every table, see :func:`notes`):

- a cell is (protocol, backbone, method[+variant], dataset, shots); its value is the mean over the seeds with an
  ``ok`` result, ± the sample standard deviation (ddof=1; none with one seed);
- an average (a modality group or the overall average) is the unweighted mean over its datasets of the per-dataset
  seed means; its ± is the sample std over seeds of the per-seed averages, shown only when every seed has every
  dataset; an average with a dataset missing is missing;
- base-to-novel: HM = 2·B·N / (B + N) of the seed-mean base and novel accuracies (for an average: of the averaged
  B and N); ``mean HM`` = the mean of the per-dataset HMs; ``AM`` = (B + N) / 2, the arithmetic mean that the
  Biomed-DPT README reports as "HM" (a compatibility column, not a harmonic mean).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from promptbench.report.collect import CELL_KEY

DIMS = ["backbone", "method", "dataset", "shots", "metric"]
B2N_METRICS = ["base", "novel", "hm", "mean_hm", "am"]
METRIC_LABELS = {"acc": "Acc", "base": "Base", "novel": "Novel", "hm": "HM", "mean_hm": "mean HM",
                 "am": "AM (B+N)/2 †"}
MISSING, FAILED, NOT_APPLICABLE = "–", "failed", ""


def harmonic_mean(base: float, novel: float) -> float:
    """2·B·N / (B + N); NaN when either is missing, 0 when both are 0."""
    if base is None or novel is None or math.isnan(base) or math.isnan(novel):
        return float("nan")
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); NaN for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")


#: named figure widths in inches: one column / the full text width of a two-column paper (IEEE, MICCAI, CVPR
#: are 3.3-3.5 / 6.9-7.2 in)
FIGURE_WIDTHS = {"single": 3.5, "double": 7.2}
SPLIT_BY = ("none", "group")


@dataclass
class FigureSpec:
    """How the table's figures are laid out (``table.figure`` of an experiment): ``width`` in inches or
    ``single`` (3.5 in) / ``double`` (7.2 in), the printed width (files are written at exactly that size, fonts
    7-9 pt); ``columns`` panels per row (null: as many as fit at ``MIN_PANEL_WIDTH`` in each), panels wrap into
    rows; ``split_by``: ``group`` draws one figure per method family (``Method.family``) with ``reference`` in
    each, ``none`` one figure with every method."""

    width: float | str = "double"
    columns: int | None = None
    split_by: str = "none"
    reference: str = "zeroshot"

    def __post_init__(self) -> None:
        if isinstance(self.width, str) and self.width not in FIGURE_WIDTHS:
            try:
                self.width = float(self.width)
            except ValueError:
                raise ValueError(f"table.figure.width={self.width!r}: inches (a number) or one of "
                                 f"{', '.join(FIGURE_WIDTHS)}") from None
        if not isinstance(self.width, str) and not (isinstance(self.width, (int, float)) and self.width > 0):
            raise ValueError(f"table.figure.width={self.width!r}: a positive number of inches, single or double")
        if self.columns is not None and (isinstance(self.columns, bool) or not isinstance(self.columns, int)
                                         or self.columns < 1):
            raise ValueError(f"table.figure.columns={self.columns!r}: a whole number of panels per row >= 1, or null")
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"table.figure.split_by={self.split_by!r}: one of {', '.join(SPLIT_BY)}")

    @property
    def inches(self) -> float:
        """The width in inches."""
        return FIGURE_WIDTHS[self.width] if isinstance(self.width, str) else float(self.width)

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> FigureSpec:
        node = dict(node or {})
        unknown = sorted(set(node) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"table.figure: unknown key(s) {', '.join(unknown)} (known: "
                             f"{', '.join(cls.__dataclass_fields__)})")
        return cls(**{k: v for k, v in node.items() if v is not None or k == "columns"})


@dataclass
class TableSpec:
    """How to lay out one table. ``cells`` (optional) is the grid: one row per expected (protocol, backbone,
    method, dataset, shots, seed) with its ``config_hash``; without it the cells are those found in the results."""

    name: str = "results"
    title: str = ""
    protocol: str | None = None
    backbone: str | None = None
    metric: str = "acc"
    rows: list[str] = field(default_factory=lambda: ["dataset", "method"])
    columns: list[str] = field(default_factory=lambda: ["shots"])
    groups: dict[str, list[str]] = field(default_factory=dict)
    overall: str | None = "Average"
    show_datasets: bool = True  # False: only group/average columns (e.g. one dataset per modality)
    scale: float = 100.0
    digits: int = 2
    labels: dict[str, str] = field(default_factory=dict)
    expected: str | None = None
    figure: FigureSpec = field(default_factory=FigureSpec)
    cells: pd.DataFrame | None = None

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, name: str, cells: pd.DataFrame | None = None) -> TableSpec:
        """From an experiment's ``table:`` block (unknown keys, e.g. ``include_busi``, are ignored)."""
        node = dict(node or {})
        known = {k: node[k] for k in cls.__dataclass_fields__ if k in node and k not in ("cells", "name")}
        for key in ("rows", "columns"):
            if isinstance(known.get(key), str):
                known[key] = [known[key]]
        known = {k: (list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v) for k, v in known.items()}
        if "groups" in known:
            known["groups"] = {str(k): [str(d) for d in v] for k, v in dict(known["groups"] or {}).items()}
        if "figure" in known:
            known["figure"] = FigureSpec.from_config(known["figure"])
        if "labels" in known:
            known["labels"] = {str(k): str(v) for k, v in dict(known["labels"] or {}).items()}
        return cls(name=str(node.get("name") or name), cells=cells, **known)


@dataclass
class Table:
    """One built table: display frame (strings), numeric summary, the results it used, failed/stale lists."""

    name: str
    protocol: str
    title: str
    subtitle: str
    frame: pd.DataFrame
    summary: pd.DataFrame
    long: pd.DataFrame
    failed: pd.DataFrame
    stale: pd.DataFrame
    missing: int
    notes: list[str]
    spec: TableSpec


def is_b2n(protocol: str) -> bool:
    return protocol == "base_to_novel"


def base_metrics(protocol: str, metric: str) -> dict[str, str]:
    """Table metric → result column: ``{"acc": "test/acc"}`` or ``{"base": "test_base/acc", ...}``."""
    if is_b2n(protocol):
        return {"base": f"test_base/{metric}", "novel": f"test_novel/{metric}"}
    return {"acc": f"test/{metric}"}


# ----------------------------------------------------------------------------------------- cells
def _universe(long: pd.DataFrame, spec: TableSpec, protocol: str) -> pd.DataFrame:
    """(backbone, method, dataset, shots, seed) rows that the table expects."""
    cols = ["backbone", "method", "dataset", "shots", "seed"]
    if spec.cells is not None:
        grid = spec.cells[spec.cells["protocol"] == protocol]
        return grid[cols].drop_duplicates().reset_index(drop=True)
    # without a grid: every (method, dataset, shots) combination per backbone, over every seed seen
    parts = []
    for _, block in long.groupby("backbone", sort=False):
        frames = [pd.DataFrame({c: _order(block[c])}) for c in cols[1:-1]]
        combo = frames[0]
        for f in frames[1:]:
            combo = combo.merge(f, how="cross")
        combo.insert(0, "backbone", block["backbone"].iloc[0])
        parts.append(combo.merge(pd.DataFrame({"seed": sorted(block["seed"].unique())}), how="cross"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def _order(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def summarize(long: pd.DataFrame, spec: TableSpec, protocol: str,
              modality: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Numeric summary, one row per (backbone, method, dataset-or-group, shots, metric).

    Columns: ``kind`` (dataset / group), ``mean``, ``std``, ``n`` (seeds used), ``n_expected``, ``n_failed``,
    ``state`` (ok / partial / failed / missing / n/a). Values are fractions (not scaled). ``modality`` (dataset →
    modality) gives the default groups when the spec has none.
    """
    universe = _universe(long, spec, protocol)
    metrics = base_metrics(protocol, spec.metric)
    ok = long[long["status"] == "ok"]
    failed = long[long["status"] == "failed"]
    key = ["backbone", "method", "dataset", "shots", "seed"]
    per_seed = universe.merge(ok[key + [c for c in metrics.values() if c in ok.columns]], on=key, how="left")
    for col in metrics.values():
        if col not in per_seed:
            per_seed[col] = np.nan
    per_seed = per_seed.rename(columns={v: k for k, v in metrics.items()})
    failed_keys = set(map(tuple, failed[key].itertuples(index=False, name=None)))
    per_seed["failed"] = [tuple(r) in failed_keys for r in per_seed[key].itertuples(index=False, name=None)]

    rows: list[dict[str, Any]] = []
    cell_cols = ["backbone", "method", "dataset", "shots"]
    per_dataset: dict[tuple, dict[str, Any]] = {}
    for cell, block in per_seed.groupby(cell_cols, sort=False):
        n_expected, n_failed = len(block), int(block["failed"].sum())
        stats: dict[str, Any] = {}
        for metric in metrics:
            values = block[metric].dropna().tolist()
            state = "ok" if len(values) == n_expected else ("partial" if values else
                                                             ("failed" if n_failed else "missing"))
            stats[metric] = {"mean": float(np.mean(values)) if values else float("nan"), "std": sample_std(values),
                             "n": len(values), "state": state}
        if is_b2n(protocol):
            b, n = stats["base"], stats["novel"]
            worst = b if b["n"] <= n["n"] else n
            derived_state = worst["state"]
            stats["hm"] = {"mean": harmonic_mean(b["mean"], n["mean"]), "std": float("nan"), "n": worst["n"],
                           "state": derived_state}
            stats["am"] = {"mean": (b["mean"] + n["mean"]) / 2, "std": float("nan"), "n": worst["n"],
                           "state": derived_state}
            stats["mean_hm"] = {"mean": float("nan"), "std": float("nan"), "n": 0, "state": "n/a"}
        per_dataset[cell] = {"block": block, "stats": stats}
        for metric, s in stats.items():
            rows.append({**dict(zip(cell_cols, cell)), "kind": "dataset", "metric": metric, "mean": s["mean"],
                         "std": s["std"], "n": s["n"], "n_expected": n_expected, "n_failed": n_failed,
                         "state": s["state"]})

    groups = _groups(spec, _order(universe["dataset"]), modality or {})
    rows += _group_rows(per_dataset, groups, protocol, list(metrics))
    out = pd.DataFrame(rows, columns=[*cell_cols, "kind", "metric", "mean", "std", "n", "n_expected", "n_failed",
                                      "state"])
    out.insert(0, "protocol", protocol)
    return out


def _groups(spec: TableSpec, datasets: list[str], modality: Mapping[str, str]) -> dict[str, list[str]]:
    """Group label → member datasets present in the table; then the overall average."""
    if spec.groups:
        groups = {g: [d for d in members if d in datasets] for g, members in spec.groups.items()}
    else:
        by_mod: dict[str, list[str]] = {}
        for d in datasets:
            if modality.get(d):
                by_mod.setdefault(modality[d], []).append(d)
        groups = by_mod if len(by_mod) > 1 else {}
    groups = {g: m for g, m in groups.items() if m}
    if spec.overall and len(datasets) > 1:
        groups[spec.overall] = list(datasets)
    return groups


def _group_rows(per_dataset: dict[tuple, dict[str, Any]], groups: Mapping[str, list[str]], protocol: str,
                metrics: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    outer = _order((bb, m, k) for (bb, m, _, k) in per_dataset)
    for backbone, method, shots in outer:
        for group, members in groups.items():
            cells = [per_dataset.get((backbone, method, d, shots)) for d in members]
            present = [c for c in cells if c is not None]
            if not present:
                continue
            stats: dict[str, dict[str, Any]] = {}
            for metric in metrics:
                means = [c["stats"][metric]["mean"] for c in present]
                complete = len(present) == len(members) and not any(math.isnan(x) for x in means)
                seed_table = pd.concat([c["block"].set_index("seed")[metric] for c in present], axis=1)
                full_seeds = seed_table.dropna()
                all_seeds = complete and len(full_seeds) == len(seed_table)
                stats[metric] = {
                    "mean": float(np.mean(means)) if complete else float("nan"),
                    "std": sample_std(full_seeds.mean(axis=1).tolist()) if all_seeds else float("nan"),
                    "n": len(full_seeds) if complete else 0,
                    "n_expected": len(seed_table),
                    "state": ("ok" if all_seeds else "partial") if complete else (
                        "failed" if any(c["stats"][metric]["state"] == "failed" for c in present) else "missing"),
                }
            if is_b2n(protocol):
                b, n = stats["base"], stats["novel"]
                state = b["state"] if b["n"] <= n["n"] else n["state"]
                per_hm = [c["stats"]["hm"]["mean"] for c in present]
                hm_ok = len(present) == len(members) and not any(math.isnan(x) for x in per_hm)
                common = {"std": float("nan"), "n": min(b["n"], n["n"]), "n_expected": b["n_expected"],
                          "state": state}
                stats["hm"] = {**common, "mean": harmonic_mean(b["mean"], n["mean"])}
                stats["mean_hm"] = {**common, "mean": float(np.mean(per_hm)) if hm_ok else float("nan")}
                stats["am"] = {**common, "mean": (b["mean"] + n["mean"]) / 2}
            for metric, s in stats.items():
                rows.append({"backbone": backbone, "method": method, "dataset": group, "shots": shots,
                             "kind": "group", "metric": metric, "mean": s["mean"], "std": s["std"], "n": s["n"],
                             "n_expected": s["n_expected"], "n_failed": 0, "state": s["state"]})
    return rows


# ----------------------------------------------------------------------------------------- display
def format_value(row: Mapping[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    """``72.41 ± 1.23``; ``(2/3)`` appended when fewer seeds than expected; ``–`` missing; ``failed``."""
    state = row["state"]
    if state == "n/a":
        return NOT_APPLICABLE
    if state in ("missing", "failed") or math.isnan(row["mean"]):
        return FAILED if state == "failed" else MISSING
    text = f"{row['mean'] * scale:.{digits}f}"
    if not math.isnan(row["std"]):
        text += f" ± {row['std'] * scale:.{digits}f}"
    if row["n"] < row["n_expected"]:
        text += f" ({row['n']}/{row['n_expected']})"
    return text


def _label(spec: TableSpec, dim: str, value: Any, groups: set[str]) -> str:
    if dim == "shots":
        return f"K={value}"
    if dim == "metric":
        return METRIC_LABELS.get(str(value), str(value))
    text = spec.labels.get(str(value), str(value))
    if dim == "dataset" and value in groups and value != spec.overall:
        text = f"{text} (avg)"
    return text


def display_frame(summary: pd.DataFrame, spec: TableSpec, protocol: str) -> tuple[pd.DataFrame, str]:
    """Pivot the summary into the paper-style frame (strings); returns (frame, subtitle of fixed dimensions)."""
    data = summary.copy()
    data["text"] = [format_value(r, spec.scale, spec.digits) for r in data.to_dict("records")]
    metric_order = B2N_METRICS if is_b2n(protocol) else ["acc"]
    orders = {
        "backbone": _order(data["backbone"]),
        "method": _order(data["method"]),
        "dataset": _order(list(data.loc[data["kind"] == "dataset", "dataset"])
                          + list(data.loc[data["kind"] == "group", "dataset"])),
        "shots": sorted(data["shots"].unique()),
        "metric": [m for m in metric_order if m in set(data["metric"])],
    }
    if not spec.show_datasets and (data["kind"] == "group").any():
        orders["dataset"] = _order(list(data.loc[data["kind"] == "group", "dataset"]))
    rows = [d for d in spec.rows if d in DIMS]
    cols = [d for d in spec.columns if d in DIMS and d not in rows]
    rest = [d for d in DIMS if d not in rows + cols]
    fixed = [d for d in rest if len(orders[d]) <= 1]
    cols += [d for d in rest if d == "metric" and len(orders[d]) > 1]       # Base / Novel / HM ... as columns
    rows += [d for d in rest if d != "metric" and len(orders[d]) > 1]
    if any(len(orders[d]) > 1 for d in cols):                                # a one-value column dim says nothing
        fixed += [d for d in cols if len(orders[d]) <= 1]
        cols = [d for d in cols if len(orders[d]) > 1]
    if not cols:
        cols, rows = [rows[-1]], rows[:-1]
    groups = set(data.loc[data["kind"] == "group", "dataset"])
    index, columns = (pd.MultiIndex.from_product([orders[d] for d in dims], names=dims) if len(dims) > 1
                      else pd.Index(orders[dims[0]], name=dims[0]) for dims in (rows, cols))
    wide = data.pivot_table(index=rows, columns=cols, values="text", aggfunc="first")
    # rows that do not exist (e.g. a group none of whose datasets a method has) are dropped; missing cells
    # of existing rows are in the summary (state "missing") and already read '–'
    wide = wide.reindex(index=index, columns=columns).dropna(how="all").fillna(MISSING)
    frame = wide.copy()
    frame.columns = [" / ".join(_label(spec, d, v, groups) for d, v in zip(cols, key))
                     if isinstance(key, tuple) else _label(spec, cols[0], key, groups) for key in frame.columns]
    frame = frame.reset_index()
    for dim in rows:
        frame[dim] = [_label(spec, dim, v, groups) for v in frame[dim]]
    frame = frame.rename(columns={d: d.capitalize() if d != "shots" else "K" for d in rows})
    subtitle = ", ".join(f"{d}={orders[d][0]}" for d in fixed if orders[d] and d != "metric")
    return frame, subtitle


def notes(protocol: str, spec: TableSpec) -> list[str]:
    unit = "%" if spec.scale == 100 else f"×{spec.scale:g}"
    out = [
        f"Metric: test {spec.metric} ({unit}). Cells: mean ± sample standard deviation (ddof=1) over seeds; "
        "'(n/m)': only n of the m seeds have a result; '–': no result; 'failed': every seed failed (listed below).",
        "Averages: unweighted mean over their datasets of the per-dataset seed means; ± is the sample std over "
        "seeds of the per-seed averages (shown only when every seed has every dataset); an average with a dataset "
        "missing is shown as '–'.",
    ]
    if is_b2n(protocol):
        out.append("Base-to-novel: HM = 2·B·N/(B+N), the true harmonic mean of the seed-mean base (B) and novel (N) "
                   "accuracies (for an average: of the averaged B and N); 'mean HM' = mean of the per-dataset HMs. "
                   "† AM = (B+N)/2 is the arithmetic mean that the Biomed-DPT README reports as 'HM'; it is shown "
                   "only for comparison with that paper and is not a harmonic mean.")
    return out


def build_table(long: pd.DataFrame, spec: TableSpec, protocol: str) -> Table:
    """One table for one protocol from the long results frame (already restricted to what the table covers)."""
    data = long[long["protocol"] == protocol] if len(long) else long
    if spec.backbone and len(data):
        data = data[data["backbone"] == spec.backbone]
    modality = dict(zip(data["dataset"], data["modality"])) if len(data) else {}
    if spec.cells is not None and "modality" in spec.cells:
        modality.update(dict(zip(spec.cells["dataset"], spec.cells["modality"])))
    summary = summarize(data, spec, protocol, modality)
    frame, subtitle = display_frame(summary, spec, protocol) if len(summary) else (pd.DataFrame(), "")
    stale = pd.DataFrame()
    if spec.cells is not None and len(data) and "config_hash" in spec.cells:
        extra = [c for c in ("cell_status", "seen") if c in spec.cells]
        merged = data.merge(spec.cells[[*CELL_KEY, "seed", "config_hash", *extra]], on=[*CELL_KEY, "seed"],
                            suffixes=("", "_expected"))
        if extra:  # the sweep's own status of the result read; one replaced since it was read was not done
            replaced = (merged["finished"].fillna("").astype(str) != merged["seen"].fillna("").astype(str)
                        if "finished" in merged else False)
            rerun = (merged["cell_status"] == "running") & (merged["config_hash"] != merged["config_hash_expected"])
            stale = merged[(merged["status"] == "ok") & ((merged["cell_status"] == "stale") | replaced | rerun)]
        else:
            stale = merged[(merged["status"] == "ok") & (merged["config_hash"] != merged["config_hash_expected"])]
    failed = data[data["status"] == "failed"] if len(data) else data
    first = next(iter(base_metrics(protocol, spec.metric)))
    missing = int(((summary["kind"] == "dataset") & (summary["metric"] == first)
                   & (summary["state"] == "missing")).sum())
    title = spec.title or f"{spec.name}: {protocol}"
    return Table(name=spec.name, protocol=protocol, title=title, subtitle=subtitle, frame=frame, summary=summary,
                 long=data, failed=failed, stale=stale, missing=missing, notes=notes(protocol, spec), spec=spec)


def build_tables(long: pd.DataFrame, spec: TableSpec) -> list[Table]:
    """One table per protocol (of the grid when the spec has one, else of the results)."""
    if spec.cells is not None:
        protocols = _order(spec.cells["protocol"])
        key = [*CELL_KEY, "seed"]
        long = long.merge(spec.cells[key].drop_duplicates(), on=key, how="inner") if len(long) else long
    else:
        protocols = _order(long["protocol"]) if len(long) else []
        if spec.protocol:
            protocols = [p for p in protocols if p == spec.protocol]
    return [build_table(long, spec, p) for p in protocols]
