"""Linear probe on frozen, L2-normalised image features.

``init: none`` (default) — the CLIP / CoOp ``lpclip`` / BiomedCoOp protocol: multinomial L2-regularised logistic
regression fitted by L-BFGS (sklearn's objective, here in torch), with the inverse regularisation C chosen on the
few-shot validation set: a coarse search over {1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6}, then ``search_steps`` (8)
bisection steps in log space around the best value. Fitted in ``prepare``; no gradient training (``trains``
False).

``init: zeroshot`` — zero-shot-initialised probe: the head starts as the class text embeddings of the dataset
template (logits = exp(logit_scale)·cos(f, w_c) + b_c, equal to zero-shot CLIP at initialisation) and is trained
by gradient descent.

Trainable parameters: ``C·E + C``. Classes absent from training (base→novel) use their zero-shot text row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.methods.config import MainBaselineConfig, OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.visual_common import FrozenTextClassifier, accuracy, extract_features, merge_seen

COARSE_C = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def fit_logistic_regression(
    features: Tensor, labels: Tensor, num_classes: int, c: float, *, max_iter: int = 1000, tol: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression with sklearn's ``lbfgs`` objective: mean CE + ‖W‖²/(2·C·N) (bias not
    penalised). Returns ``(W (num_classes, E), b (num_classes,))`` in the input dtype."""
    x = features.detach().double()
    y = labels.detach()
    n = x.shape[0]
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    reg = 1.0 / (2.0 * float(c) * n)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.t() + bias, y) + reg * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach().to(features.dtype), bias.detach().to(features.dtype)


def search_c(
    train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], num_classes: int, *, steps: int = 8,
    grid: Sequence[float] = COARSE_C, max_iter: int = 1000,
) -> tuple[float, Tensor, Tensor]:
    """C search of CoOp's ``lpclip`` / BiomedCoOp's LP: coarse grid, then ``steps`` bisections in log10 space
    between 0.1·C* and 10·C*; each step keeps the better end (ties: the left one) and the last kept fit wins."""

    def fit_eval(c: float) -> tuple[float, Tensor, Tensor]:
        w, b = fit_logistic_regression(*train, num_classes, c, max_iter=max_iter)
        return accuracy(val[0] @ w.t() + b, val[1]), w, b

    scores = [fit_eval(c)[0] for c in grid]
    peak = float(grid[max(range(len(grid)), key=lambda i: (scores[i], -i))])
    left, right = math.log10(peak) - 1.0, math.log10(peak) + 1.0
    best_c = peak
    if steps < 1:
        return (best_c, *fit_eval(peak)[1:])
    for _ in range(steps):
        acc_l, w_l, b_l = fit_eval(10**left)
        acc_r, w_r, b_r = fit_eval(10**right)
        mid = 0.5 * (left + right)
        if acc_l < acc_r:
            best_c, w, b = 10**right, w_r, b_r
            left = mid
        else:
            best_c, w, b = 10**left, w_l, b_l
            right = mid
    return best_c, w, b


@dataclass
class LinearProbeConfig(MainBaselineConfig):
    """Linear probe on frozen L2-normalised image features. ``init: none`` = the CLIP paper App. A3 / CoOp
    lpclip / BiomedCoOp trainers/LP/linear_probe_biomedclip.py protocol (L-BFGS logistic regression, C searched on the
    validation shots, fitted in prepare); ``init: zeroshot`` = head initialised from the class text embeddings, trained
    by gradient with BiomedCoOp's configs/trainers/LP/few_shot.yaml (lr 1e-3, 300 epochs, batch 256)."""
    trains: bool = option(False, "no gradient training (method.epochs=0 accepted)")

    display_name: str | None = display_name("Linear probe")
    init: str = option("none", "none (L-BFGS + C search) | zeroshot (text-initialised, gradient-trained)",
                       choices=("none", "zeroshot"))
    c: float | None = option(None, "fixed inverse regularisation C; null = search on the validation shots")
    c_grid: list[float] = option(list(COARSE_C), "coarse C grid of the search")
    search_steps: int = option(8, "log-space bisection steps after the coarse grid (BiomedCoOp num_step)")
    max_iter: int = option(1000, "L-BFGS iterations (sklearn max_iter=1000)")
    epochs: int = option(300, "training epochs (init=zeroshot only)")
    batch_size: int = option(256, "training batch size")
    optim: OptimConfig = option(OptimConfig(lr=0.001, weight_decay=0.0), "optimiser and LR schedule "
                                                                         "(init=zeroshot only)")


@register("linear_probe")
class LinearProbe(FrozenTextClassifier):
    """Config: ``init`` (none = L-BFGS logistic regression + C search | zeroshot = text-initialised, gradient
    trained), ``c`` (fixed C; null = search), ``c_grid``, ``search_steps``, ``max_iter``."""

    family = "baseline"
    trains = False
    needs_image_tower = False
    config_class = LinearProbeConfig
    config: LinearProbeConfig

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        self.init = str(self.config.init)
        if self.init not in ("none", "zeroshot"):
            raise ValueError(f"linear_probe.init must be none or zeroshot, got '{self.init}'")
        num_classes, dim = self.train_text_weights.shape
        self.head = nn.Linear(dim, num_classes)
        with torch.no_grad():
            self.head.bias.zero_()
            if self.init == "zeroshot":
                self.head.weight.copy_(self.train_text_weights)
            else:
                self.head.weight.zero_()
        self.trains = self.init == "zeroshot"
        self.chosen_c: float | None = None

    def prepare(self, datamodule: Any) -> None:
        if self.init != "none":
            return
        train = extract_features(self.backbone, datamodule.train_dataloader())
        val = extract_features(self.backbone, datamodule.val_dataloader())
        num_classes = self.head.out_features
        fixed = self.config.c
        max_iter = int(self.config.max_iter)
        if fixed is not None or len(val[1]) == 0:
            self.chosen_c = float(fixed if fixed is not None else 1.0)
            w, b = fit_logistic_regression(*train, num_classes, self.chosen_c, max_iter=max_iter)
        else:
            grid = tuple(float(c) for c in self.config.c_grid)
            self.chosen_c, w, b = search_c(train, val, num_classes, steps=int(self.config.search_steps),
                                           grid=grid, max_iter=max_iter)
        with torch.no_grad():
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)

    def image_features(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.encode_image(images)

    def forward(self, images: Tensor) -> Tensor:
        feats = F.normalize(self.image_features(images), dim=-1)
        scale = self.backbone.logit_scale.exp()
        if self.init == "zeroshot":
            seen = scale * feats @ self.head.weight.t() + self.head.bias
        else:
            seen = self.head(feats)
        return merge_seen(seen, scale * feats @ F.normalize(self.text_weights, dim=-1).t(), self.rows)
