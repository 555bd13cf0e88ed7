"""VPT-deep (Jia et al., ECCV 2022): fresh learnable tokens before every block up to ``depth``.

Layer 0's tokens are inserted after the embedding stage; before block i (1 ≤ i < depth) the prompt slots are
replaced by layer i's own tokens, so the previous layer's prompt outputs are discarded (KMnP/vpt and the MaPLe
repo's ``VPT`` trainer agree on this). Trainable parameters: ``n_tokens · D · depth``.
Conventions and keys as in :mod:`promptbench.methods.vpt_shallow`.
"""

from __future__ import annotations

from dataclasses import dataclass

from promptbench.methods.config import OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.vpt_shallow import VisualPromptConfig, VisualPromptTuning


@dataclass
class VPTDeepConfig(VisualPromptConfig):
    """VPT-deep (Jia et al., ECCV 2022). Defaults = the MaPLe repo's VPT config (muzairkhattak/multimodal-prompt-
    learning configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml: N_CTX_VISION 8, PROMPT_DEPTH_VISION 12, SGD lr
    0.0025, 5 epochs with 1 constant warm-up epoch at 1e-5, batch 4): 12 * 8 * 768 = 73,728 parameters on ViT-B/16.
    VPT-paper layout: method.n_tokens=5 method.position=prefix method.before_norm=false method.init=uniform."""

    display_name: str | None = display_name("VPT-deep")
    epochs: int = option(5, "training epochs")
    batch_size: int = option(4, "training batch size")
    optim: OptimConfig = option(OptimConfig(lr=0.0025), "optimiser and LR schedule")


@register("vpt_deep")
class VPTDeep(VisualPromptTuning):
    """VPT-deep; ``depth: null`` = every block (12 on ViT-B/16, as the MaPLe-repo VPT config)."""

    family = "visual"
    default_depth = None
    config_class = VPTDeepConfig
    config: VPTDeepConfig
