"""CLIP-Adapter (Gao, Geng, Zhang, Ma, Fang, Zhang, Li, Qiao; IJCV 2024, arXiv 2110.04544), visual adapter:

    f' = α·A(f) + (1 − α)·f,    A = ReLU ∘ Linear(E/r → E) ∘ ReLU ∘ Linear(E → E/r)   (no biases)

on the frozen image feature f, classified against the frozen template text features. Trainable parameters:
``2·E·(E/r)`` (= E²/2 for the reduction r = 4).

Feature handling differs between the two reference codes (both selectable):

- BiomedCoOp ``trainers/clip_adapter.py`` (default, since its hyper-parameters are the ones we use): the adapter
  sees the L2-normalised feature and the blended feature is *not* re-normalised (``input_norm: true``,
  ``output_norm: false``): logits = exp(logit_scale)·f'·t̂ᵀ.
- Gao et al.'s code: the adapter sees the raw feature and f' is re-normalised (cosine logits):
  ``input_norm: false``, ``output_norm: true``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.methods.config import MainBaselineConfig, OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.visual_common import FrozenTextClassifier


@dataclass
class ClipAdapterOptim(OptimConfig):
    """BiomedCoOp configs/trainers/CLIP_Adapter/few_shot.yaml: SGD lr 0.01 without momentum or weight decay, one
    constant warm-up ITERATION at 1e-5 then a cosine of period 20 iterations stepped per iteration."""

    lr: float = option(0.01, "learning rate")
    momentum: float = option(0.0, "SGD momentum")
    weight_decay: float = option(0.0, "weight decay")
    interval: str = option("epoch", "the unit the schedule advances by (reference: step, per iteration)",
                           choices=("epoch", "step"), fidelity="clip_adapter_interval")
    t_max: int | None = option(None, "cosine period in units (reference: T_max 20 iterations, periodic cosine); "
                                     "null = the whole run", fidelity="clip_adapter_t_max")


@dataclass
class ClipAdapterConfig(MainBaselineConfig):
    """CLIP-Adapter (Gao et al., IJCV 2024, arXiv 2110.04544), visual adapter f' = alpha*A(f) + (1-alpha)*f with
    A = E -> E/4 -> E (ReLU, no biases), settings of BiomedCoOp configs/trainers/CLIP_Adapter/few_shot.yaml: alpha 0.5,
    20 epochs, batch 32; adapter on L2-normalised features, blended feature not re-normalised. Gao et al.'s own code:
    method.input_norm=false method.output_norm=true method.alpha=0.2."""

    display_name: str | None = display_name("CLIP-Adapter")
    epochs: int = option(20, "training epochs")
    reduction: int = option(4, "adapter bottleneck: E -> E / reduction -> E")
    alpha: float = option(0.5, "residual ratio of the adapted feature")
    input_norm: bool = option(True, "adapter input L2-normalised (BiomedCoOp) | raw (Gao et al.)")
    output_norm: bool = option(False, "cosine logits on the blended feature (Gao et al.) | plain dot product "
                                      "(BiomedCoOp)")
    optim: ClipAdapterOptim = option(ClipAdapterOptim(), "optimiser and LR schedule")


@register("clip_adapter")
class ClipAdapter(FrozenTextClassifier):
    """Config (:class:`ClipAdapterConfig`): ``reduction`` (4), ``alpha`` (residual ratio), ``input_norm``,
    ``output_norm``."""

    family = "adapter"
    needs_image_tower = False
    config_class = ClipAdapterConfig
    config: ClipAdapterConfig

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        dim = self.train_text_weights.shape[1]
        hidden = dim // int(self.config.reduction)
        self.adapter = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.ReLU()
        )
        self.alpha = float(self.config.alpha)
        self.input_norm = bool(self.config.input_norm)
        self.output_norm = bool(self.config.output_norm)

    def image_features(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            feats = self.encode_image(images)
            if self.input_norm:
                feats = F.normalize(feats, dim=-1)
        return self.alpha * self.adapter(feats) + (1.0 - self.alpha) * feats

    def forward(self, images: Tensor) -> Tensor:
        feats = self.image_features(images)
        if self.output_norm:
            return self.logits(feats, self.text_weights)
        return self.backbone.logit_scale.exp() * feats @ F.normalize(self.text_weights, dim=-1).t()
