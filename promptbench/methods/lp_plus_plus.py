"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bahig, Ben Ayed; CVPR 2024, arXiv 2404.02285): a linear probe whose
class weights blend learnable visual prototypes with the class text embeddings through class-wise multipliers:

    logits(f) = f·Wᵀ + b + α ⊙ (f·Tᵀ)        (f: L2-normalised image feature, T: class text embeddings)

Fitted in ``prepare`` on the frozen few-shot features by full-batch block-coordinate descent with the data-driven
step sizes of the released code (``FereshteShakeri/FewShot-CLIP-Strong-Baseline: methods/linear_probe_p2.py``,
reused unchanged by BiomedCoOp as ``LP2``):

- W initialised to the per-class **sums** of training features, b = 0, α = α₀·1 with
  α₀ = ``alpha_init_scale`` (250) × the mean over classes c of the class-c mean similarity to its own text
  embedding t_c (``alpha_init: diagonal``, BiomedCoOp ``LP2/linear_probe_p2_biomedclip.py: calculate_init_alpha``
  with ``trainers/utils.py: compute_centroids_alpha``); ``alpha_init: full`` averages the whole C×C
  class-mean similarity matrix instead (promptbench before issue 12);
- W, b: SGD with momentum 0.9 and step 4N / λ_max(FᵀF) every iteration;
- α: a gradient step of size N / (4·max_c Σ_i (f_i·t_c)²) every ``alpha_every`` (10) iterations, using the
  gradient **accumulated since the first iteration** (the code never zeroes it; ``alpha_grad: current`` uses only
  the current gradient instead);
- ``select: best_val`` keeps the iterate with the best few-shot validation accuracy (ties → later), as the code.

Trainable (fitted) parameters: ``C·E + 2C``. Classes absent from training use ``mean(α)·f·t_c``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.methods.config import MainBaselineConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.visual_common import FrozenTextClassifier, accuracy, extract_features, merge_seen


def lp_plus_plus_init(features: Tensor, labels: Tensor, text: Tensor, num_classes: int,
                      alpha_scale: float = 250.0, alpha_init: str = "diagonal") -> tuple[Tensor, float, float, float]:
    """Released-code initialisation: (class-sum prototypes (C, E), α₀, step for W, step for α)."""
    if alpha_init not in ("diagonal", "full"):
        raise ValueError(f"lp_plus_plus.alpha_init must be diagonal or full, got '{alpha_init}'")
    one_hot = F.one_hot(labels, num_classes).to(features.dtype)
    prototypes = one_hot.t() @ features
    sims = features @ text.t()  # (N, C)
    class_mean_sims = (one_hot.t() @ sims) / one_hot.sum(0).clamp(min=1).unsqueeze(1)
    if alpha_init == "diagonal":  # true-class similarities of the classes present in training
        present = one_hot.sum(0) > 0
        alpha0 = float(alpha_scale * class_mean_sims.diagonal()[present].mean())
    else:
        alpha0 = float(alpha_scale * class_mean_sims.mean())
    n = features.shape[0]
    lam = float(torch.linalg.eigvalsh((features.t() @ features).double()).max())
    lr_w = 4.0 * n / lam
    lr_alpha = n / (4.0 * float(sims.pow(2).sum(0).max()))
    return prototypes, alpha0, lr_w, lr_alpha


@dataclass
class LPPlusPlusConfig(MainBaselineConfig):
    """LP++ (Huang et al., CVPR 2024; FereshteShakeri/FewShot-CLIP-Strong-Baseline methods/linear_probe_p2.py,
    reused as LP2 by BiomedCoOp, configs/trainers/LP2/few_shot.yaml: 300 iterations, batch 256 for feature
    extraction). Fitted in prepare (no epochs); best-validation iterate kept."""
    trains: bool = option(False, "no gradient training (method.epochs=0 accepted)")

    display_name: str | None = display_name("LP++")
    fit_epochs: int = option(300, "full-batch iterations (code: train_epoch 300)")
    alpha_every: int = option(10, "alpha step every k iterations (code)")
    alpha_init: str = option("diagonal", "diagonal (code: true-class similarities) | full (C x C mean)",
                             choices=("diagonal", "full"), fidelity="lp_alpha_init")
    alpha_init_scale: float = option(250.0, "alpha_0 = alpha_init_scale x mean class-mean zero-shot similarity")
    alpha_grad: str = option("cumulative", "cumulative (gradient summed since the start, never reset: code) | "
                                           "current")
    momentum: float = option(0.9, "SGD momentum of the visual weights")
    select: str = option("best_val", "best_val (keep the iterate with the best validation accuracy: code) | last")
    epochs: int = option(0, "unused (fitted in prepare)")
    batch_size: int = option(256, "feature-extraction batch size")


