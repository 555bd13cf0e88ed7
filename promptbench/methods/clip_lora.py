"""CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPRW 2024;
reference code MaxZanella/CLIP-LoRA).

Low-rank deltas on the q, k, v projections of every block of both towers:

    y = W x + b + s · B A drop(x),   A ∈ R^{r×in} (Kaiming-uniform, a=√5), B ∈ R^{out×r} (zeros),
    s = alpha / √r  (the reference's ``loralib`` scaling, rank-stabilised; not alpha / r),

with dropout p on the LoRA input only (train mode inside the method, while the backbone stays in eval).
Trainable parameters: ``Σ_projections r · (in + out)`` (ViT-B/16 CLIP, r = 2, q/k/v of 12 + 12 blocks: 184,320).
Loss: cross-entropy of ``exp(logit_scale)·cos(image, text)`` with the dataset's single template; AdamW
(lr 2e-4, betas (0.9, 0.999), weight decay 0.01), cosine to 1e-6 over ``500 × K`` iterations, batch 32.

Implemented over the tower adapters' projection view (``backbones.projections``) rather than ``peft``: peft
injects its layers into the model (the shared, cached backbone), and for ``nn.MultiheadAttention`` (open_clip's
native towers) it wraps the whole attention module; hooks that exist only during the method's forward keep the
backbone untouched and give the same maths on all three tower kinds (packed MHA, timm fused qkv, BERT).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.backbones.projections import Delta, Projection
from promptbench.methods.config import display_name, option
from promptbench.methods.registry import register
from promptbench.methods.weight_common import WeightDeltaConfig, WeightDeltaMethod, WeightOptimConfig, key


def lora_parameter_count(shapes: Sequence[tuple[int, int]], rank: int) -> int:
    """``Σ r·(in + out)`` over the adapted (out, in) weight shapes."""
    return sum(rank * (o + i) for o, i in shapes)


@dataclass
class ClipLoRAConfig(WeightDeltaConfig):
    """CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024; MaxZanella/CLIP-LoRA run_utils.py / lora.py defaults): rank 2,
    alpha 1 (scaling alpha/sqrt(r)), dropout 0.25 on the LoRA input, on q, k, v of every block of both towers; AdamW
    lr 2e-4, betas (0.9, 0.999), weight decay 0.01; cosine (per iteration) to 1e-6 over 500 x K iterations; batch 32.
    Deviations: fp32 instead of fp16 autocast; the dataset's template (docs/methods_weight.md)."""

    display_name: str | None = display_name("CLIP-LoRA")
    rank: int = option(2, "LoRA rank r")
    alpha: float = option(1.0, "LoRA alpha (scaling alpha / sqrt(r))")
    dropout: float = option(0.25, "dropout on the LoRA input")
    iters_per_shot: int | None = option(500, "total optimiser steps = iters_per_shot x K (shots <= 0: epochs)")
    epochs: int = option(10, "epochs, used only with shots=0 (a full protocol; our choice, not in the paper)")
    optim: WeightOptimConfig = option(WeightOptimConfig(lr=2.0e-4, weight_decay=0.01, min_lr=1.0e-6),
                                      "optimiser and LR schedule")


@register("clip_lora")
class ClipLoRA(WeightDeltaMethod):
    """Config (:class:`ClipLoRAConfig`): ``rank`` (2), ``alpha`` (1), ``dropout`` (0.25), ``towers``, ``kinds``
    (q k v), ``layers``, ``iters_per_shot`` (500)."""

    family = "weight"
    config_class = ClipLoRAConfig
    config: ClipLoRAConfig

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        self.rank = int(self.config.rank)
        self.scaling = float(self.config.alpha) / math.sqrt(self.rank)
        self.dropout = nn.Dropout(float(self.config.dropout))
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for proj in self.targets:
            a = torch.empty(self.rank, proj.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[key(proj)] = nn.Parameter(a)
            self.lora_B[key(proj)] = nn.Parameter(torch.zeros(proj.out_features, self.rank))

    def _delta(self, name: str) -> Delta:
        a, b = self.lora_A[name], self.lora_B[name]
        return lambda x: self.scaling * (self.dropout(x) @ a.t() @ b.t())

    def deltas(self) -> dict[Projection, Delta]:
        return {proj: self._delta(key(proj)) for proj in self.targets}

    def merged_delta(self, proj: Projection) -> Tensor:
        """``s · B A`` (out, in): the weight change of one projection (eval mode, no dropout)."""
        return self.scaling * self.lora_B[key(proj)] @ self.lora_A[key(proj)]
