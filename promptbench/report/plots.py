"""Plots from a table's numeric summary (matplotlib, Agg backend): accuracy vs shots, accuracy bars,
base/novel bars. Error bars are the same sample std over seeds as in the tables.

Figures are drawn at the size a paper prints them (``table.figure``, :class:`~promptbench.report.aggregate.
FigureSpec`): ``width`` = 3.5 in (``single`` column) or 7.2 in (``double``) or any inches, ``columns`` panels per
row (panels wrap into rows), fonts 7-9 pt at that size; the files keep exactly that width (no tight bounding box),
so a PDF included at ``\\linewidth`` is neither shrunk nor enlarged. Every figure is written as vector PDF and SVG
plus a 300-dpi PNG.

Each method keeps one style in every figure of a table (:func:`method_styles`): an Okabe-Ito colour (colour-blind
safe) x marker x line style / bar hatch; the reference method (zero-shot) is drawn first, black and solid. Chance
(1 / number of classes; for an average, the mean over its datasets) has a style of its own that no method can
take (:data:`CHANCE_STYLE`: grey, dotted, no marker): no method is grey, dotted or without markers. Methods sharing
an x are dodged (small multiplicative offsets on the log-x axis, :func:`dodge_factors`) so their error bars do not
overlap. ``figure.split_by=group`` draws one figure per method family (``Method.family``: baselines, adapters,
text, visual, weight-space), each with the reference method. Panel titles are dataset / modality display names
(``display_name`` of ``conf/dataset/<id>.yaml``, or ``table.labels``); axis labels are words. A modality with a
single dataset gets one panel (the dataset's, titled with the modality), not a second identical average panel.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from promptbench.report.aggregate import FigureSpec, Table, is_b2n
from promptbench.report.results_meta import (
    chance_levels,
    dataset_display_names,
    group_members,
    method_display_names,
    method_family,
)

#: Okabe & Ito (2008) colour-blind-safe palette, without yellow (too light on white); black only draws solid lines
OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7"]
BLACK = OKABE_ITO[0]
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "<", ">", "p", "*"]  # 11: coprime with the 25 colour x line styles
#: method line styles: solid, dashed, dash-dot, dash-dot-dot (never dotted: dotted is chance's)
LINESTYLES: list[Any] = ["-", (0, (4.5, 1.5)), (0, (5, 1.5, 1.2, 1.5)), (0, (5, 1.2, 1.2, 1.2, 1.2, 1.2))]
HATCHES = ["", "///", "...", "xxx", "\\\\\\"]
#: the reserved chance line: grey, dotted, no marker (no method style has any of the three)
CHANCE_STYLE: dict[str, Any] = {"color": "0.45", "linestyle": ":", "marker": "None", "linewidth": 1.2}
CHANCE_LABEL = "chance"
_LAST = ("HM",)  # legend entries after the bars' (base, novel) and before chance
FORMATS = ("pdf", "svg", "png")
DPI = 300
#: font sizes in points at print size (the figure is drawn at the width it is printed)
RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "font.size": 8, "axes.titlesize": 8,
      "axes.labelsize": 8, "figure.titlesize": 9, "figure.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
      "legend.fontsize": 7, "savefig.dpi": DPI, "axes.linewidth": 0.6, "xtick.major.width": 0.6,
      "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5, "grid.linewidth": 0.4,
      "axes.titlepad": 3.0, "legend.handlelength": 2.6, "legend.columnspacing": 1.2, "legend.handletextpad": 0.5}
#: a panel narrower than this (inches) gets too small to read at 7 pt: automatic columns keep panels at least this
MIN_PANEL_WIDTH = 1.6
#: the dodge spreads the methods at one x over this many log2 units in all (at most DODGE_STEP apart)
DODGE_SPAN, DODGE_STEP = 0.5, 0.1
#: metric → axis label in words
METRIC_WORDS = {"acc": "Accuracy", "balanced_acc": "Balanced accuracy", "macro_f1": "Macro-F1", "auc": "AUC",
                "ece": "ECE"}
SHOTS_LABEL = "Shots per class (K)"


def _combos() -> list[tuple[str, Any, int]]:
    """(colour, line style, line-style index) in cycle order: every colour solid, then the coloured ones (not
    black) dashed, dash-dot, dash-dot-dot: 7 + 3 x 6 = 25 distinct pairs."""
    return [(c, ls, j) for j, ls in enumerate(LINESTYLES) for c in OKABE_ITO if j == 0 or c != BLACK]


def method_styles(keys: Iterable[Any]) -> dict[Any, dict[str, Any]]:
    """A distinct (colour, marker, line style, hatch) per key, stable in key order: the colour x line-style pair
    cycles through :func:`_combos` (25 pairs; black only solid) and the marker through 11, so no two of the first 25
    keys share colour and line style (nor colour and hatch), and no two of the first 51 share colour and marker. No
    style is grey, dotted or without a marker (:data:`CHANCE_STYLE` is)."""
    combos, out = _combos(), {}
    for i, key in enumerate(dict.fromkeys(keys)):
        color, linestyle, j = combos[i % len(combos)]
        out[key] = {"color": color, "marker": MARKERS[i % len(MARKERS)], "linestyle": linestyle,
                    "hatch": HATCHES[j % len(HATCHES)]}
    return out


def dodge_factors(n: int, span: float = DODGE_SPAN, step: float = DODGE_STEP) -> np.ndarray:
    """Multiplicative x offsets for ``n`` series sharing an x on a log2 axis: ``2 ** o_i`` with the ``o_i``
    evenly spaced, centred on 0, at most ``step`` apart and ``span`` wide in all (log2 units); distinct for n > 1."""
    if n <= 1:
        return np.ones(max(n, 0))
    gap = min(step, span / (n - 1))
    return 2.0 ** ((np.arange(n) - (n - 1) / 2) * gap)


def _line(style: Mapping[str, Any]) -> dict[str, Any]:
    return {k: style[k] for k in ("color", "marker", "linestyle")}


def layout(n: int, spec: FigureSpec, min_panel: float = MIN_PANEL_WIDTH) -> tuple[float, int, int]:
    """(figure width in inches, panels per row, rows) for ``n`` panels: ``spec.columns`` or as many panels of at
    least ``min_panel`` inches as the width holds."""
    width = spec.inches
    cols = spec.columns or max(1, int(width // min_panel))
    cols = max(1, min(cols, n))
    return width, cols, math.ceil(n / cols) if n else 0


def _wrap(text: str, chars: int) -> str:
    return "\n".join(textwrap.wrap(str(text), max(8, chars), break_long_words=False)) or str(text)


def _fit(fig: plt.Figure, texts: Sequence[tuple[Any, Any]]) -> None:
    """Wrap each text wider than its room onto more lines, so no title or tick label runs into its neighbour or
    off the figure. ``texts``: (text, room) with room in pixels or a function of the laid-out figure giving it."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for text, room in texts:
        room = room() if callable(room) else room
        label = text.get_text()
        width = text.get_window_extent(renderer).width
        if label and width > room:
            text.set_text(_wrap(label.replace("\n", " "), int(len(label) * room / width)))


