"""Shared base of weight-space methods (CLIP-LoRA, CLIP-SVD): per-projection output deltas on both towers.

The backbone is never modified: :meth:`WeightDeltaMethod.deltas` returns ``{Projection: Δ(x)}`` and every forward
runs inside :func:`~promptbench.backbones.projections.projection_deltas`, whose hooks exist only for that call.
Classification is CLIP's: cosine logits of the adapted image features against the adapted text features of the
dataset's single template, scaled by the backbone's ``exp(logit_scale)`` (100 for OpenAI CLIP, the constant
CLIP-LoRA hard-codes). In evaluation the class text features are computed once per class list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from promptbench.backbones import Backbone
from promptbench.backbones.projections import Delta, Projection, projection_deltas, select
from promptbench.methods.base import Method, TrainingBudget
from promptbench.methods.config import MethodConfig, OptimConfig, option
from promptbench.prompts.text import clean_classname


def key(proj: Projection) -> str:
    """Parameter-dict key of a projection (``visual.3.q`` → ``visual_3_q``)."""
    return proj.name.replace(".", "_")


@dataclass
class WeightOptimConfig(OptimConfig):
    """AdamW with a per-iteration CosineAnnealingLR to ``min_lr`` (:meth:`WeightDeltaMethod.configure_optimization`;
    warm-up, momentum and interval keys are not used)."""

    name: str = option("adamw", "optimizer (always AdamW here)", choices=("adamw",))
    betas: list[float] = option([0.9, 0.999], "AdamW betas")
    weight_decay: float = option(0.0, "AdamW weight decay")
    min_lr: float = option(0.0, "CosineAnnealingLR eta_min")


@dataclass
class WeightDeltaConfig(MethodConfig):
    """Keys of the weight-space methods: which projections are adapted and the training budget."""

    demo_excluded: bool = option(True, "left out of the CPU demo preset (full-tower forwards per step)")
    towers: list[str] = option(["visual", "text"], "towers adapted: visual and/or text")
    kinds: list[str] = option(["q", "k", "v"], "projections adapted per block: q k v out fc1 fc2")
    layers: list[int] | None = option(None, "blocks adapted; null = every block")
    iters_per_shot: int | None = option(None, "total optimiser steps = iters_per_shot x K (shots <= 0: epochs); "
                                              "null = epochs")
    max_shots: int | None = option(None, "cap on K in iters_per_shot x K; null = no cap")
    optim: WeightOptimConfig = option(WeightOptimConfig(), "optimiser and LR schedule")


class WeightDeltaMethod(Method):
    """Config: ``towers`` (visual, text), ``kinds`` (q k v out fc1 fc2), ``layers`` (null = all blocks)."""

    needs_image_tokens = True
    demo_excluded = True  # full-tower forwards per step: minutes per cell on CPU
    equals_zero_shot_at_init = True
    config_class = WeightDeltaConfig
    config: WeightDeltaConfig

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        towers = list(self.config.towers)
        bad = set(towers) - {"visual", "text"}
        if bad:
            raise ValueError(f"method.towers must list 'visual' and/or 'text', got {sorted(bad)}")
        layers = self.config.layers
        kinds = list(self.config.kinds)
        self.towers = towers
        self.targets: list[Projection] = []
        for name in towers:
            tower = backbone.visual if name == "visual" else backbone.text
            self.targets += select(tower.projections(), kinds, list(layers) if layers is not None else None)
        self._text_cache: tuple[tuple[str, ...], Tensor] | None = None

    # -- to implement ------------------------------------------------------------------------------
    def deltas(self) -> dict[Projection, Delta]:
        raise NotImplementedError

    # -- forward -----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> WeightDeltaMethod:
        self._text_cache = None
        return super().train(mode)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._text_cache = None

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        super().load_trainable_state(state)
        self._text_cache = None  # class text features of the old deltas

    def _text_features(self) -> Tensor:
        template = self.templates()[0]
        names = tuple(self.classnames)
        if not self.training and self._text_cache is not None and self._text_cache[0] == names:
            return self._text_cache[1]
        tower = self.backbone.text
        ids = tower.tokenize([template.format(clean_classname(c)) for c in names])
        feats = tower.encode(ids.to(self.backbone.logit_scale.device))
        if not self.training:
            self._text_cache = (names, feats.detach())
        return feats

    def forward(self, images: Tensor) -> Tensor:
        with projection_deltas(self.deltas()):
            if "text" in self.towers:
                text = self._text_features()
            else:
                with torch.no_grad():
                    text = self._text_features()
            if "visual" in self.towers:
                image = self.backbone.encode_image(images)
            else:
                with torch.no_grad():
                    image = self.backbone.encode_image(images)
        return self.logits(image, text)

    # -- optimisation: AdamW, per-step cosine to a floor (both reference codes) --------------------
    def configure_optimization(self, optim_cfg: Any, *, max_epochs: int, total_steps: int) -> dict[str, Any] | None:
        """AdamW + per-iteration cosine from the method's typed ``config.optim`` (:class:`WeightOptimConfig`; the
        ``optim_cfg`` the engine passes is that same section of the composed config)."""
        optim = self.config.optim
        params = list(self.learnable_parameters())
        betas = tuple(float(b) for b in optim.betas)
        optimizer = torch.optim.AdamW(params, lr=float(optim.lr), betas=betas, weight_decay=float(optim.weight_decay))
        t_max = int(optim.t_max or total_steps or 1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(t_max, 1),
                                                               eta_min=float(optim.min_lr))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_budget(self, *, steps_per_epoch: int, shots: int) -> TrainingBudget:
        """``iters_per_shot × K`` optimiser steps when set (CLIP-LoRA: 500 × K), else ``epochs``."""
        per_shot = self.config.iters_per_shot
        if per_shot and shots > 0:
            return TrainingBudget(epochs=0, steps=int(per_shot) * min(shots, int(self.config.max_shots or shots)))
        return TrainingBudget(epochs=int(self.config.epochs or 0))

