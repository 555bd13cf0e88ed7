"""Reliability diagrams from recorded bins (``result.json`` → ``trust.reliability``): one cell's, or pooled over
the cells of a method for ``promptbench table``. numpy, pandas and matplotlib only: the table builder draws them
without importing torch (the bins are computed by :func:`promptbench.metrics.calibration.reliability_bins`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["method_reliability_plots", "plot_reliability", "pooled_reliability"]


def plot_reliability(bins: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """A reliability diagram (accuracy per confidence bin against the diagonal) written to ``path`` (png/svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(bins["count"])
    centers = [(i + 0.5) / n for i in range(n)]
    total = max(1, sum(bins["count"]))
    ece = sum(c / total * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"]))
    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    ax.bar(centers, [a if c else 0 for a, c in zip(bins["accuracy"], bins["count"])], width=1 / n,
           edgecolor="black", linewidth=0.5, label="accuracy")
    ax.bar(centers, [f - a if c else 0 for a, f, c in zip(bins["accuracy"], bins["confidence"], bins["count"])],
           bottom=[a if c else 0 for a, c in zip(bins["accuracy"], bins["count"])], width=1 / n, color="tab:red",
           alpha=0.3, label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title=f"{title}{' ' if title else ''}ECE {100 * ece:.1f}%")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pooled_reliability(paths: Iterable[str | Path], eval_set: str = "test") -> dict[str, list[float]] | None:
    """Count-weighted pooling of the ``trust.reliability.<eval_set>`` bins of several ``result.json`` files (e.g.
    every dataset, shot count and seed of one method); None when none of them has bins."""
    count = conf = acc = None
    for path in paths:
        try:
            bins = json.loads(Path(path).read_text()).get("trust", {}).get("reliability", {}).get(eval_set)
        except (OSError, ValueError):
            continue
        if not bins:
            continue
        c = np.asarray(bins["count"], float)
        if count is None:
            count, conf, acc = np.zeros_like(c), np.zeros_like(c), np.zeros_like(c)
        if len(c) != len(count):
            continue
        count += c
        conf += c * np.asarray(bins["confidence"], float)
        acc += c * np.asarray(bins["accuracy"], float)
    if count is None:
        return None
    safe = np.maximum(count, 1)
    return {"count": count.astype(int).tolist(), "confidence": (conf / safe).tolist(),
            "accuracy": (acc / safe).tolist()}


def method_reliability_plots(long: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One reliability diagram per method (``reliability/<method>.png``), pooled over the ok results in ``long``
    (a ``promptbench table`` long frame with a ``path`` column); few-shot test sets only."""
    if long.empty or "path" not in long:
        return []
    ok = long[(long["status"] == "ok")] if "status" in long else long
    files = []
    for method, block in ok.groupby("method", sort=True):
        bins = pooled_reliability(block["path"].tolist())
        if bins is not None and sum(bins["count"]):
            safe = str(method).replace("/", "_")
            files.append(plot_reliability(bins, Path(out_dir) / "reliability" / f"{safe}.png", title=str(method)))
    return files
