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
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from promptbench.backbones import Backbone
from promptbench.methods.config import MethodConfig, OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.visual_common import FrozenTextClassifier
from promptbench.prompts import VisualPromptLayout, VisualPromptTokens, encode_image_with_prompts


@dataclass
class VisualPromptConfig(MethodConfig):
    """Keys of VPT-shallow / VPT-deep: learnable tokens in the image tower, frozen text classifier."""

    n_tokens: int = option(8, "prompt tokens per layer (trainable parameters = n_tokens * D * depth)")
    depth: int | None = option(None, "prompted blocks; null = every block; 1 = shallow")
    dropout: float = option(0.0, "nn.Dropout on the tokens (VPT DROPOUT)")
    init: str = option("normal", "normal = N(0, std) (CLIP repos) | uniform = U(-v, v), v = sqrt(6/(3*p*p + D)) "
                                 "(VPT) | zeros")
    std: float = option(0.02, "std of the normal init")
    position: str = option("end", "end (CLIP repos) | prefix = right after CLS (VPT paper)", choices=("prefix", "end"))
    before_norm: bool = option(True, "true = tokens pass through ln_pre (CLIP repos) | false = after it (VPT paper)")


class VisualPromptTuning(FrozenTextClassifier):
    """Shared VPT implementation. ``depth`` = how many layers get their own tokens (1 = shallow); deep
    tokens replace the prompt slots before blocks 1..depth-1 (the sequence length never changes).

    Config: ``n_tokens``, ``depth`` (null = every block), ``dropout``, ``init`` (normal | uniform | zeros),
    ``std`` (for normal), ``position`` (prefix | end), ``before_norm``.
    """

    needs_image_tokens = True  # visual prompts need a ViT image tower
    config_class = VisualPromptConfig
    config: VisualPromptConfig

    #: depth used when the config leaves it null (None = every block)
    default_depth: ClassVar[int | None] = None

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        tower = backbone.visual
        c = self.config
        depth = c.depth
        if depth is None:
            depth = self.default_depth or len(tower.blocks)
        self.depth = int(depth)
        self.check_depth(self.depth)
        self.prompts = VisualPromptTokens(
            tower,
            int(c.n_tokens),
            self.depth,
            init=str(c.init),
            std=float(c.std),
            dropout=float(c.dropout),
        )
        position = str(c.position)
        if position not in ("prefix", "end"):
            raise ValueError(f"VPT position must be prefix or end, got '{position}'")
        self.layout = VisualPromptLayout(position=position, before_norm=bool(c.before_norm))

    def check_depth(self, depth: int) -> None:
        """Hook for subclasses restricting the depth."""

    def image_features(self, images: Tensor) -> Tensor:
        return encode_image_with_prompts(self.backbone.visual, images, self.prompts(), self.layout)


@dataclass
class VPTShallowConfig(VisualPromptConfig):
    """VPT-shallow (Jia et al., ECCV 2022) on the CLIP image tower. Defaults = the medical benchmark's shallow VPT
    baseline (Biomed-DPT repo, trainers/VPT/vpt_biomedclip.py + configs/trainers/VPT/vit_b16.yaml: 4 tokens,
    N(0, 0.02), SGD lr 0.002, batch 32, 100 epochs), except that tokens are INSERTED (docs/methods_visual.md).
    VPT-paper layout: method.position=prefix method.before_norm=false method.init=uniform."""

    display_name: str | None = display_name("VPT-shallow")
    n_tokens: int = option(4, "prompt tokens (trainable parameters = n_tokens * D)")
    depth: int | None = option(1, "shallow = 1 (fixed)")
    template: str | None = option(None, "the single template (one {}); null = dataset.template",
                                  fidelity="baseline_template")
    epochs: int = option(100, "training epochs")
    optim: OptimConfig = option(OptimConfig(lr=0.002), "optimiser and LR schedule")


@register("vpt_shallow")
class VPTShallow(VisualPromptTuning):
    """VPT-shallow: tokens only at the input (depth 1)."""

    family = "visual"
    default_depth = 1
    config_class = VPTShallowConfig
    config: VPTShallowConfig

    def check_depth(self, depth: int) -> None:
        if depth != 1:
            raise ValueError(f"vpt_shallow has depth 1 (got {depth}); use method=vpt_deep for deeper prompts")
