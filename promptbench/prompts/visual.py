"""Visual prompt tokens for either image tower: inserted after the prefix or at the end, per layer
replaced (deep prompts), or overwriting existing patch slots (Biomed-DPT's released code)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from promptbench.backbones.towers import VisionTower
from promptbench.prompts.hooks import edit_layers


@dataclass(frozen=True)
class VisualPromptLayout:
    """Where visual prompt tokens live in the token sequence.

    ``position``: ``"prefix"`` = right after CLS/register tokens (VPT paper), ``"end"`` = after the last patch
    (CLIP prompt-learning repos). ``before_norm``: insert before the tower's pre-transformer norm (CLIP repos)
    instead of after it (VPT paper). ``mode``: ``"insert"`` grows the sequence by n tokens that are stripped
    before pooling; ``"overwrite"`` writes the tokens over n existing patch slots.
    """

    position: Literal["prefix", "end"] = "prefix"
    before_norm: bool = False
    mode: Literal["insert", "overwrite"] = "insert"


def _batch(tokens: Tensor, batch: int, dtype: torch.dtype) -> Tensor:
    tokens = tokens.to(dtype)
    return tokens.expand(batch, -1, -1) if tokens.dim() == 2 else tokens


def _write(x: Tensor, start: int, tokens: Tensor) -> Tensor:
    tokens = _batch(tokens, x.shape[0], x.dtype)
    return torch.cat([x[:, :start], tokens, x[:, start + tokens.shape[1] :]], dim=1)


def prompt_tokens_forward(
    tower: VisionTower,
    images: Tensor,
    layer_tokens: Sequence[Tensor | None],
    layout: VisualPromptLayout = VisualPromptLayout(),
) -> tuple[Tensor, int, int]:
    """Block outputs with the prompts still in place, their start index and how many were inserted.

    ``layer_tokens[0]`` enters after embedding; ``layer_tokens[i]`` (i ≥ 1) replaces the prompt slots before
    block ``i``. Entries may be ``(n, D)`` (shared) or ``(B, n, D)`` (per image); ``None`` leaves a layer alone.
    """
    x = tower.embed(images, pre_norm=layout.before_norm)
    present = [t for t in layer_tokens if t is not None]
    n = present[0].shape[-2] if present else 0
    if layout.position == "prefix":
        start = tower.num_prefix_tokens
    else:
        start = x.shape[1] - (n if layout.mode == "overwrite" else 0)
    first = layer_tokens[0] if layer_tokens else None
    if first is not None:
        if layout.mode == "insert":
            first = _batch(first, x.shape[0], x.dtype)
            x = torch.cat([x[:, :start], first, x[:, start:]], dim=1)
        else:
            x = _write(x, start, first)
    if layout.before_norm:
        x = tower.norm_pre(x)
    edits = {i: (lambda h, t=t: _write(h, start, t)) for i, t in enumerate(layer_tokens) if i and t is not None}
    with edit_layers(tower.blocks, edits):
        x = tower.run_blocks(x)
    return x, start, (n if first is not None and layout.mode == "insert" else 0)


def encode_image_with_prompts(
    tower: VisionTower,
    images: Tensor,
    layer_tokens: Sequence[Tensor | None],
    layout: VisualPromptLayout = VisualPromptLayout(),
) -> Tensor:
    """Projected image features with visual prompts; no tokens = the stock ``encode_image``."""
    x, start, inserted = prompt_tokens_forward(tower, images, layer_tokens, layout)
    if inserted:
        x = torch.cat([x[:, :start], x[:, start + inserted :]], dim=1)
    return tower.project(tower.pool(x))


def vpt_uniform_bound(tower: VisionTower) -> float:
    """VPT's Xavier-style bound sqrt(6 / (3·p_h·p_w + D)); 0.0625 for ViT-B/16."""
    ph, pw = tower.patch_size
    return math.sqrt(6.0 / (3 * ph * pw + tower.width))


class VisualPromptTokens(nn.Module):
    """Learnable prompt tokens for ``depth`` layers: a (depth, n, D) parameter.

    ``init``: ``"uniform"`` (VPT paper), ``"normal"`` (N(0, std), CLIP repos) or ``"zeros"``.
    """

    def __init__(
        self,
        tower: VisionTower,
        n_tokens: int,
        depth: int = 1,
        *,
        init: Literal["uniform", "normal", "zeros"] = "uniform",
        std: float = 0.02,
        dropout: float = 0.0,
    ):
        super().__init__()
        if depth < 1 or depth > len(tower.blocks):
            raise ValueError(f"prompt depth must be in 1..{len(tower.blocks)}, got {depth}")
        self.tokens = nn.Parameter(torch.zeros(depth, n_tokens, tower.width))
        if init == "uniform":
            bound = vpt_uniform_bound(tower)
            nn.init.uniform_(self.tokens, -bound, bound)
        elif init == "normal":
            nn.init.normal_(self.tokens, std=std)
        elif init != "zeros":
            raise ValueError(f"unknown visual prompt init '{init}' (uniform, normal, zeros)")
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> list[Tensor]:
        return [self.dropout(t) for t in self.tokens]
