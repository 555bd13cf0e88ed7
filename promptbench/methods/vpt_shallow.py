"""VPT-shallow (Jia et al., ECCV 2022): learnable tokens entering the image tower once, frozen text classifier.

Both token conventions are config keys (see ``docs/methods_visual.md``):

- VPT paper / ``KMnP/vpt``: ``position: prefix`` (right after CLS), ``before_norm: false`` (after the
  pre-transformer norm), ``init: uniform`` with VPT's bound sqrt(6 / (3·p_h·p_w + D)), no positional embedding.
- CLIP prompt-learning repos (MaPLe/IVLP ``VPT`` trainer): ``position: end``, ``before_norm: true`` (tokens pass
  through ``ln_pre``), ``init: normal`` with std 0.02 — the default.

Tokens are always inserted (the sequence grows by ``n_tokens``) and stripped before pooling; with zero tokens the
forward is the stock ``encode_image``. Trainable parameters: ``n_tokens · D`` (D = image-tower width).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor

from promptbench.backbones import Backbone
from promptbench.methods.registry import register
from promptbench.methods.visual_common import FrozenTextClassifier
from promptbench.prompts import VisualPromptLayout, VisualPromptTokens, encode_image_with_prompts


class VisualPromptTuning(FrozenTextClassifier):
    """Shared VPT implementation. ``depth`` = how many layers get their own tokens (1 = shallow); deep
    tokens replace the prompt slots before blocks 1..depth-1 (the sequence length never changes).

    Config: ``n_tokens``, ``depth`` (null = every block), ``dropout``, ``init`` (normal | uniform | zeros),
    ``std`` (for normal), ``position`` (prefix | end), ``before_norm``.
    """

    needs_image_tokens = True  # visual prompts need a ViT image tower

    #: depth used when the config leaves it null (None = every block)
    default_depth: ClassVar[int | None] = None

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        tower = backbone.visual
        depth = cfg.get("depth")
        if depth is None:
            depth = self.default_depth or len(tower.blocks)
        self.depth = int(depth)
        self.check_depth(self.depth)
        self.prompts = VisualPromptTokens(
            tower,
            int(cfg.get("n_tokens", 8)),
            self.depth,
            init=str(cfg.get("init", "normal")),
            std=float(cfg.get("std", 0.02)),
            dropout=float(cfg.get("dropout", 0.0)),
        )
        position = str(cfg.get("position", "end"))
        if position not in ("prefix", "end"):
            raise ValueError(f"VPT position must be prefix or end, got '{position}'")
        self.layout = VisualPromptLayout(position=position, before_norm=bool(cfg.get("before_norm", True)))

    def check_depth(self, depth: int) -> None:
        """Hook for subclasses restricting the depth."""

    def image_features(self, images: Tensor) -> Tensor:
        return encode_image_with_prompts(self.backbone.visual, images, self.prompts(), self.layout)


@register("vpt_shallow")
class VPTShallow(VisualPromptTuning):
    """VPT-shallow: tokens only at the input (depth 1)."""

    default_depth = 1

    def check_depth(self, depth: int) -> None:
        if depth != 1:
            raise ValueError(f"vpt_shallow has depth 1 (got {depth}); use method=vpt_deep for deeper prompts")
