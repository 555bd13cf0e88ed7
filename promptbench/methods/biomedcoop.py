"""BiomedCoOp (Koleilat et al., CVPR 2025): CoOp regularised by an ensemble of LLM class descriptions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from promptbench.methods.config import OptimConfig, display_name, option
from promptbench.methods.coop import CoOp, CoOpConfig
from promptbench.methods.registry import register
from promptbench.methods.text_common import DescriptionBank, mad_keep_mask, prompt_scores, pruned_teacher, teacher_kl


@dataclass
class BiomedCoOpConfig(CoOpConfig):
    """BiomedCoOp (Koleilat et al., CVPR 2025): CoOp + MSE to the mean LLM-description embedding (SCCM) + KL to
    the MAD/tau-pruned description teacher (KDSP). HealthX-Lab/BiomedCoOp@7ceb5a89 train.py and
    configs/trainers/BiomedCoOp/*: "a photo of a" (n_ctx 4), batch 4, SGD lr 0.0025, 100 epochs few-shot (50
    base-to-novel), 50 prompts per class. Per-dataset lambdas / tau in conf/tuned/*/biomedcoop/."""

    display_name: str | None = display_name("BiomedCoOp")
    batch_size: int = option(4, "training batch size")
    sccm_lambda: float = option(1.0, "weight of MSE(t_c, mean description embedding)")
    kdsp_lambda: float = option(1.0, "weight of KL(teacher || student) / (B*C)")
    tau: float = option(1.5, "keep description prompts whose re-standardised MAD z-score is <= tau")
    n_prompts: int = option(50, "first N descriptions per class (dataset.descriptions or the packaged file)")
    train_mode: Any = option([], "submodules in train mode inside training steps; reference: Dassl .train() on the "
                                 "whole CLIP ([backbone])", fidelity="biomed_train_mode")
    optim: OptimConfig = option(OptimConfig(lr=0.0025), "optimiser and LR schedule")


@register("biomedcoop")
class BiomedCoOp(CoOp):
    """Learns only ``ctx`` (n_ctx 4 from "a photo of a", class name at the end). Training loss
    (``HealthX-Lab/BiomedCoOp`` trainers/BiomedCoOp/biomedcoop_biomedclip.py; biomed_dpt_biomedcoop.md §4.3):

    - CE on s·f·t_cᵀ;
    - L_SCCM = ``sccm_lambda`` · MSE(t_c, ḡ_c), mean over C·E elements, ḡ_c = normalised mean of all N
      description embeddings of class c;
    - L_KDSP = ``kdsp_lambda`` · KL(p_teacher ‖ p_student) / (B·C), the teacher s·f·ĝ_cᵀ using only the
      description indices whose batch score survives the MAD z-score + τ rule (``tau``).

    Descriptions: ``dataset.descriptions`` (or the packaged file); the first ``n_prompts`` sentences per class.
    Test-time logits use the learned prompts only.
    """

    family = "text"
    config_class = BiomedCoOpConfig
    config: BiomedCoOpConfig

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self.bank = DescriptionBank(self, int(self.config.n_prompts))
        self._refresh_bank()

    def _refresh_bank(self) -> None:
        bank = self.bank.features(self.classnames)
        self.register_buffer("description_bank", bank, persistent=False)
        self.register_buffer("description_mean", DescriptionBank.mean(bank), persistent=False)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._refresh_bank()

    def training_loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        image_features = self.encode_image(images)
        text_features = self.prompt_learner()
        logits = self.logits(image_features, text_features)
        scale = self.backbone.logit_scale.exp()
        with torch.no_grad():
            f = F.normalize(image_features, dim=-1)
            mask = mad_keep_mask(prompt_scores(f, self.description_bank, scale), float(self.config.tau))
            teacher_logits = scale * f @ pruned_teacher(self.description_bank, mask).t()
        ce = F.cross_entropy(logits, labels)
        sccm = F.mse_loss(F.normalize(text_features, dim=-1), self.description_mean)
        kdsp = teacher_kl(logits, teacher_logits)
        loss = ce + float(self.config.sccm_lambda) * sccm + float(self.config.kdsp_lambda) * kdsp
        return {"loss": loss, "logits": logits, "ce": ce, "sccm": sccm, "kdsp": kdsp,
                "kept_prompts": mask.float().mean()}
