"""Split conformal prediction sets (Vovk et al. 2005; Angelopoulos & Bates 2021) from softmax probabilities.

Scores (larger = less conforming):

* ``lac`` (least ambiguous set-valued classifier, Sadinle et al. 2019): ``1 - p_y``.
* ``aps`` (adaptive prediction sets, Romano et al. 2020), non-randomised: the total probability of the classes
  ranked at or above ``y``, ``sum_{j: p_j >= p_y} p_j``.

With ``n`` calibration scores the threshold is their empirical quantile at level ``ceil((n + 1)(1 - alpha)) / n``
(the ``higher`` order statistic; infinite, i.e. every class, when that level exceeds 1). The set of an image is
every class whose score is at most the threshold. For exchangeable calibration and evaluation data the coverage is
at least ``1 - alpha``, and below ``1 - alpha + 1 / (n + 1)`` when scores have no ties.

Reported per score: ``coverage`` (fraction of evaluation images whose label is in its set), ``set_size`` (mean
set size), ``covgap`` (class-conditional coverage gap: mean over classes present in the evaluation labels of
``|coverage_c - (1 - alpha)|``, Ding et al. 2023), ``qhat`` and ``n_cal``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["SCORES", "scores", "threshold", "prediction_sets", "set_metrics", "conformal_metrics", "split_holdout"]

SCORES = ("lac", "aps")


def _aps_all(probs: Tensor) -> Tensor:
    """APS score of every class for every image, (N, C): probability mass ranked at or above the class."""
    sorted_p, order = probs.sort(dim=1, descending=True)
    cum = sorted_p.cumsum(dim=1)
    out = torch.empty_like(probs)
    out.scatter_(1, order, cum)
    return out


def all_scores(probs: Tensor, score: str) -> Tensor:
    """Non-conformity score of every (image, class), (N, C)."""
    if score == "lac":
        return 1.0 - probs
    if score == "aps":
        return _aps_all(probs)
    raise ValueError(f"conformal score must be one of {SCORES}, got {score!r}")


def scores(probs: Tensor, labels: Tensor, score: str) -> Tensor:
    """Non-conformity score of each image's true class, (N,)."""
    return all_scores(probs, score).gather(1, labels.long().view(-1, 1)).squeeze(1)


def threshold(cal_scores: Tensor, alpha: float) -> float:
    """The split-conformal quantile of ``cal_scores`` at level ``ceil((n + 1)(1 - alpha)) / n``."""
    n = int(cal_scores.numel())
    if n == 0:
        return math.inf
    level = math.ceil((n + 1) * (1 - alpha)) / n
    if level > 1:
        return math.inf
    return float(np.quantile(cal_scores.double().numpy(), level, method="higher"))


def prediction_sets(probs: Tensor, qhat: float, score: str) -> Tensor:
    """Boolean (N, C) membership of each class in each image's set."""
    return all_scores(probs, score) <= qhat


def set_metrics(sets: Tensor, labels: Tensor, alpha: float) -> dict[str, float]:
    """Coverage, mean set size and class-conditional coverage gap of boolean ``sets`` (N, C)."""
    labels = labels.long()
    covered = sets.gather(1, labels.view(-1, 1)).squeeze(1).float()
    gaps = [abs(float(covered[labels == c].mean()) - (1 - alpha)) for c in labels.unique().tolist()]
    return {"coverage": float(covered.mean()), "set_size": float(sets.float().sum(dim=1).mean()),
            "covgap": float(np.mean(gaps))}


def split_holdout(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of ``range(n)`` into (calibration indices, evaluation indices)."""
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    n_cal = min(n - 1, max(1, round(n * fraction))) if n > 1 else 0
    return perm[:n_cal].sort().values, perm[n_cal:].sort().values


def conformal_metrics(cal_logits: Tensor, cal_labels: Tensor, eval_logits: Tensor, eval_labels: Tensor,
                      alpha: float = 0.1, score_names: Sequence[str] = SCORES) -> dict[str, float | None]:
    """``{"<score>_coverage", "<score>_set_size", "<score>_covgap", "<score>_qhat", "alpha", "n_cal", "n_eval"}``;
    ``qhat`` is None when the threshold is infinite (too few calibration images: every set is every class)."""
    cal_p = cal_logits.detach().float().cpu().softmax(dim=1)
    eval_p = eval_logits.detach().float().cpu().softmax(dim=1)
    cal_labels, eval_labels = cal_labels.detach().cpu().long(), eval_labels.detach().cpu().long()
    out: dict[str, float | None] = {"alpha": float(alpha), "n_cal": float(cal_labels.numel()),
                             "n_eval": float(eval_labels.numel())}
    if eval_labels.numel() == 0:
        return out
    for name in score_names:
        qhat = threshold(scores(cal_p, cal_labels, name), alpha)
        for key, value in set_metrics(prediction_sets(eval_p, qhat, name), eval_labels, alpha).items():
            out[f"{name}_{key}"] = value
        out[f"{name}_qhat"] = qhat if math.isfinite(qhat) else None
    return out