def _title_room(ax: plt.Axes, cols: int) -> Any:
    """A panel title (centred on its axes) may use the panel's share of the figure width, and no more than
    keeps it inside the figure."""
    def room() -> float:
        box, fig = ax.get_window_extent(), ax.figure.bbox
        centre = (box.x0 + box.x1) / 2
        return min(fig.width / cols, 2 * (fig.x1 - centre) - 4, 2 * (centre - fig.x0) - 4)
    return room


def _grid(n: int, spec: FigureSpec, panel_height: float | None = None, legend_rows: int = 0,
          min_panel: float = MIN_PANEL_WIDTH, title: bool = False) -> tuple[plt.Figure, list[plt.Axes]]:
    width, cols, rows = layout(n, spec, min_panel)
    panel_w = width / cols
    panel_h = panel_height or float(np.clip(0.78 * panel_w, 1.45, 2.3))
    height = rows * panel_h + 0.16 * legend_rows + 0.12 + (0.2 if title else 0.0)
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.03, wspace=0.04, hspace=0.06)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _bottom_xlabels(axes: Sequence[plt.Axes], n: int, cols: int, label: str) -> None:
    """``label`` under every panel with no panel below it (the last row, and the row above a short last row)."""
    for i, ax in enumerate(axes[:n]):
        if i + cols >= n:
            ax.set_xlabel(label)


