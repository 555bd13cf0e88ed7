"""CoOp (Zhou et al., IJCV 2022): learnable text context, frozen towers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from promptbench.methods.base import Method
from promptbench.methods.config import display_name, option
from promptbench.methods.registry import register
from promptbench.methods.text_common import TextPromptConfig, text_prompt_learner


@dataclass
class CoOpConfig(TextPromptConfig):
    """CoOp (Zhou et al., IJCV 2022) with BiomedCoOp's biomedical settings: n_ctx 4 from "a photo of a",
    SGD lr 0.002, batch 32, 100 epochs (few-shot) / 50 (base-to-novel, see conf/tuned)."""

    display_name: str | None = display_name("CoOp")
    epochs: int = option(100, "training epochs")


@register("coop")
class CoOp(Method):
    """Config (:class:`CoOpConfig`): ``n_ctx``, ``ctx_init`` (words; empty = N(0, 0.02) init),
    ``class_token_position`` (end | middle | front), ``class_specific`` (CSC)."""

    family = "text"
    needs_image_tower = False
    config_class = CoOpConfig
    config: CoOpConfig

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self.prompt_learner = text_prompt_learner(backbone.text, self.classnames, self.config)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.prompt_learner.set_classnames(self.classnames)

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.encode_image(images), self.prompt_learner())
