"""CoCoOp (Zhou et al., CVPR 2022): CoOp context shifted per image by a small meta-net on the image feature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.methods.base import Method
from promptbench.methods.config import OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.text_common import TextPromptConfig, text_prompt_learner


@dataclass
class CoCoOpConfig(TextPromptConfig):
    """CoCoOp (Zhou et al., CVPR 2022) with BiomedCoOp's biomedical settings (HealthX-Lab/BiomedCoOp@7ceb5a89
    configs/trainers/CoCoOp/vit_b16{,_base2new}.yaml): n_ctx 4 from "a photo of a", batch 1, SGD lr 0.001,
    10 epochs in both protocols, fp32. Meta-net E -> E/16 -> D (KaiyangZhou/CoOp cocoop.py)."""

    display_name: str | None = display_name("CoCoOp")
    epochs: int = option(10, "training epochs")
    batch_size: int = option(1, "training batch size")
    meta_hidden_ratio: int = option(16, "meta-net hidden width = embed_dim // meta_hidden_ratio")
    optim: OptimConfig = option(OptimConfig(lr=0.001), "optimiser and LR schedule")


@register("cocoop")
class CoCoOp(Method):
    """Learns ``ctx`` (n, D) and ``meta_net`` = Linear(E → E/r) → ReLU → Linear(E/r → D) (r = 16).

    ``bias = meta_net(normalised image feature)`` is added to every context token, so each image gets its own
    class prompts: B × C text forwards per batch (``KaiyangZhou/CoOp`` trainers/cocoop.py). Config: ``n_ctx``,
    ``ctx_init``, ``class_token_position``, ``meta_hidden_ratio``.
    Parameters: n·D + (E·E/r + E/r) + (E/r·D + D).
    """

    family = "text"
    needs_image_tower = False
    config_class = CoCoOpConfig
    config: CoCoOpConfig

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        text = backbone.text
        self.prompt_learner = text_prompt_learner(backbone.text, self.classnames, self.config)
        embed = backbone.embed_dim
        hidden = max(embed // int(self.config.meta_hidden_ratio), 1)
        self.meta_net = nn.Sequential(nn.Linear(embed, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, text.width))
        self.meta_net.to(backbone.logit_scale.device)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.prompt_learner.set_classnames(self.classnames)

    def forward(self, images: Tensor) -> Tensor:
        image_features = self.encode_image(images)
        shift = self.meta_net(F.normalize(image_features, dim=-1))
        return self.logits(image_features, self.prompt_learner(shift))
