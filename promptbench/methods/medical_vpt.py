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
from typing import Any

import torch
from torch import Tensor, nn

from promptbench.backbones import Backbone
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


@register("medical_vpt")
class MedicalVPT(FrozenTextClassifier):
    """DVPT. Config: ``n_tokens``, ``prompt_std``, ``pos_std`` (null = width^-0.5), ``bottleneck``,
    ``share_every``, ``gate_init``, ``adapter`` (parallel_mlp = released code | cross_attention = paper reading),
    ``pool`` (mean = mean over CLS + prompts, code | cls = stock CLS pooling)."""

    needs_image_tokens = True  # visual prompts need a ViT image tower

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        tower = backbone.visual
        width, layers = tower.width, len(tower.blocks)
        self.n_tokens = int(cfg.get("n_tokens", 50))
        pos_std = cfg.get("pos_std")
        pos_std = width**-0.5 if pos_std is None else float(pos_std)
        self.prompt_tokens = nn.Parameter(torch.randn(self.n_tokens, width) * float(cfg.get("prompt_std", 1.0)))
        self.prompt_pos = nn.Parameter(torch.randn(self.n_tokens, width) * pos_std)
        self.share_every = int(cfg.get("share_every", 3))
        if self.share_every < 1:
            raise ValueError("medical_vpt.share_every must be >= 1")
        groups = math.ceil(layers / self.share_every)
        bottleneck, gate = int(cfg.get("bottleneck", 20)), float(cfg.get("gate_init", 0.0))
        self.adapters = nn.ModuleList(SharedBottleneck(width, bottleneck, gate) for _ in range(groups))
        self.adapter_mode = str(cfg.get("adapter", "parallel_mlp"))
        if self.adapter_mode not in ("parallel_mlp", "cross_attention"):
            raise ValueError(f"medical_vpt.adapter must be parallel_mlp or cross_attention, got '{self.adapter_mode}'")
        self.pool_mode = str(cfg.get("pool", "mean"))
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
