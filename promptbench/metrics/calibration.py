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

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from promptbench.metrics.reliability import method_reliability_plots, plot_reliability, pooled_reliability

__all__ = ["N_BINS", "calibration_metrics", "reliability_bins", "plot_reliability", "pooled_reliability",
           "method_reliability_plots"]  # the last three: promptbench.metrics.reliability

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
