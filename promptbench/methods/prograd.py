"""ProGrad (Zhu et al., ICCV 2023): CoOp whose CE gradient is projected off the zero-shot distillation direction
whenever the two conflict."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from promptbench.methods.coop import CoOp
from promptbench.methods.registry import register
from promptbench.methods.text_common import loss_with_gradients, project_conflicting, soft_cross_entropy


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

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        if cfg.get("teacher", "zeroshot") not in ("zeroshot", "student"):
            raise ValueError(f"prograd.teacher must be zeroshot or student, got '{cfg.get('teacher')}'")
        self._refresh_teacher()

    def _refresh_teacher(self) -> None:
        template = self.cfg.get("template") or self.templates()[0]
        self.register_buffer("teacher_weights", self.class_text_features([template]), persistent=False)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._refresh_teacher()

    def training_loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        image_features = self.encode_image(images)
        logits = self.logits(image_features, self.prompt_learner())
        with torch.no_grad():
            if self.cfg.get("teacher", "zeroshot") == "student":
                teacher = logits.detach()
            else:
                teacher = self.logits(image_features, self.teacher_weights)
        ce = F.cross_entropy(logits, labels)
        kd = soft_cross_entropy(logits, teacher, float(self.cfg.get("temperature", 1.0)))
        params = list(self.learnable_parameters())
        if not torch.is_grad_enabled() or not params or self.cfg.get("teacher", "zeroshot") == "student":
            # a self-teacher's KD gradient is zero analytically; the reference projects on its round-off noise
            no = torch.zeros((), device=ce.device)
            return {"loss": ce, "logits": logits, "ce": ce, "kd": kd.detach(), "conflict": no}
        g_ce = torch.autograd.grad(ce, params, retain_graph=True)
        g_kd = torch.autograd.grad(kd, params, retain_graph=False)
        lam = float(self.cfg.get("lambda_", 1.0))
        projected = [project_conflicting(a, b, lam) for a, b in zip(g_ce, g_kd)]
        conflict = torch.tensor(float(any((a * b).sum() < 0 for a, b in zip(g_ce, g_kd))), device=ce.device)
        loss = loss_with_gradients(ce, params, projected)
        return {"loss": loss, "logits": logits.detach(), "ce": ce.detach(), "kd": kd.detach(), "conflict": conflict}
