"""Calibration of a classifier's softmax probabilities.

* ``ece``: top-label expected calibration error, 15 equal-width confidence bins, L1 (torchmetrics
  ``MulticlassCalibrationError``; Guo et al. 2017).
* ``classwise_ece``: mean over classes of the binned calibration error of ``p_c`` against ``1[y = c]``
  (torchmetrics ``BinaryCalibrationError`` per class; Kull et al. 2019). Classes absent from the labels count too
  (their ``p_c`` should be near zero).
* ``nll``: mean negative log-likelihood of the true class (cross-entropy of the logits).
* ``brier``: mean over images of ``sum_c (p_c - 1[y = c])^2`` (multiclass Brier score, range [0, 2]).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

__all__ = ["N_BINS", "calibration_metrics", "reliability_bins", "plot_reliability", "pooled_reliability",
           "method_reliability_plots"]

N_BINS = 15


def calibration_metrics(logits: Tensor, labels: Tensor, n_bins: int = N_BINS) -> dict[str, float]:
    """``{"ece", "classwise_ece", "nll", "brier"}`` of ``logits`` (N, C) against integer ``labels`` (N,)."""
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    if labels.numel() == 0:
        return {}
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    ece = multiclass_calibration_error(probs, labels, num_classes, n_bins=n_bins, norm="l1")
    classwise = torch.stack([
        binary_calibration_error(probs[:, c].contiguous(), (labels == c).long(), n_bins=n_bins, norm="l1")
        for c in range(num_classes)
    ]).mean()
    onehot = F.one_hot(labels, num_classes).float()
    return {
        "ece": float(ece),
        "classwise_ece": float(classwise),
        "nll": float(F.cross_entropy(logits, labels)),
        "brier": float(((probs - onehot) ** 2).sum(dim=1).mean()),
    }


def reliability_bins(logits: Tensor, labels: Tensor, n_bins: int = N_BINS) -> dict[str, list[float]]:
    """Per equal-width bin of top-label confidence: ``count``, mean ``confidence`` and ``accuracy`` (0 when empty).

    Small enough to store in ``result.json``; pooled over cells (count-weighted) it gives a per-method diagram.
    """
    probs = logits.detach().float().cpu().softmax(dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels.detach().cpu()).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    which = torch.bucketize(conf, edges[1:-1], right=True)  # bin i holds (edges[i], edges[i+1]]
    count = torch.bincount(which, minlength=n_bins).float()
    conf_sum = torch.zeros(n_bins).index_add_(0, which, conf)
    acc_sum = torch.zeros(n_bins).index_add_(0, which, correct)
    safe = count.clamp(min=1)
    return {"count": count.int().tolist(), "confidence": (conf_sum / safe).tolist(),
            "accuracy": (acc_sum / safe).tolist()}


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
