"""CLAP (Silva-Rodriguez, Hajimiri, Ben Ayed & Dolz, "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2024; reference code jusiro/CLAP, ``trainers/adapters.py`` with INIT=ZS,
CONSTRAINT=l2).

A class-adaptive constrained linear probe, validation-free:

- prototypes ``W`` (C, E) start at the zero-shot class embeddings ``T`` (raw text features of the template,
  not normalised), logits ``exp(logit_scale)·cos(f, w_c)`` — zero-shot CLIP at initialisation;
- loss ``CE + mean_c λ_c ‖w_c − t_c‖²``, with the per-class multipliers fixed once before training from the
  zero-shot model on the (augmented) support set: ``λ_c`` = mean softmax probability of class c over its own
  support samples (no validation set, no search);
- SGD lr 0.1 (momentum 0.9, no weight decay), batch 256, 300 epochs, cosine with one constant warm-up epoch at
  1e-5 (``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``). Trainable parameters: ``C·E``.

The reference caches 20 augmented passes of support features and draws each epoch's batch from that cache; here
each epoch sees fresh augmentations of the support images (same distribution), and the multipliers use
``multiplier_views`` (20) augmented passes like the reference. Classes never trained (base→novel) keep their
zero-shot prototype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.methods.base import Method
from promptbench.methods.config import MethodConfig, OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.visual_common import class_rows, merge_seen


@torch.no_grad()
def class_adaptive_multipliers(zero_shot_logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``λ_c = (1/N_c) Σ_{i: y_i = c} softmax(l_i)_c`` (CLAP's ``init_lagrangian_multipliers``, non-balanced)."""
    probs = zero_shot_logits.float().softmax(-1)
    onehot = F.one_hot(labels, num_classes).float()
    return torch.diag(probs.t() @ onehot) / onehot.sum(0).clamp(min=1)


def l2_constraint(prototypes: Tensor, anchors: Tensor, multipliers: Tensor) -> Tensor:
    """``mean_c λ_c ‖w_c − t_c‖²``."""
    return torch.mean(multipliers * (prototypes - anchors).pow(2).sum(-1))


@dataclass
class CLAPConfig(MethodConfig):
    """CLAP (Silva-Rodriguez et al., CVPR 2024; jusiro/CLAP trainers/adapters.py, INIT=ZS, CONSTRAINT=l2,
    configs/trainers/SGD_lr1e-1_B256_ep300.yaml): zero-shot-initialised linear probe with a class-adaptive l2
    constraint towards the zero-shot prototypes; multipliers from the zero-shot model on 20 augmented passes of the
    support set; validation-free. SGD lr 0.1 (momentum 0.9), weight decay 0, batch 256, 300 epochs, cosine with one
    constant warm-up epoch at 1e-5."""

    display_name: str | None = display_name("CLAP")
    constraint: str = option("l2", "l2 (CLAP) | none (ZS-initialised linear probe, the paper's ZS-LP baseline)",
                             choices=("l2", "none"))
    multiplier_views: int = option(20, "augmented passes over the support set for the multipliers (reference: 20)")
    epochs: int = option(300, "training epochs")
    batch_size: int = option(256, "training batch size")
    optim: OptimConfig = option(OptimConfig(lr=0.1, weight_decay=0.0), "optimiser and LR schedule")


@register("clap")
class CLAP(Method):
    """Config (:class:`CLAPConfig`): ``multiplier_views`` (augmented passes for λ, 20), ``constraint``
    (l2 | none)."""

    family = "baseline"
    equals_zero_shot_at_init = True
    config_class = CLAPConfig
    config: CLAPConfig

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        self.train_classnames = list(self.classnames)
        anchors = self.raw_text_features(self.train_classnames)
        self.register_buffer("anchors", anchors, persistent=False)
        self.prototypes = nn.Parameter(anchors.clone())
        self.register_buffer("multipliers", torch.zeros(len(self.train_classnames)), persistent=False)
        self.constraint = str(self.config.constraint)
        if self.constraint not in ("l2", "none"):
            raise ValueError(f"clap.constraint must be l2 or none, got '{self.constraint}'")
        self.set_classnames(classnames)

    @torch.no_grad()
    def raw_text_features(self, classnames: Sequence[str]) -> Tensor:
        """Mean of the unnormalised text features over the templates (C, E), as CLAP's base prototypes."""
        templates = self.templates()
        feats = [self.encode_prompts([t.format(c) for c in classnames]) for t in templates]
        return torch.stack(feats).mean(0).float()

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.register_buffer("text_weights", self.raw_text_features(self.classnames), persistent=False)
        self.rows = class_rows(self.train_classnames, self.classnames)

    @torch.no_grad()
    def prepare(self, datamodule: Any) -> None:
        logits, labels = [], []
        for _ in range(max(1, int(self.config.multiplier_views))):
            for batch in datamodule.train_dataloader():
                feats = self.backbone.encode_image(batch["image"].to(self.anchors.device))
                logits.append(self.logits(feats, self.anchors))
                labels.append(batch["label"].to(self.anchors.device))
        if logits:
            self.multipliers.copy_(class_adaptive_multipliers(torch.cat(logits), torch.cat(labels),
                                                              len(self.train_classnames)))

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            feats = self.backbone.encode_image(images)
        return merge_seen(self.logits(feats, self.prototypes), self.logits(feats, self.text_weights), self.rows)

    def training_loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        logits = self(images)
        ce = F.cross_entropy(logits, labels)
        if self.constraint == "none":
            return {"loss": ce, "logits": logits, "ce": ce}
        penalty = l2_constraint(self.prototypes, self.anchors, self.multipliers)
        return {"loss": ce + penalty, "logits": logits, "ce": ce, "constraint": penalty}
