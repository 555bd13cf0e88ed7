"""KgCoOp (Yao et al., CVPR 2023): CoOp plus a pull of the learned class embeddings towards the hand-crafted ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from promptbench.methods.config import display_name, option
from promptbench.methods.coop import CoOp, CoOpConfig
from promptbench.methods.registry import register
from promptbench.methods.text_common import one_minus_mean_cos


@dataclass
class KgCoOpConfig(CoOpConfig):
    """KgCoOp (Yao et al., CVPR 2023), BiomedCoOp's KgCoOp configs (HealthX-Lab/BiomedCoOp@7ceb5a89
    configs/trainers/KgCoOp/*): "a photo of a" (n_ctx 4), batch 128, SGD lr 0.002, 100 epochs; W = 8.0. Per-dataset
    W (few-shot) and 50 epochs (base-to-novel) in conf/tuned/*/kgcoop/."""

    display_name: str | None = display_name("KgCoOp")
    batch_size: int = option(128, "training batch size")
    w: float = option(8.0, "weight of the 1 - cos term (the code's W; the paper's lambda = W / 2)")
    template: str | None = option("a photo of a {}.", "hand-crafted anchor prompt (BiomedCoOp CUSTOM_TEMPLATES); "
                                                      "null = dataset.template")


@register("kgcoop")
class KgCoOp(CoOp):
    """Learns only ``ctx``. Loss = CE + W · (1 − mean_c cos(w_c, w_c^clip)), where w_c^clip is the frozen
    encoding of the hand-crafted ``template`` (``htyao89/KgCoOp`` kgcoop.py; BiomedCoOp's KgCoOp uses
    "a photo of a {}." for every biomedical dataset). Config: CoOp keys plus ``w`` and ``template``
    (null = the dataset's template).
    """

    family = "text"
    config_class = KgCoOpConfig
    config: KgCoOpConfig

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self._refresh_anchors()

    def hand_template(self) -> str:
        return self.config.template or self.templates()[0]

    def _refresh_anchors(self) -> None:
        self.register_buffer("anchors", self.class_text_features([self.hand_template()]), persistent=False)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._refresh_anchors()

    def training_loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        text_features = self.prompt_learner()
        logits = self.logits(self.encode_image(images), text_features)
        ce = F.cross_entropy(logits, labels)
        kg = one_minus_mean_cos(text_features, self.anchors)
        return {"loss": ce + float(self.config.w) * kg, "logits": logits, "ce": ce, "kg": kg}
