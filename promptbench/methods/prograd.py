"""ProGrad (Zhu et al., ICCV 2023): CoOp whose CE gradient is projected off the zero-shot distillation direction
whenever the two conflict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from promptbench.methods.config import display_name, option
from promptbench.methods.coop import CoOp, CoOpConfig
from promptbench.methods.registry import register
from promptbench.methods.text_common import loss_with_gradients, project_conflicting, soft_cross_entropy


@dataclass
class ProGradConfig(CoOpConfig):
    """ProGrad (Zhu et al., ICCV 2023), BiomedCoOp's ProGrad configs (HealthX-Lab/BiomedCoOp@7ceb5a89
    configs/trainers/ProGrad/*): "a photo of a" (n_ctx 4), batch 128, SGD lr 0.002, 100 epochs, T 1.0, lambda 1.0.
    Per-dataset T (few-shot) and lr 0.0015 / 50 epochs (base-to-novel) in conf/tuned/*/prograd/."""

    display_name: str | None = display_name("ProGrad")
    batch_size: int = option(128, "training batch size")
    temperature: float = option(1.0, "KD temperature T (loss scaled by T^2)")
    lambda_: float = option(1.0, "projection strength (LOSS.LAMBDA)")
    template: str | None = option("a photo of a {}.", "zero-shot teacher prompt (BiomedCoOp CUSTOM_TEMPLATES); "
                                                      "null = dataset.template")
    teacher: str = option("zeroshot", "zeroshot (paper) | student (BiomedCoOp fp32 branch: the detached student)",
                          choices=("zeroshot", "student"), fidelity="prograd_teacher")


@register("prograd")
class ProGrad(CoOp):
    """Learns only ``ctx``. Per step: g_ce = ∇CE, g_kd = ∇KD (KD = T²·soft cross-entropy to the zero-shot
    logits of ``template``); if g_ce·g_kd < 0 the update uses g_ce − λ (g_ce·ĝ_kd) ĝ_kd, else g_ce.

    Mechanism (works with Lightning's automatic optimisation, no manual ``.grad`` writes): ``training_loss``
    computes both gradients with ``torch.autograd.grad`` on the learnable parameters, projects them, and
    returns a loss whose value is the CE and whose ``backward()`` deposits exactly the projected gradient
    (``text_common.loss_with_gradients``, a custom autograd function). Cost: two text-encoder backward passes,
    as the reference's two ``backward`` calls.

    Config: CoOp keys plus ``temperature`` (T), ``lambda_`` (λ), ``template`` (teacher prompt; null = dataset
    template) and ``teacher``: ``zeroshot`` (paper, official code; ``fidelity=paper``) or ``student`` (default under
    ``fidelity=reference``: BiomedCoOp's
    ``prograd_biomedclip.py`` fp32 branch, which uses the detached student as its own teacher: g_kd is zero up
    to round-off, so this option trains plain CE with ProGrad's hyper-parameters).
    """

    family = "text"
    config_class = ProGradConfig
    config: ProGradConfig

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self._refresh_teacher()

    def _refresh_teacher(self) -> None:
        template = self.config.template or self.templates()[0]
        self.register_buffer("teacher_weights", self.class_text_features([template]), persistent=False)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._refresh_teacher()

    def training_loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        image_features = self.encode_image(images)
        logits = self.logits(image_features, self.prompt_learner())
        with torch.no_grad():
            if self.config.teacher == "student":
                teacher = logits.detach()
            else:
                teacher = self.logits(image_features, self.teacher_weights)
        ce = F.cross_entropy(logits, labels)
        kd = soft_cross_entropy(logits, teacher, float(self.config.temperature))
        params = list(self.learnable_parameters())
        if not torch.is_grad_enabled() or not params or self.config.teacher == "student":
            # a self-teacher's KD gradient is zero analytically; the reference projects on its round-off noise
            no = torch.zeros((), device=ce.device)
            return {"loss": ce, "logits": logits, "ce": ce, "kd": kd.detach(), "conflict": no}
        g_ce = torch.autograd.grad(ce, params, retain_graph=True)
        g_kd = torch.autograd.grad(kd, params, retain_graph=False)
        lam = float(self.config.lambda_)
        projected = [project_conflicting(a, b, lam) for a, b in zip(g_ce, g_kd)]
        conflict = torch.tensor(float(any((a * b).sum() < 0 for a, b in zip(g_ce, g_kd))), device=ce.device)
        loss = loss_with_gradients(ce, params, projected)
        return {"loss": loss, "logits": logits.detach(), "ce": ce.detach(), "kd": kd.detach(), "conflict": conflict}
