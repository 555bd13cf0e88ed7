"""Plots from a table's numeric summary (matplotlib, Agg backend): accuracy vs shots, accuracy bars,
base/novel bars. Error bars are the same sample std over seeds as in the tables.

Every figure is written as vector PDF and SVG plus a 300-dpi PNG. Each method keeps one style in every figure of a
table (:func:`method_styles`): an Okabe-Ito colour (colour-blind safe) x marker x line style / bar hatch, so 17+
methods stay distinguishable in colour, in grey scale and in print. A dashed grey line marks chance (1 / number of
classes; for an average, the mean over its datasets). A modality with a single dataset gets one panel (the dataset's,
titled with the modality), not a second identical "(avg)" panel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from promptbench.report.aggregate import Table, is_b2n
from promptbench.report.results_meta import chance_levels, group_members, method_display_names

#: Okabe & Ito (2008) colour-blind-safe palette, without yellow (too light on white)
OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7"]
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "<", ">", "p", "*"]  # 11: coprime with 7 colours
LINESTYLES = ["-", "--", ":", "-."]
HATCHES = ["", "///", "...", "xxx", "\\\\\\"]
FORMATS = ("pdf", "svg", "png")
DPI = 300
RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "font.size": 8, "axes.titlesize": 9,
      "legend.fontsize": 7, "savefig.dpi": DPI}


def method_styles(keys: Iterable[Any]) -> dict[Any, dict[str, Any]]:
    """A distinct (colour, marker, line style, hatch) per key, stable in key order: the colour cycles through the 7
    Okabe-Ito colours, the line style / hatch changes every 7 keys and the marker cycles through 11, so no two of
    the first 28 keys share colour and line style, and no two of the first 77 share colour and marker."""
    out = {}
    for i, key in enumerate(dict.fromkeys(keys)):
        out[key] = {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[i % len(MARKERS)],
                    "linestyle": LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)],
                    "hatch": HATCHES[(i // len(OKABE_ITO)) % len(HATCHES)]}
    return out


def _line(style: Mapping[str, Any]) -> dict[str, Any]:
    return {k: style[k] for k in ("color", "marker", "linestyle")}


def _grid(n: int, max_cols: int = 4, width: float = 3.4) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _name(method: str, names: Mapping[str, str]) -> str:
    base, _, variant = str(method).partition("+")
    return names.get(str(method)) or (names.get(base, base) + (f"+{variant}" if variant else ""))


def _series_label(backbone: str, method: str, several_backbones: bool, names: Mapping[str, str]) -> str:
    label = _name(method, names)
    return f"{label} ({backbone})" if several_backbones else label


def panels(summary: pd.DataFrame, table: Table) -> list[tuple[str, str]]:
    """(dataset-or-group key, panel title) in table order; a group whose only member is a plotted dataset is
    folded into that dataset's panel (title 'dataset (group)')."""
    datasets = list(dict.fromkeys(summary.loc[summary["kind"] == "dataset", "dataset"]))
    groups = list(dict.fromkeys(summary.loc[summary["kind"] == "group", "dataset"]))
    members = group_members(table, datasets)
    folded: dict[str, str] = {}
    out_groups = []
    for group in groups:
        inside = [d for d in members.get(group, []) if d in datasets]
        if len(inside) == 1 and group != table.spec.overall:
            folded.setdefault(inside[0], group)
        elif not (len(inside) == 1 and len(datasets) == 1):
            out_groups.append(group)
    label = table.spec.labels
    out = [(d, f"{label.get(d, d)} ({folded[d]})" if d in folded else label.get(d, d)) for d in datasets]
    out += [(g, g if g == table.spec.overall else f"{g} (avg)") for g in out_groups]
    return out


def _legend(fig: plt.Figure, axes: list[plt.Axes]) -> None:
    """One legend, right of the panels, with every series of every panel."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                   handlelength=3.0)


def save_figure(fig: plt.Figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``stem.<fmt>`` for each format (PNG at 300 dpi); closes the figure."""
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def _chance(ax: plt.Axes, value: float | None, scale: float, label: str = "chance") -> None:
    if value is not None and not math.isnan(value):
        ax.axhline(value * scale, color="0.45", linestyle=(0, (4, 3)), linewidth=0.9, zorder=0, label=label)


def _acc_data(table: Table) -> pd.DataFrame:
    return table.summary[(table.summary["metric"] == "acc") & table.summary["mean"].notna()]


def plot_accuracy_vs_shots(table: Table, stem: Path, names: Mapping[str, str] | None = None,
                           formats: Sequence[str] = FORMATS) -> list[Path]:
    """One panel per dataset (and average), one line per method: mean over seeds vs K, ± std bars."""
    data, names = _acc_data(table), names or {}
    if data.empty or data["shots"].nunique() < 2:
        return []
    scale, several = table.spec.scale, data["backbone"].nunique() > 1
    chance = chance_levels(table)
    styles = method_styles(zip(data["backbone"], data["method"]))
    with plt.rc_context(RC):
        layout = panels(data, table)
        fig, axes = _grid(len(layout))
        for ax, (dataset, title) in zip(axes, layout):
            block = data[data["dataset"] == dataset]
            for key, line in block.groupby(["backbone", "method"], sort=False):
                line = line.sort_values("shots")
                ax.errorbar(line["shots"], line["mean"] * scale, yerr=(line["std"] * scale).fillna(0), capsize=2,
                            markersize=3.5, linewidth=1.1, label=_series_label(*key, several, names),
                            **_line(styles[key]))
            _chance(ax, chance.get(dataset), scale)
            ax.set_xscale("log", base=2)
            shots = sorted(block["shots"].unique())
            ax.set_xticks(shots, [str(s) for s in shots])
            ax.minorticks_off()
            ax.set_title(title)
            ax.set_xlabel("shots per class (K)")
            ax.set_ylabel(f"{table.spec.metric} (%)" if scale == 100 else table.spec.metric)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        _legend(fig, axes)
        return save_figure(fig, stem, formats)