def _name(method: str, names: Mapping[str, str]) -> str:
    base, _, variant = str(method).partition("+")
    return names.get(str(method)) or (names.get(base, base) + (f"+{variant}" if variant else ""))


def _series_label(backbone: str, method: str, several_backbones: bool, names: Mapping[str, str]) -> str:
    label = _name(method, names)
    return f"{label} ({backbone})" if several_backbones else label


def _dataset_label(table: Table, key: str) -> str:
    """``table.labels`` first, then the dataset config's ``display_name``, else the id."""
    return table.spec.labels.get(key) or dataset_display_names().get(key, key)


def panels(summary: pd.DataFrame, table: Table) -> list[tuple[str, str]]:
    """(dataset-or-group key, panel title) in table order: titles are display names. A group whose only member is
    a plotted dataset is folded into that dataset's panel (title 'group: dataset'); another group is titled
    'group (average)', the overall average by its label."""
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
    out = [(d, f"{label.get(folded[d], folded[d])}: {_dataset_label(table, d)}" if d in folded
            else _dataset_label(table, d)) for d in datasets]
    out += [(g, label.get(g, g) if g == table.spec.overall else f"{label.get(g, g)} (average)") for g in out_groups]
    return out


def _legend(fig: plt.Figure, axes: Sequence[plt.Axes], width: float) -> None:
    """One legend below the panels (inside the figure's width, never over data), every series of every panel
    once, the chance line last; as many columns as the labels fit."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if not seen:
        return
    labels = sorted(seen, key=lambda k: (k.startswith(CHANCE_LABEL), k in _LAST))  # bars and lines, then HM, chance
    handles = [seen[k] for k in labels]
    cols = _legend_columns(labels, width)
    while True:  # the estimate, then fewer columns until the drawn legend is inside the figure
        legend = fig.legend(handles, labels, loc="outside lower center", frameon=False,
                            ncol=_balanced(len(labels), cols))
        if cols == 1:
            return
        fig.canvas.draw()
        if legend.get_window_extent().width <= fig.bbox.width * 0.99:
            return
        legend.remove()
        cols -= 1


def _balanced(n: int, cols: int) -> int:
    """The fewest columns that keep the rows ``cols`` columns need (no column nearly empty)."""
    return math.ceil(n / math.ceil(n / cols)) if n else 1


def _legend_columns(labels: Sequence[str], width: float) -> int:
    """The most columns a legend of ``labels`` (filled column by column) fits into ``width`` inches at 7 pt: each
    column as wide as its longest label (about 0.55 em a character) plus handle and spacing (4.3 em)."""
    labels = [str(x) for x in labels]
    for cols in range(len(labels), 1, -1):
        rows = math.ceil(len(labels) / cols)
        chunks = [labels[i:i + rows] for i in range(0, len(labels), rows)]
        if sum(max(len(x) for x in c) * 0.55 * 7 + 4.3 * 7 for c in chunks) / 72 <= width * 0.97:
            return cols
    return 1


def _legend_rows(n_entries: int, labels: Sequence[str], width: float) -> int:
    """Legend rows to leave room for (a row more when the estimate is close: the legend may need one)."""
    return math.ceil(n_entries / _legend_columns(labels, width * 0.9)) if n_entries else 0


def save_figure(fig: plt.Figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``stem.<fmt>`` for each format (PNG at 300 dpi) at the figure's own size (no date in the SVG and
    PDF: the same figure gives the same file); closes the figure."""
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=DPI, metadata={"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt))
        paths.append(path)
    plt.close(fig)
    return paths


def _chance(ax: plt.Axes, value: float | None, scale: float, label: str = CHANCE_LABEL,
            color: str | None = None) -> None:
    if value is not None and not math.isnan(value):
        style = {**CHANCE_STYLE, **({"color": color} if color else {})}
        ax.axhline(value * scale, zorder=1, label=label, **{k: v for k, v in style.items() if k != "marker"})


def _acc_data(table: Table) -> pd.DataFrame:
    return table.summary[(table.summary["metric"] == "acc") & table.summary["mean"].notna()]


def metric_label(table: Table) -> str:
    """``Accuracy (%)``: the table metric in words, with its unit."""
    word = METRIC_WORDS.get(table.spec.metric, table.spec.metric.replace("_", " "))
    return f"{word} (%)" if table.spec.scale == 100 else word


def _series(data: pd.DataFrame, reference: str) -> list[tuple[str, str]]:
    """(backbone, method) in table order, the reference method's first."""
    keys = list(dict.fromkeys(zip(data["backbone"], data["method"])))
    return [k for k in keys if k[1] == reference] + [k for k in keys if k[1] != reference]


def _styles_for(table: Table, data: pd.DataFrame) -> dict[Any, dict[str, Any]]:
    return method_styles(_series(data, table.spec.figure.reference))


def plot_accuracy_vs_shots(table: Table, stem: Path, names: Mapping[str, str] | None = None,
                           formats: Sequence[str] = FORMATS, styles: Mapping[Any, Mapping[str, Any]] | None = None,
                           title: str | None = None) -> list[Path]:
    """One panel per dataset (and average), one line per method: mean over seeds vs K, ± std bars, the methods at
    one K dodged; ``styles`` (series → style) keeps a method's style across the figures of a table."""
    data, names = _acc_data(table), names or {}
    if data.empty or data["shots"].nunique() < 2:
        return []
    spec = table.spec.figure
    scale, several = table.spec.scale, data["backbone"].nunique() > 1
    chance = chance_levels(table)
    series = _series(data, spec.reference)
    styles = styles or method_styles(series)
    labels = [_series_label(*k, several, names) for k in series] + [CHANCE_LABEL]
    with plt.rc_context(RC):
        grid = panels(data, table)
        width, cols, _ = layout(len(grid), spec)
        fig, axes = _grid(len(grid), spec, legend_rows=_legend_rows(len(labels), labels, width), title=bool(title))
        factors = dict(zip(series, dodge_factors(len(series))))
        for ax, (dataset, panel_title) in zip(axes, grid):
            block = data[data["dataset"] == dataset]
            for key in series:
                line = block[(block["backbone"] == key[0]) & (block["method"] == key[1])].sort_values("shots")
                if line.empty:
                    continue
                ax.errorbar(line["shots"] * factors[key], line["mean"] * scale,
                            yerr=(line["std"] * scale).fillna(0), capsize=1.5, elinewidth=0.6, capthick=0.6,
                            markersize=3.2, markeredgewidth=0.5, linewidth=1.0, zorder=3,
                            label=_series_label(*key, several, names), **_line(styles[key]))
            _chance(ax, chance.get(dataset), scale)
            ax.set_xscale("log", base=2)
            shots = sorted(block["shots"].unique())
            ax.set_xticks(shots, [str(s) for s in shots])
            ax.minorticks_off()
            ax.set_xlim(min(shots) / 2 ** 0.45, max(shots) * 2 ** 0.45)
            ax.set_title(panel_title)
            ax.grid(alpha=0.3)
        _bottom_xlabels(axes, len(grid), cols, SHOTS_LABEL)
        fig.supylabel(metric_label(table))
        if title:
            fig.suptitle(title)
        _legend(fig, axes, width)
        _fit(fig, [(ax.title, _title_room(ax, cols)) for ax in axes[:len(grid)]])
        return save_figure(fig, stem, formats)


def plot_accuracy_bars(table: Table, stem: Path, names: Mapping[str, str] | None = None,
                       formats: Sequence[str] = FORMATS, styles: Mapping[Any, Mapping[str, Any]] | None = None,
                       title: str | None = None) -> list[Path]:
    """Grouped bars: one group per dataset (and average), one bar per method (single shots value), ± std."""
    data, names = _acc_data(table), names or {}
    if data.empty or data["shots"].nunique() != 1:
        return []
    spec = table.spec.figure
    scale, several = table.spec.scale, data["backbone"].nunique() > 1
    chance = chance_levels(table)
    series = _series(data, spec.reference)
    styles = styles or method_styles(series)
    labels = [_series_label(*k, several, names) for k in series] + [CHANCE_LABEL]
    with plt.rc_context(RC):
        grid = panels(data, table)
        width = spec.inches
        rows = _legend_rows(len(labels), labels, width)
        fig, ax = plt.subplots(figsize=(width, 2.2 + 0.16 * rows + (0.2 if title else 0.0)), layout="constrained")
        bar = 0.8 / max(1, len(series))
        x = np.arange(len(grid))
        keys = [k for k, _ in grid]
        for i, (backbone, method) in enumerate(series):
            rows_ = data[(data["method"] == method) & (data["backbone"] == backbone)].set_index("dataset")
            rows_ = rows_.reindex(keys)
            style = styles[(backbone, method)]
            ax.bar(x + i * bar, rows_["mean"] * scale, bar, yerr=(rows_["std"] * scale).fillna(0), capsize=1.0,
                   color=style["color"], hatch=style["hatch"], edgecolor="white", linewidth=0.3,
                   error_kw={"elinewidth": 0.6, "capthick": 0.6}, label=_series_label(backbone, method, several,
                                                                                     names))
        for j, key in enumerate(keys):  # chance per group of bars
            value = chance.get(key)
            if value is not None and not math.isnan(value):
                ax.hlines(value * scale, j - bar / 2, j + bar * (len(series) - 0.5), colors=CHANCE_STYLE["color"],
                          linestyles=CHANCE_STYLE["linestyle"], linewidth=CHANCE_STYLE["linewidth"], zorder=3,
                          label=CHANCE_LABEL)
        ax.set_xticks(x + bar * (len(series) - 1) / 2, [t for _, t in grid])
        ax.set_ylabel(metric_label(table))
        ax.set_title(title or f"K = {data['shots'].iloc[0]} shots per class")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        _legend(fig, [ax], width)
        fig.canvas.draw()  # tick labels come from the formatter at each draw: wrap the labels themselves
        room, renderer = ax.bbox.width / max(1, len(grid)) * 0.95, fig.canvas.get_renderer()
        wrapped = [_wrap(t.get_text(), int(len(t.get_text()) * room / t.get_window_extent(renderer).width))
                   if t.get_window_extent(renderer).width > room else t.get_text() for t in ax.get_xticklabels()]
        ax.set_xticks(ax.get_xticks(), wrapped)
        return save_figure(fig, stem, formats)


def plot_base_novel(table: Table, stem: Path, names: Mapping[str, str] | None = None,
                    formats: Sequence[str] = FORMATS, styles: Mapping[Any, Mapping[str, Any]] | None = None,
                    title: str | None = None) -> list[Path]:
    """Base-to-novel: one panel per dataset (and average); per method a base and a novel bar with ± std error
    bars (sample std over seeds), HM as a black tick; chance for base and novel classes as dotted lines in the
    colour of the bars they concern."""
    data, names = table.summary[table.summary["metric"].isin(["base", "novel", "hm"])], names or {}
    if data["mean"].notna().sum() == 0:
        return []
    spec = table.spec.figure
    scale = table.spec.scale
    chance = chance_levels(table)
    methods = [m for _, m in _series(data, spec.reference)]
    methods = list(dict.fromkeys(methods))
    with plt.rc_context(RC):
        grid = panels(data, table)
        min_panel = max(MIN_PANEL_WIDTH, 0.2 * len(methods) + 0.5)
        width, cols, _ = layout(len(grid), spec, min_panel)
        longest = max(len(_name(m, names)) for m in methods)
        fig, axes = _grid(len(grid), spec, panel_height=1.5 + 0.045 * longest, legend_rows=1, min_panel=min_panel,
                          title=bool(title))
        for ax, (dataset, panel_title) in zip(axes, grid):
            block = data[data["dataset"] == dataset]
            mean = block.pivot_table(index="method", columns="metric", values="mean", sort=False, dropna=False)
            std = block.pivot_table(index="method", columns="metric", values="std", sort=False, dropna=False)
            mean = mean.reindex(index=[m for m in methods if m in mean.index], columns=["base", "novel", "hm"])
            std = std.reindex(index=mean.index, columns=["base", "novel", "hm"])
            x = np.arange(len(mean))
            ax.bar(x - 0.2, mean["base"] * scale, 0.4, yerr=(std["base"] * scale).fillna(0), capsize=1.0,
                   color=OKABE_ITO[4], error_kw={"elinewidth": 0.6, "capthick": 0.6}, label="base")
            ax.bar(x + 0.2, mean["novel"] * scale, 0.4, yerr=(std["novel"] * scale).fillna(0), capsize=1.0,
                   color=OKABE_ITO[1], hatch="///", edgecolor="white", linewidth=0.3,
                   error_kw={"elinewidth": 0.6, "capthick": 0.6}, label="novel")
            ax.plot(x, mean["hm"] * scale, "k_", markersize=8, mew=1.5, label="HM", linestyle="none")
            _chance(ax, chance.get((dataset, "base")), scale, f"{CHANCE_LABEL} (base classes)", OKABE_ITO[4])
            _chance(ax, chance.get((dataset, "novel")), scale, f"{CHANCE_LABEL} (novel classes)", OKABE_ITO[5])
            ax.set_xticks(x, [_name(m, names) for m in mean.index], rotation=40, ha="right", rotation_mode="anchor")
            ax.set_title(panel_title)
            ax.set_ylim(0, 100 if scale == 100 else None)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
        fig.supylabel(metric_label(table))
        if title:
            fig.suptitle(title)
        _legend(fig, axes, width)
        _fit(fig, [(ax.title, _title_room(ax, cols)) for ax in axes[:len(grid)]])
        return save_figure(fig, stem, formats)


def method_groups(methods: Sequence[str], reference: str = "zeroshot",
                  families: Mapping[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """(family, its methods) in :data:`~promptbench.methods.registry.FAMILIES` order, each with ``reference`` first
    (when the table has it); a family whose only method is the reference is left out."""
    from promptbench.methods.registry import FAMILIES

    by_family: dict[str, list[str]] = {}
    for method in dict.fromkeys(methods):
        if method != reference:
            by_family.setdefault(method_family(method, families), []).append(method)
    order = [f for f in FAMILIES if f in by_family] + [f for f in by_family if f not in FAMILIES]
    ref = [reference] if reference in methods else []
    return [(f, ref + by_family[f]) for f in order]


def family_label(family: str) -> str:
    from promptbench.methods.registry import FAMILIES

    return FAMILIES.get(family, family)


def plot_table(table: Table, out_dir: Path, prefix: str = "", names: Mapping[str, str] | None = None,
               formats: Sequence[str] = FORMATS, families: Mapping[str, str] | None = None) -> list[Path]:
    """All plots that fit the table (each as PDF, SVG and 300-dpi PNG); returns the files written.
    ``names``: method id → display name (``display_name`` of ``conf/method/<id>.yaml``). With
    ``table.figure.split_by=group`` and methods of more than one family: one figure per family,
    ``<stem>_<family>`` (e.g. ``acc_vs_shots_text``), each with the reference method (black, solid in each);
    the other methods are in one family's figures only, so each keeps one style and the colours of one figure are
    as distinct as possible."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = method_display_names() if names is None else names
    spec = table.spec.figure
    fns = ([("base_novel", plot_base_novel)] if is_b2n(table.protocol)
           else [("acc_vs_shots", plot_accuracy_vs_shots), ("acc_bars", plot_accuracy_bars)])
    groups = (method_groups(list(table.summary["method"]), spec.reference, families)
              if spec.split_by == "group" else [])
    files: list[Path] = []
    if len(groups) <= 1:
        for stem, fn in fns:
            files += fn(table, out_dir / f"{prefix}{stem}", names, formats, _styles_for(table, table.summary))
        return files
    for family, members in groups:  # a method is in one family's figure only: styles are counted per figure
        part = dataclasses.replace(table, summary=table.summary[table.summary["method"].isin(members)])
        styles = _styles_for(part, part.summary)
        for stem, fn in fns:
            files += fn(part, out_dir / f"{prefix}{stem}_{family}", names, formats, styles, family_label(family))
    return files
