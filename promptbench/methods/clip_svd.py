"""CLIP-SVD (Koleilat, Rivaz & Xiao, "Singular Value Few-shot Adaptation of Vision-Language Models",
arXiv 2509.03740; reference code HealthX-Lab/CLIP-SVD).

Every linear map of every block of both towers (attention q, k, v, out; MLP fc1, fc2) is factorised once,
``W = U diag(σ) Vᵀ`` (full rank), and only the singular values are trained:

    y = W x + b + U diag(σ' − σ) Vᵀ x,     σ' initialised to σ,

so at initialisation the model is the stock one exactly (the reference rebuilds ``W`` as ``U diag(σ') Vᵀ``,
which equals ``W`` up to the SVD's float error). Trainable parameters: ``Σ min(out, in)`` over the adapted
matrices (ViT-B/16 + CLIP text: 12·6·768 + 12·6·512 = 92,160; BiomedCLIP: 12·6·768 · 2 = 110,592).
Loss: cross-entropy of ``exp(logit_scale)·cos`` with the single template. AdamW (betas 0.9/0.999, weight decay 0),
``CosineAnnealingLR(T_max = epochs, eta_min = 1e-6)`` stepped per iteration (reference quirk, ``t_max``),
per-dataset lr/epochs in ``conf/tuned/few_shot/clip_svd``.
"""

from __future__ import annotations

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


def svd_parameter_count(shapes: Sequence[tuple[int, int]]) -> int:
    """``Σ min(out, in)`` over the adapted (out, in) weight shapes."""
    return sum(min(o, i) for o, i in shapes)


@dataclass
class ClipSVDConfig(WeightDeltaConfig):
    """CLIP-SVD (Koleilat, Rivaz & Xiao, arXiv 2509.03740; HealthX-Lab/CLIP-SVD, BiomedCLIP few-shot path
    train.py run_biomedical_training + configs/few_shot/<dataset>.yaml): singular values of every attention and MLP
    matrix of every block of both towers; AdamW betas (0.9, 0.999), weight decay 0; CosineAnnealingLR(T_max =
    train_epochs, eta_min = 1e-6) stepped every iteration (reference quirk); batch 32. lr / epochs per dataset in
    conf/tuned/few_shot/clip_svd/<dataset>.yaml; defaults = configs/few_shot/btmri.yaml."""

    display_name: str | None = display_name("CLIP-SVD")
    kinds: list[str] = option(["q", "k", "v", "out", "fc1", "fc2"], "projections adapted per block")
    epochs: int = option(100, "training epochs (the BiomedCLIP few-shot path trains by epochs)")
    optim: WeightOptimConfig = option(WeightOptimConfig(lr=0.007, min_lr=1.0e-6, t_max="${..epochs}"),
                                      "optimiser and LR schedule; t_max = epochs (reference quirk: T_max in epochs, "
                                      "stepped per iteration)")


@register("clip_svd")
class ClipSVD(WeightDeltaMethod):
    """Config (:class:`ClipSVDConfig`): ``towers`` (visual, text), ``kinds`` (q k v out fc1 fc2), ``layers``
    (null = all)."""

    family = "weight"
    config_class = ClipSVDConfig
    config: ClipSVDConfig

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        self.sigma = nn.ParameterDict()
        self._factors: dict[str, tuple[str, str, str]] = {}
        for proj in self.targets:
            with torch.no_grad():
                u, s, vh = torch.linalg.svd(proj.weight.detach().double(), full_matrices=False)
            k = key(proj)
            self.sigma[k] = nn.Parameter(s.float())
            names = (f"_u_{k}", f"_vh_{k}", f"_s0_{k}")
            for name, value in zip(names, (u.float(), vh.float(), s.float()), strict=True):
                self.register_buffer(name, value, persistent=False)
            self._factors[k] = names

    def _delta(self, k: str) -> Delta:
        u_name, vh_name, s0_name = self._factors[k]
        u, vh, s0, s = getattr(self, u_name), getattr(self, vh_name), getattr(self, s0_name), self.sigma[k]
        return lambda x: ((x @ vh.t()) * (s - s0)) @ u.t()

    def deltas(self) -> dict[Projection, Delta]:
        return {proj: self._delta(key(proj)) for proj in self.targets}

    def merged_delta(self, proj: Projection) -> Tensor:
        u_name, vh_name, s0_name = self._factors[key(proj)]
        shift = self.sigma[key(proj)] - getattr(self, s0_name)
        return getattr(self, u_name) @ torch.diag(shift) @ getattr(self, vh_name)
