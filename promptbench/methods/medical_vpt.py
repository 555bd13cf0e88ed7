"""Medical VPT = DVPT, Dynamic Visual Prompt Tuning (He, Wang, Wang, Li, Fu; Neural Networks 185:107168, 2025;
arXiv 2307.09787), rebuilt on the tower adapters with a frozen text classifier instead of its linear head.

What the released code (``NKUhealong/DVPT: code/model.py``) does, and what this module does by default:

- ``n_tokens`` learnable prompts (init N(0, 1)) with their **own learnable positional embeddings**
  (init N(0, width^-0.5)) enter before the pre-transformer norm and stay for all layers (never replaced).
- A bottleneck ``Up(QuickGELU(Down(x)))·g`` (Down: D→r, Up: r→D, with biases; scalar gate g initialised to 0)
  runs **in parallel with each block's MLP** on the post-attention residual x:
  x ← x + MLP(LN₂(x)) + g·Up(QuickGELU(Down(x))). One module is **shared by each group of** ``share_every``
  consecutive blocks (3 in the code).
- The image feature is the **mean over the CLS token and the prompts** after the final norm, then projected.
- The code computes a prompt→token cross-attention in every block and never uses it.

The paper describes the prompts as dynamic queries that cross-attend to the bottleneck-transformed frozen
features; ``adapter: cross_attention`` implements that reading (same parameters): inside the bottleneck, the prompt
rows are replaced by softmax(h_p h_tᵀ/√r)·h_t over the non-prompt rows before ``Up``. This is our interpretation of
the abstract, flagged as such in ``docs/methods_visual.md``.

Trainable parameters: ``2·n·D + G·(D·r + r + r·D + D + 1)`` with ``G = ceil(L / share_every)``.
Prompts are placed right after the prefix (CLS/register) tokens rather than before CLS as in the code; attention is
permutation-equivariant and the prompts carry their own positional embeddings, so the output is the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.methods.config import MethodConfig, OptimConfig, display_name, option
from promptbench.methods.registry import register
from promptbench.methods.visual_common import FrozenTextClassifier


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


class SharedBottleneck(nn.Module):
    """DVPT's zero-gated bottleneck ``g·Up(act(Down(x)))``, optionally with prompt→token cross-attention."""

    def __init__(self, width: int, bottleneck: int, gate_init: float = 0.0):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.gate = nn.Parameter(torch.full((1,), float(gate_init)))
        self.scale = bottleneck**-0.5

    def forward(self, x: Tensor, prompts: slice | None = None) -> Tensor:
        h = quick_gelu(self.down(x))
        if prompts is not None and prompts.stop > prompts.start:
            q = h[:, prompts]
            kv = torch.cat([h[:, : prompts.start], h[:, prompts.stop :]], dim=1)
            mixed = torch.softmax(q @ kv.transpose(1, 2) * self.scale, dim=-1) @ kv
            h = torch.cat([h[:, : prompts.start], mixed, h[:, prompts.stop :]], dim=1)
        return self.up(h) * self.gate


@dataclass
class MedicalVPTConfig(MethodConfig):
    """Medical VPT = DVPT (He et al., Neural Networks 185:107168, 2025; arXiv 2307.09787; NKUhealong/DVPT), with a
    frozen text classifier (dataset template) in place of its linear head; defaults follow the released code:
    50 prompts with learnable positional embeddings, zero-gated D->20->D bottlenecks shared per 3 blocks, mean
    pooling over CLS + prompts, AdamW lr 5e-4, wd 1e-4, 60 epochs (5 warm-up), batch 50."""

    display_name: str | None = display_name("Medical VPT")
    n_tokens: int = option(50, "prompt tokens")
    prompt_std: float = option(1.0, "prompt init N(0, prompt_std) (code: torch.randn)")
    pos_std: float | None = option(None, "prompt positional-embedding init std; null = width^-0.5 (code)")
    bottleneck: int = option(20, "latent width r of the shared bottleneck (code: latent_dim 20)")
    share_every: int = option(3, "one bottleneck per group of consecutive blocks (code: i % 3 == 0)")
    gate_init: float = option(0.0, "scalar gate per bottleneck; 0 = start from the frozen model (code)")
    adapter: str = option("parallel_mlp", "parallel_mlp (released code) | cross_attention (paper description, our "
                                          "reading)", choices=("parallel_mlp", "cross_attention"),
                          fidelity="medical_vpt_adapter")
    pool: str = option("mean", "mean over CLS + prompts (code) | cls (stock CLS pooling)", choices=("mean", "cls"))
    epochs: int = option(60, "training epochs")
    batch_size: int = option(50, "training batch size")
    optim: OptimConfig = option(OptimConfig(name="adamw", lr=5.0e-4, weight_decay=1.0e-4, warmup_epochs=5),
                                "optimiser and LR schedule")


@register("medical_vpt")
class MedicalVPT(FrozenTextClassifier):
    """DVPT. Config: ``n_tokens``, ``prompt_std``, ``pos_std`` (null = width^-0.5), ``bottleneck``,
    ``share_every``, ``gate_init``, ``adapter`` (parallel_mlp = released code | cross_attention = paper reading),
    ``pool`` (mean = mean over CLS + prompts, code | cls = stock CLS pooling)."""

    family = "visual"
    needs_image_tokens = True  # visual prompts need a ViT image tower
    config_class = MedicalVPTConfig
    config: MedicalVPTConfig

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        tower, c = backbone.visual, self.config
        width, layers = tower.width, len(tower.blocks)
        self.n_tokens = int(c.n_tokens)
        pos_std = width**-0.5 if c.pos_std is None else float(c.pos_std)
        self.prompt_tokens = nn.Parameter(torch.randn(self.n_tokens, width) * float(c.prompt_std))
        self.prompt_pos = nn.Parameter(torch.randn(self.n_tokens, width) * pos_std)
        self.share_every = int(c.share_every)
        if self.share_every < 1:
            raise ValueError("medical_vpt.share_every must be >= 1")
        groups = math.ceil(layers / self.share_every)
        bottleneck, gate = int(c.bottleneck), float(c.gate_init)
        self.adapters = nn.ModuleList(SharedBottleneck(width, bottleneck, gate) for _ in range(groups))
        self.adapter_mode = str(c.adapter)
        if self.adapter_mode not in ("parallel_mlp", "cross_attention"):
            raise ValueError(f"medical_vpt.adapter must be parallel_mlp or cross_attention, got '{self.adapter_mode}'")
        self.pool_mode = str(c.pool)
        if self.pool_mode not in ("mean", "cls"):
            raise ValueError(f"medical_vpt.pool must be mean or cls, got '{self.pool_mode}'")

    def image_features(self, images: Tensor) -> Tensor:
        tower = self.backbone.visual
        x = tower.embed(images, pre_norm=True)
        start, n = tower.num_prefix_tokens, self.n_tokens
        prompts = (self.prompt_tokens + self.prompt_pos).to(x.dtype).expand(x.shape[0], -1, -1)
        x = tower.norm_pre(torch.cat([x[:, :start], prompts, x[:, start:]], dim=1))
        span = slice(start, start + n) if self.adapter_mode == "cross_attention" else None
        for i in range(len(tower.blocks)):
            attn_half, mlp_half = tower.block_branches(i)
            x = attn_half(x)
            x = mlp_half(x) + self.adapters[i // self.share_every](x, span)
        if self.pool_mode == "mean":
            pooled = tower.pool_tokens(x, lambda t: t[:, : start + n].mean(dim=1))
        else:
            pooled = tower.pool_tokens(x, lambda t: t[:, 0])
        return tower.project(pooled)
