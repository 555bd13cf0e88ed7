"""Zero-shot CLIP classification: single clinical template or a template/description ensemble."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from promptbench.methods.base import Method
from promptbench.methods.common import description_features
from promptbench.methods.config import MethodConfig, display_name, option
from promptbench.methods.registry import register

PROMPTS = ("single", "ensemble", "descriptions")


@dataclass
class ZeroShotConfig(MethodConfig):
    """Zero-shot CLIP. fidelity=reference: "a photo of a {}." for every dataset, as BiomedCoOp's zero-shot baseline
    (trainers/Zeroshot/zeroshot.py, prompt_templates.py CUSTOM_TEMPLATES); method.template=null: the dataset's
    clinical template."""
    trains: bool = option(False, "no gradient training (method.epochs=0 accepted)")

    display_name: str | None = display_name("Zero-shot")
    epochs: int = option(0, "unused (zero-shot does not train)")
    prompts: str = option("single", "single (one template) | ensemble (dataset.templates) | descriptions (class "
                                    "description file)", choices=PROMPTS)
    template: str | None = option(None, "the single template (one {}); null = dataset.template",
                                  fidelity="baseline_template")


@register("zeroshot")
class ZeroShot(Method):
    """``config.prompts``: ``single`` (dataset.template), ``ensemble`` (dataset.templates + template) or
    ``descriptions`` (mean over the class descriptions file, as BiomedCoOp's teacher)."""

    family = "baseline"
    trains = False
    equals_zero_shot_at_init = True  # with prompts=single (the default)
    needs_image_tower = False
    config_class = ZeroShotConfig
    config: ZeroShotConfig

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self.set_classnames(classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        mode = self.config.prompts
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
