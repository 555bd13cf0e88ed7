"""Plots from a table's numeric summary (matplotlib, Agg backend): accuracy vs shots, accuracy bars,
base/novel bars. Error bars are the same sample std over seeds as in the tables."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from promptbench.tables.aggregate import Table, is_b2n  # noqa: E402


def _grid(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _series_label(row: pd.Series, several_backbones: bool) -> str:
    return f"{row['method']} ({row['backbone']})" if several_backbones else str(row["method"])


def _datasets(summary: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(summary["dataset"]))


def _title(summary: pd.DataFrame, dataset: str, table: Table) -> str:
    kind = summary.loc[summary["dataset"] == dataset, "kind"]
    group = len(kind) and kind.iloc[0] == "group" and dataset != table.spec.overall
    return f"{dataset} (avg)" if group else str(dataset)


def _legend(fig: plt.Figure, axes: list[plt.Axes]) -> None:
    """One legend, right of the panels, with every series of every panel."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))


_MARKERS = "osD^v<>ph*"


def _styles(keys) -> dict:
    """Distinct colour + marker per series (tab20 colours, markers cycling), stable in series order."""
    cmap = plt.get_cmap("tab20")
    return {key: {"color": cmap(i % 20), "marker": _MARKERS[i % len(_MARKERS)]} for i, key in enumerate(keys)}


def plot_accuracy_vs_shots(table: Table, path: Path) -> Path | None:
    """One panel per dataset (and average), one line per method: mean over seeds vs K, ± std bars."""
    data = table.summary[(table.summary["metric"] == "acc") & table.summary["mean"].notna()]
    if data.empty or data["shots"].nunique() < 2:
        return None
    scale, several = table.spec.scale, data["backbone"].nunique() > 1
    datasets = _datasets(data)
    styles = _styles(dict.fromkeys(zip(data["backbone"], data["method"])))
    fig, axes = _grid(len(datasets))
    for ax, dataset in zip(axes, datasets):
        block = data[data["dataset"] == dataset]
        for key, line in block.groupby(["backbone", "method"], sort=False):
            line = line.sort_values("shots")
            ax.errorbar(line["shots"], line["mean"] * scale, yerr=(line["std"] * scale).fillna(0), capsize=2,
                        markersize=4, label=_series_label(line.iloc[0], several), **styles[key])
        ax.set_xscale("log", base=2)
        shots = sorted(block["shots"].unique())
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.set_title(_title(data, dataset, table), fontsize=9)
        ax.set_xlabel("shots per class")
        ax.set_ylabel(f"{table.spec.metric} (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _legend(fig, axes)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_accuracy_bars(table: Table, path: Path) -> Path | None:
    """Grouped bars: one group per dataset (and average), one bar per method (single shots value)."""
    data = table.summary[(table.summary["metric"] == "acc") & table.summary["mean"].notna()]
    if data.empty or data["shots"].nunique() != 1:
        return None
    scale, several = table.spec.scale, data["backbone"].nunique() > 1
    datasets = _datasets(data)
    series = list(dict.fromkeys(zip(data["backbone"], data["method"])))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(min(24, max(6, 0.6 * len(datasets) * max(1, len(series)))), 3.6))
    x = np.arange(len(datasets))
    for i, (backbone, method) in enumerate(series):
        rows = data[(data["method"] == method) & (data["backbone"] == backbone)].set_index("dataset")
        rows = rows.reindex(datasets)
        label = f"{method} ({backbone})" if several else method
        ax.bar(x + i * width, rows["mean"] * scale, width, yerr=(rows["std"] * scale).fillna(0), capsize=2,
               label=label)
    ax.set_xticks(x + width * (len(series) - 1) / 2, [_title(data, d, table) for d in datasets], rotation=20,
                  fontsize=8)
    ax.set_ylabel(f"{table.spec.metric} (%)")
    ax.set_title(f"{table.title} (K={data['shots'].iloc[0]})", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_base_novel(table: Table, path: Path) -> Path | None:
    """Base-to-novel: one panel per dataset (and average), base / novel bars per method, HM as a marker."""
    data = table.summary[table.summary["metric"].isin(["base", "novel", "hm"])]
    if data["mean"].notna().sum() == 0:
        return None
    scale, datasets = table.spec.scale, _datasets(data)
    fig, axes = _grid(len(datasets))
    for ax, dataset in zip(axes, datasets):
        block = data[data["dataset"] == dataset].pivot_table(index="method", columns="metric", values="mean",
                                                             sort=False)
        block = block.reindex(columns=["base", "novel", "hm"])
        x = np.arange(len(block))
        ax.bar(x - 0.2, block["base"] * scale, 0.4, label="base")
        ax.bar(x + 0.2, block["novel"] * scale, 0.4, label="novel")
        ax.plot(x, block["hm"] * scale, "k_", markersize=14, mew=2, label="HM")
        ax.set_xticks(x, list(block.index), rotation=30, fontsize=7)
        ax.set_title(_title(data, dataset, table), fontsize=9)
        ax.set_ylim(0, 100 if scale == 100 else None)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _legend(fig, axes)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_table(table: Table, out_dir: Path, prefix: str = "") -> list[Path]:
    """All plots that fit the table; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_b2n(table.protocol):
        made = [plot_base_novel(table, out_dir / f"{prefix}base_novel.png")]
    else:
        made = [plot_accuracy_vs_shots(table, out_dir / f"{prefix}acc_vs_shots.png"),
                plot_accuracy_bars(table, out_dir / f"{prefix}acc_bars.png")]
    return [p for p in made if p is not None]
