"""MaPLe (Khattak et al., CVPR 2023): deep text prompts coupled to deep visual prompts by linear maps."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from promptbench.methods.base import Method
from promptbench.methods.config import MethodConfig, OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.prompts import TextPromptLearner, VisualPromptLayout, encode_image_with_prompts
from promptbench.prompts.deep import encode_text_deep

log = logging.getLogger(__name__)
_CLAMPED: set[tuple[int, int]] = set()  # (depth, layers) already warned about in this process (one line a sweep)

#: CLIP prompt-learning repos: visual prompts appended after the patches, before the pre-norm (ln_pre)
MAPLE_LAYOUT = VisualPromptLayout(position="end", before_norm=True, mode="insert")


@dataclass
class MaPLeConfig(MethodConfig):
    """MaPLe (Khattak et al., CVPR 2023), official defaults (muzairkhattak/multimodal-prompt-learning@69bce21a
    configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml): 2 context tokens ("a photo" of "a photo of a"
    learnable, "of a" fixed), prompt depth 9, SGD lr 0.0035, batch 4, 5 epochs. The official config also adds a
    random flip (method.augment.flip=true for parity) and uses fp16 (promptbench trains fp32)."""

    display_name: str | None = display_name("MaPLe")
    epochs: int = option(5, "training epochs")
    batch_size: int = option(4, "training batch size")
    ctx_init: str | None = option("a photo of a", "init words of the text context")
    learn_words: int | None = option(2, "leading init words that are learnable (MaPLe N_CTX 2)")
    n_ctx: int | None = option(2, "context tokens when ctx_init is empty (random N(0, 0.02) init)")
    depth: int = option(9, "J: prompts in text/vision layers 0..J-1 (clamped to the towers' layers)")
    optim: OptimConfig = option(OptimConfig(lr=0.0035), "optimiser and LR schedule")


@register("maple")
class MaPLe(Method):
    """Learned (``muzairkhattak/multimodal-prompt-learning`` trainers/maple.py; methods_openclip.md §3.3):

    - ``prompt_learner.ctx`` (n, D_t): the first ``learn_words`` words of ``ctx_init`` ("a photo" of
      "a photo of a"; "of a" stays fixed), or n_ctx random N(0, 0.02) tokens without an init;
    - ``deep_text`` (J−1, n, D_t), N(0, 0.02): replace the context slots before text blocks 1..J−1;
    - ``proj`` = Linear(D_t → D_v) and ``deep_proj[k]`` = Linear(D_t → D_v), k < J−1 (copies of one
      initialisation, as the reference's ``_get_clones``): the visual prompts of layer 0 and of layers 1..J−1 are
      these maps of the text prompts; no free visual parameters.

    Visual prompts are appended after the patch tokens before the pre-norm and replaced before blocks 1..J−1.
    A ``depth`` beyond the shallower tower's layer count is clamped to it (with a warning).
    Parameters: n·D_t + J·(D_t·D_v + D_v) + (J−1)·n·D_t.
    """

    family = "text"
    needs_image_tokens = True  # visual prompts need a ViT image tower
    config_class = MaPLeConfig
    config: MaPLeConfig

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        text, visual = backbone.text, backbone.visual
        depth, layers = int(self.config.depth), min(len(text.blocks), len(visual.blocks))
        if depth < 1:
            raise ValueError(f"maple.depth must be >= 1, got {depth}")
        if depth > layers:  # e.g. the paper's 9 on a 4-layer test/demo tower: prompt every layer there is
            if (depth, layers) not in _CLAMPED:
                _CLAMPED.add((depth, layers))
                log.warning("maple.depth %d exceeds the towers' %d layers; using depth %d", depth, layers, layers)
            depth = layers
        self.depth = depth
        init = self.config.ctx_init or ""
        self.prompt_learner = TextPromptLearner(
            text,
            self.classnames,
            n_ctx=self.config.n_ctx,
            ctx_init=init,
            learn_words=self.config.learn_words if init else None,
        )
        n, device = self.prompt_learner.n_ctx, backbone.logit_scale.device
        self.proj = nn.Linear(text.width, visual.width).to(device)
        self.deep_text = nn.Parameter(torch.empty(depth - 1, n, text.width, device=device).normal_(std=0.02))
        template = nn.Linear(text.width, visual.width).to(device)
        self.deep_proj = nn.ModuleList(copy.deepcopy(template) for _ in range(depth - 1))

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.prompt_learner.set_classnames(self.classnames)

    def visual_prompts(self) -> list[Tensor]:
        """Per-layer visual prompts (J tensors of (n, D_v)), all coupled to the text prompts."""
        return [self.proj(self.prompt_learner.ctx)] + [f(p) for f, p in zip(self.deep_proj, self.deep_text)]

    def text_features(self) -> Tensor:
        learner = self.prompt_learner
        embeds = learner.splice(learner.context())
        return encode_text_deep(self.backbone.text, embeds, learner.token_ids, learner.ctx_positions,
                                list(self.deep_text))

    def image_features(self, images: Tensor) -> Tensor:
        return encode_image_with_prompts(self.backbone.visual, images, self.visual_prompts(), MAPLE_LAYOUT)

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.image_features(images), self.text_features())
