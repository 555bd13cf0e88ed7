"""Zero-shot CLIP classification: single clinical template or a template/description ensemble."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from promptbench.methods.base import Method
from promptbench.methods.common import description_features
from promptbench.methods.registry import register


@register("zeroshot")
class ZeroShot(Method):
    """``cfg.prompts``: ``single`` (dataset.template), ``ensemble`` (dataset.templates + template) or
    ``descriptions`` (mean over the class descriptions file, as BiomedCoOp's teacher)."""

    trains = False
    equals_zero_shot_at_init = True  # with prompts=single (the default)
    needs_image_tower = False

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self.set_classnames(classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        mode = self.cfg.get("prompts", "single")
        if mode == "single":
            weights = self.class_text_features(self.templates())
        elif mode == "ensemble":
            templates = list(dict.fromkeys([*self.templates(), *(self.dataset_cfg.get("templates") or [])]))
            weights = self.class_text_features(templates)
        elif mode == "descriptions":

            weights = description_features(self, self.classnames).mean_features
        else:
            raise ValueError(f"zeroshot.prompts must be single, ensemble or descriptions, got '{mode}'")
        self.register_buffer("text_weights", weights, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.encode_image(images), self.text_weights)
