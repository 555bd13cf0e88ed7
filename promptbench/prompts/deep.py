"""Deep (per-layer) prompts for either text tower, and a recorder for the hidden states entering blocks.

Deep text prompts (MaPLe / IVLP, methods_openclip.md §4.6) replace the context slots of every class prompt
with layer-specific vectors before text blocks 1..J-1; the slots are the learner's ``ctx_positions``, so the
causal mask (CLIP), the padding mask (BERT) and EOT/[CLS] pooling stay the stock ones. Everything runs through
:func:`~promptbench.prompts.hooks.edit_layers` (forward pre-hooks), never by patching open_clip or transformers.
Deep *visual* prompts need nothing new: pass one token tensor per layer to
:func:`~promptbench.prompts.visual.encode_image_with_prompts`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

from promptbench.backbones.towers import TextTower
from promptbench.prompts.hooks import LayerEdit, edit_layers


def replace_positions(hidden: Tensor, positions: Tensor, tokens: Tensor) -> Tensor:
    """Write ``tokens`` (n, D) — or (C, n, D) — at ``positions`` (C, n) of ``hidden`` (k·C, L, D).

    The leading dimension of ``hidden`` may be any multiple of the class count (CoCoOp-style B·C batches).
    """
    rows, n = positions.shape
    if hidden.shape[0] % rows:
        raise ValueError(f"hidden batch {hidden.shape[0]} is not a multiple of the {rows} prompt rows")
    reps = hidden.shape[0] // rows
    index = positions.repeat(reps, 1)[..., None].expand(-1, -1, hidden.shape[-1])
    tokens = tokens.to(hidden.dtype)
    if tokens.dim() == 2:
        tokens = tokens.expand(hidden.shape[0], n, -1)
    else:
        tokens = tokens.repeat(reps, 1, 1)
    return hidden.scatter(1, index, tokens)


def deep_text_edits(prompts: Sequence[Tensor | None], positions: Tensor, first_layer: int = 1) -> dict[int, LayerEdit]:
    """Pre-hook edits: ``prompts[k]`` replaces the context slots before text block ``first_layer + k``."""
    return {
        first_layer + k: (lambda h, t=t: replace_positions(h, positions, t))
        for k, t in enumerate(prompts)
        if t is not None
    }


def encode_text_deep(
    tower: TextTower, embeds: Tensor, token_ids: Tensor, positions: Tensor, deep: Sequence[Tensor | None]
) -> Tensor:
    """``tower.encode_embeds(embeds, ids)`` with deep prompts ``deep[k]`` replacing the context slots before
    block k+1. ``embeds`` (C, L, D) already carry the first-layer context; no deep prompts = the plain call."""
    if len(deep) >= len(tower.blocks):
        raise ValueError(f"{len(deep)} deep text prompts need more than the tower's {len(tower.blocks)} blocks")
    with edit_layers(tower.blocks, deep_text_edits(deep, positions)):
        return tower.encode_embeds(embeds, token_ids)


@contextmanager
def record_block_inputs(blocks: Sequence[nn.Module], indices: Sequence[int]) -> Iterator[Mapping[int, Tensor]]:
    """Record the hidden states each block in ``indices`` actually receives (after any pre-hook edits).

    Forward hooks see the arguments as rewritten by pre-hooks, so this shows what prompts did to a layer's
    input. The mapping holds the last call's tensor per block (detached).
    """
    seen: dict[int, Tensor] = {}
    handles = []

    def make(i: int):
        def hook(_module, args, kwargs, _output):
            value = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
            seen[i] = value.detach()

        return hook

    try:
        for i in indices:
            handles.append(blocks[i].register_forward_hook(make(i), with_kwargs=True))
        yield seen
    finally:
        for handle in handles:
            handle.remove()
