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
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.methods.registry import register
from promptbench.methods.visual_common import FrozenTextClassifier


@register("clip_adapter")
class ClipAdapter(FrozenTextClassifier):
    """Config: ``reduction`` (4), ``alpha`` (residual ratio), ``input_norm``, ``output_norm``."""

    needs_image_tower = False

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        dim = self.train_text_weights.shape[1]
        hidden = dim // int(cfg.get("reduction", 4))
        self.adapter = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.ReLU()
        )
        self.alpha = float(cfg.get("alpha", 0.5))
        self.input_norm = bool(cfg.get("input_norm", True))
        self.output_norm = bool(cfg.get("output_norm", False))

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