@register("lp_plus_plus")
class LPPlusPlus(FrozenTextClassifier):
    """Config: ``fit_epochs`` (full-batch iterations, 300), ``alpha_every`` (10), ``alpha_init`` (diagonal = code |
    full), ``alpha_init_scale`` (250),
    ``alpha_grad`` (cumulative = code | current), ``momentum`` (0.9), ``select`` (best_val = code | last)."""

    family = "baseline"
    trains = False
    needs_image_tower = False
    config_class = LPPlusPlusConfig
    config: LPPlusPlusConfig

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        num_classes, dim = self.train_text_weights.shape
        self.visual_weight = nn.Parameter(torch.zeros(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.alpha = nn.Parameter(torch.ones(num_classes))

    def prepare(self, datamodule: Any) -> None:
        cfg = self.config
        feats, labels = extract_features(self.backbone, datamodule.train_dataloader())
        val_feats, val_labels = extract_features(self.backbone, datamodule.val_dataloader())
        text = F.normalize(self.train_text_weights.float(), dim=-1)
        num_classes = text.shape[0]
        protos, alpha0, lr_w, lr_alpha = lp_plus_plus_init(feats, labels, text, num_classes,
                                                           float(cfg.alpha_init_scale), str(cfg.alpha_init))
        weight = protos.clone().requires_grad_(True)
        bias = torch.zeros(num_classes, device=feats.device, requires_grad=True)
        alpha = torch.full((num_classes,), alpha0, device=feats.device, requires_grad=True)
        opt = torch.optim.SGD([weight, bias], lr=lr_w, momentum=float(cfg.momentum))
        every, cumulative = int(cfg.alpha_every), str(cfg.alpha_grad) == "cumulative"
        select_best = str(cfg.select) == "best_val" and len(val_labels) > 0
        text_sims, val_sims = feats @ text.t(), val_feats @ text.t()
        alpha_grad = torch.zeros_like(alpha)
        best = (-1.0, None)
        with torch.enable_grad():
            for step in range(int(cfg.fit_epochs)):
                loss = F.cross_entropy(feats @ weight.t() + bias + alpha * text_sims, labels)
                opt.zero_grad()
                alpha.grad = None
                loss.backward()
                alpha_grad = alpha_grad + alpha.grad if cumulative else alpha.grad
                opt.step()
                if (step + 1) % every == 0:
                    with torch.no_grad():
                        alpha -= lr_alpha * alpha_grad
                if select_best:
                    with torch.no_grad():
                        acc = accuracy(val_feats @ weight.t() + bias + alpha * val_sims, val_labels)
                    if acc >= best[0]:
                        best = (acc, (weight.detach().clone(), bias.detach().clone(), alpha.detach().clone()))
        final = best[1] if best[1] is not None else (weight.detach(), bias.detach(), alpha.detach())
        with torch.no_grad():
            for param, value in zip((self.visual_weight, self.bias, self.alpha), final, strict=True):
                param.copy_(value)

    def image_features(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.encode_image(images)

    def forward(self, images: Tensor) -> Tensor:
        feats = F.normalize(self.image_features(images), dim=-1)
        seen = feats @ self.visual_weight.t() + self.bias + self.alpha * (feats @ self.train_text_weights.t())
        fallback = self.alpha.mean() * feats @ F.normalize(self.text_weights, dim=-1).t()
        return merge_seen(seen, fallback, self.rows)
