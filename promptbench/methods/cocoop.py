"""CoCoOp (Zhou et al., CVPR 2022): CoOp context shifted per image by a small meta-net on the image feature."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.methods.base import Method
from promptbench.methods.registry import register
from promptbench.prompts import TextPromptLearner


@register("cocoop")
class CoCoOp(Method):
    """Learns ``ctx`` (n, D) and ``meta_net`` = Linear(E → E/r) → ReLU → Linear(E/r → D) (r = 16).

    ``bias = meta_net(normalised image feature)`` is added to every context token, so each image gets its own
    class prompts: B × C text forwards per batch (``KaiyangZhou/CoOp`` trainers/cocoop.py). Config: ``n_ctx``,
    ``ctx_init``, ``class_token_position``, ``meta_hidden_ratio``.
    Parameters: n·D + (E·E/r + E/r) + (E/r·D + D).
    """

    needs_image_tower = False

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        text = backbone.text
        self.prompt_learner = TextPromptLearner.from_config(backbone.text, self.classnames, cfg)
        embed = backbone.embed_dim
        hidden = max(embed // int(cfg.get("meta_hidden_ratio", 16)), 1)
        self.meta_net = nn.Sequential(nn.Linear(embed, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, text.width))
        self.meta_net.to(backbone.logit_scale.device)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.prompt_learner.set_classnames(self.classnames)

    def forward(self, images: Tensor) -> Tensor:
        image_features = self.encode_image(images)
        shift = self.meta_net(F.normalize(image_features, dim=-1))
        return self.logits(image_features, self.prompt_learner(shift))
