"""CoOp (Zhou et al., IJCV 2022): learnable text context, frozen towers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from promptbench.methods.base import Method
from promptbench.methods.registry import register
from promptbench.prompts import TextPromptLearner


@register("coop")
class CoOp(Method):
    """Config: ``n_ctx``, ``ctx_init`` (words; empty = N(0, 0.02) init), ``class_token_position``
    (end | middle | front), ``class_specific`` (CSC)."""

    needs_image_tower = False

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self.prompt_learner = TextPromptLearner.from_config(backbone.text, self.classnames, cfg)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.prompt_learner.set_classnames(self.classnames)

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.encode_image(images), self.prompt_learner())
