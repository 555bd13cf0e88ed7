"""VPT-deep (Jia et al., ECCV 2022): fresh learnable tokens before every block up to ``depth``.

Layer 0's tokens are inserted after the embedding stage; before block i (1 ≤ i < depth) the prompt slots are
replaced by layer i's own tokens, so the previous layer's prompt outputs are discarded (KMnP/vpt and the MaPLe
repo's ``VPT`` trainer agree on this). Trainable parameters: ``n_tokens · D · depth``.
Conventions and keys as in :mod:`promptbench.methods.vpt_shallow`.
"""

from __future__ import annotations

from promptbench.methods.registry import register
from promptbench.methods.vpt_shallow import VisualPromptTuning


@register("vpt_deep")
class VPTDeep(VisualPromptTuning):
    """VPT-deep; ``depth: null`` = every block (12 on ViT-B/16, as the MaPLe-repo VPT config)."""

    default_depth = None
