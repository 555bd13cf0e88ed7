"""Biomed-DPT (Peng et al., arXiv 2505.05189, 2025): clinical-template text prompt distilled from LLM
descriptions, plus zero-vector visual prompts in every ViT layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from promptbench.methods.base import Method
from promptbench.methods.config import MethodConfig, OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.text_common import DescriptionBank, split_template, teacher_kl, words_within_tokens
from promptbench.prompts import TextPromptLearner, VisualPromptLayout, encode_image_with_prompts

CLASS_POSITIONS = ("end", "middle", "middle_quirk")


@dataclass
class BiomedDPTConfig(MethodConfig):
    """Biomed-DPT (Peng et al., arXiv 2505.05189 v1, 2025), reference code tongdiedie/Biomed-prompt-learning@90c056c5:
    clinical template with a learnable prefix, L1 to the mean LLM-description embedding, KL from the zero-prompted
    image teacher, 4 zero visual tokens in every layer. Batch 4, SGD lr 0.0025, 100 epochs few-shot (50
    base-to-novel), 50 prompts. Per-dataset template / init / n_ctx / lambdas in conf/tuned/*/biomed_dpt/."""

    display_name: str | None = display_name("Biomed-DPT")
    epochs: int = option(100, "training epochs")
    batch_size: int = option(4, "training batch size")
    template: str | None = option(None, "clinical template with one {}; null = dataset.template")
    ctx_init: str | None = option(None, "learnable init words (a prefix of the template); null = all words before {}")
    n_ctx: int | None = option(None, "learnable tokens; null = all ctx_init tokens (rounded down to whole words)")
    class_token_position: str = option("end", "end (authors' few-shot driver) | middle (CoOp) | middle_quirk "
                                              "(reference \"middle\")", choices=CLASS_POSITIONS,
                                       fidelity="biomed_dpt_class_position")
    l1_lambda: float = option(1.0, "weight of the L1 to the mean description embedding")
    kl_lambda: float = option(1.0, "weight of KL(teacher || student) / (B*C)")
    n_prompts: int = option(50, "first N descriptions per class")
    visual_prompt: str = option("overwrite", "overwrite (reference code: zeros over the first patch slots) | insert "
                                             "(paper figure)", choices=("overwrite", "insert"),
                                fidelity="biomed_dpt_visual_prompt")
    visual_tokens: int = option(4, "zero visual tokens before every vision block")
    train_mode: Any = option([], "submodules in train mode inside training steps; reference: Dassl .train() on the "
                                 "whole CLIP ([backbone])", fidelity="biomed_train_mode")
    optim: OptimConfig = option(OptimConfig(lr=0.0025), "optimiser and LR schedule")


@register("biomed_dpt")
class BiomedDPT(Method):
    """Learns only the text ``ctx``: the first ``n_ctx`` tokens of the dataset's clinical ``template``
    (e.g. "a MR photo of a {} in the brain.", init from its words; the rest of the template stays fixed).

    Image side: ``visual_tokens`` zero vectors (not learnable) before every vision block —
    ``visual_prompt: overwrite`` (reference code, default: they overwrite the first patch slots after CLS, the
    sequence keeps its length) or ``insert`` (paper figure: inserted after CLS, stripped before pooling).

    Loss (``tongdiedie/Biomed-prompt-learning@90c056c5`` trainers/BiomedDPT/biomeddpt_biomedclip.py):
    CE + ``l1_lambda``·mean_{c,e}|t_c − ḡ_c| + ``kl_lambda``·KL(p_teacher ‖ p_student)/(B·C), where ḡ_c is the
    normalised mean of the first ``n_prompts`` description embeddings and the teacher logits s·f·ḡ_cᵀ use the
    same zero-prompted image features f.

    ``class_token_position``: ``end`` (default; the authors' few-shot driver), ``middle`` (CoOp-style: the whole
    class name between the two context halves) or ``middle_quirk`` (the reference's "middle", whose class-name
    length is always 1: only the first token after the context moves between the halves).
    """

    family = "text"
    needs_image_tokens = True  # visual prompts need a ViT image tower
    config_class = BiomedDPTConfig
    config: BiomedDPTConfig

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        text, visual = backbone.text, backbone.visual
        self.template = self.config.template or self.templates()[0]
        prefix, suffix = split_template(self.template)
        init = (self.config.ctx_init or prefix).strip()
        n_ctx = self.config.n_ctx
        position = self.config.class_token_position
        if position not in CLASS_POSITIONS:
            raise ValueError(f"biomed_dpt.class_token_position must be one of {CLASS_POSITIONS}, got '{position}'")
        self.class_position = position
        if prefix:
            if prefix.split()[: len(init.split())] != init.split():
                raise ValueError(f"ctx_init '{init}' must be the leading words of the template '{self.template}'")
            learn = words_within_tokens(text, init, None if n_ctx is None else int(n_ctx))
            self.prompt_learner = TextPromptLearner(
                text, self.classnames, ctx_init=prefix, learn_words=learn,
                position="middle" if position == "middle" else "end", suffix=suffix,
            )
        else:  # template starts with the class name: random context in front of it
            self.prompt_learner = TextPromptLearner(
                text, self.classnames, n_ctx=int(n_ctx or 4), position="end", suffix=suffix
            )
        mode = self.config.visual_prompt
        if mode not in ("overwrite", "insert"):
            raise ValueError(f"biomed_dpt.visual_prompt must be overwrite or insert, got '{mode}'")
        self.layout = VisualPromptLayout(position="prefix", before_norm=False, mode=mode)
        n_vis = int(self.config.visual_tokens)
        zeros = torch.zeros(n_vis, visual.width, device=backbone.logit_scale.device)
        self.register_buffer("zero_prompt", zeros, persistent=False)
        self.bank = DescriptionBank(self, int(self.config.n_prompts))
        self._refresh_teacher()

    def _refresh_teacher(self) -> None:
        mean = DescriptionBank.mean(self.bank.features(self.classnames))
        self.register_buffer("description_mean", mean, persistent=False)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.prompt_learner.set_classnames(self.classnames)
        self._refresh_teacher()

    # -- features -------------------------------------------------------------------------------------
    def _quirk_order(self, length: int) -> list[int]:
        """Token order of the reference's "middle": [CLS, ctx[:h], first suffix token, ctx[h:], rest]."""
        p, n = self.backbone.text.num_prefix_tokens, self.prompt_learner.n_ctx
        h = n // 2
        order = list(range(length))
        order[p + h : p + n + 1] = [p + n, *range(p + h, p + n)]
        return order

    def text_features(self) -> Tensor:
        learner = self.prompt_learner
        if self.class_position != "middle_quirk":
            return learner()
        embeds = learner.splice(learner.context())
        embeds = embeds[:, self._quirk_order(embeds.shape[1])]
        return self.backbone.text.encode_embeds(embeds, learner.token_ids)

    def image_features(self, images: Tensor) -> Tensor:
        """Zero prompts enter after embedding and again before every block (the reference writes them before
        block 0 twice, which changes nothing)."""
        layers = [self.zero_prompt] * len(self.backbone.visual.blocks)
        return encode_image_with_prompts(self.backbone.visual, images, layers, self.layout)

    # -- interface ----------------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.image_features(images), self.text_features())

    def training_loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        image_features = self.image_features(images)
        text_features = self.text_features()
        logits = self.logits(image_features, text_features)
        with torch.no_grad():
            teacher_logits = self.logits(image_features, self.description_mean)
        ce = F.cross_entropy(logits, labels)
        l1 = F.l1_loss(F.normalize(text_features, dim=-1), self.description_mean)
        kl = teacher_kl(logits, teacher_logits)
        loss = ce + float(self.config.l1_lambda) * l1 + float(self.config.kl_lambda) * kl
        return {"loss": loss, "logits": logits, "ce": ce, "l1": l1, "kl": kl}