def plot_accuracy_bars(table: Table, stem: Path, names: Mapping[str, str] | None = None,
                       formats: Sequence[str] = FORMATS) -> list[Path]:
    """Grouped bars: one group per dataset (and average), one bar per method (single shots value), ± std."""
    data, names = _acc_data(table), names or {}
    if data.empty or data["shots"].nunique() != 1:
        return []
    scale, several = table.spec.scale, data["backbone"].nunique() > 1
    chance = chance_levels(table)
    series = list(dict.fromkeys(zip(data["backbone"], data["method"])))
    styles = method_styles(series)
    with plt.rc_context(RC):
        layout = panels(data, table)
        width = 0.8 / max(1, len(series))
        fig, ax = plt.subplots(figsize=(min(24, max(6, 0.3 * len(layout) * max(1, len(series)))), 3.4))
        x = np.arange(len(layout))
        keys = [k for k, _ in layout]
        for i, (backbone, method) in enumerate(series):
            rows = data[(data["method"] == method) & (data["backbone"] == backbone)].set_index("dataset")
            rows = rows.reindex(keys)
            style = styles[(backbone, method)]
            ax.bar(x + i * width, rows["mean"] * scale, width, yerr=(rows["std"] * scale).fillna(0), capsize=1.5,
                   color=style["color"], hatch=style["hatch"], edgecolor="white", linewidth=0.3,
                   error_kw={"elinewidth": 0.7}, label=_series_label(backbone, method, several, names))
        for j, key in enumerate(keys):  # chance per group of bars
            value = chance.get(key)
            if value is not None and not math.isnan(value):
                ax.hlines(value * scale, j - width / 2, j + width * (len(series) - 0.5), colors="0.3",
                          linestyles=(0, (4, 3)), linewidth=0.9, zorder=3, label="chance")
        ax.set_xticks(x + width * (len(series) - 1) / 2, [t for _, t in layout], rotation=15)
        ax.set_ylabel(f"{table.spec.metric} (%)" if scale == 100 else table.spec.metric)
        ax.set_title(f"{table.title} (K={data['shots'].iloc[0]})")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(list(unique.values()), list(unique), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
        return save_figure(fig, stem, formats)


def plot_base_novel(table: Table, stem: Path, names: Mapping[str, str] | None = None,
                    formats: Sequence[str] = FORMATS) -> list[Path]:
    """Base-to-novel: one panel per dataset (and average); per method a base and a novel bar with ± std error
    bars (sample std over seeds), HM as a black tick; chance for base and novel classes as grey lines."""
    data, names = table.summary[table.summary["metric"].isin(["base", "novel", "hm"])], names or {}
    if data["mean"].notna().sum() == 0:
        return []
    scale = table.spec.scale
    chance = chance_levels(table)
    with plt.rc_context(RC):
        layout = panels(data, table)
        n_methods = data["method"].nunique()
        fig, axes = _grid(len(layout), 4 if n_methods <= 6 else 2, max(3.4, 0.4 * n_methods + 1))
        for ax, (dataset, title) in zip(axes, layout):
            block = data[data["dataset"] == dataset]
            mean = block.pivot_table(index="method", columns="metric", values="mean", sort=False, dropna=False)
            std = block.pivot_table(index="method", columns="metric", values="std", sort=False, dropna=False)
            mean = mean.reindex(columns=["base", "novel", "hm"])
            std = std.reindex(index=mean.index, columns=["base", "novel", "hm"])
            x = np.arange(len(mean))
            ax.bar(x - 0.2, mean["base"] * scale, 0.4, yerr=(std["base"] * scale).fillna(0), capsize=1.5,
                   color=OKABE_ITO[4], error_kw={"elinewidth": 0.7}, label="base")
            ax.bar(x + 0.2, mean["novel"] * scale, 0.4, yerr=(std["novel"] * scale).fillna(0), capsize=1.5,
                   color=OKABE_ITO[1], hatch="///", edgecolor="white", linewidth=0.3, error_kw={"elinewidth": 0.7},
                   label="novel")
            ax.plot(x, mean["hm"] * scale, "k_", markersize=12, mew=2, label="HM", linestyle="none")
            _chance(ax, chance.get((dataset, "base")), scale, "chance (base classes)")
            value = chance.get((dataset, "novel"))
            if value is not None and not math.isnan(value):
                ax.axhline(value * scale, color="0.45", linestyle=":", linewidth=0.9, zorder=0,
                           label="chance (novel classes)")
            ax.set_xticks(x, [_name(m, names) for m in mean.index], rotation=35, ha="right")
            ax.set_title(title)
            ax.set_ylim(0, 100 if scale == 100 else None)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
        fig.tight_layout()
        _legend(fig, axes)
        return save_figure(fig, stem, formats)


def plot_table(table: Table, out_dir: Path, prefix: str = "", names: Mapping[str, str] | None = None,
               formats: Sequence[str] = FORMATS) -> list[Path]:
    """All plots that fit the table (each as PDF, SVG and 300-dpi PNG); returns the files written.
    ``names``: method id → display name (``display_name`` of ``conf/method/<id>.yaml``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = method_display_names() if names is None else names
    if is_b2n(table.protocol):
        return plot_base_novel(table, out_dir / f"{prefix}base_novel", names, formats)
    return (plot_accuracy_vs_shots(table, out_dir / f"{prefix}acc_vs_shots", names, formats)
            + plot_accuracy_bars(table, out_dir / f"{prefix}acc_bars", names, formats))
