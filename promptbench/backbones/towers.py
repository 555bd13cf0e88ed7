"""Tower adapters: one small interface over open_clip's native towers, timm trunks and HF text encoders.

Methods and the prompt machinery only talk to :class:`VisionTower` and :class:`TextTower`; which library
sits underneath is decided once, in :func:`vision_tower_for` / :func:`text_tower_for`.

Token layout is always batch-first ``(B, N, D)``. The adapters are plain objects holding references to the
open_clip modules (they own no parameters), so they never change a model's ``state_dict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer, text_global_pool
from torch import Tensor, nn

from promptbench.backbones.projections import (
    Projection,
    bert_block_projections,
    native_block_projections,
    timm_block_projections,
)


class VisionTower(ABC):
    """Image tower split into embed → blocks → pool → project."""

    module: nn.Module
    #: whether the tower is a token transformer (patch tokens, blocks); False for CNN towers (ResNet)
    has_tokens: bool = True

    def projections(self) -> list[Projection]:
        """Every block's q/k/v/out and MLP fc1/fc2 linear maps (see ``backbones.projections``)."""
        raise NotImplementedError(f"{type(self).__name__} exposes no block projections")

    @property
    @abstractmethod
    def width(self) -> int: ...

    @property
    @abstractmethod
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches (CLS and any register tokens)."""

    @property
    @abstractmethod
    def blocks(self) -> Sequence[nn.Module]: ...

    @property
    @abstractmethod
    def patch_size(self) -> tuple[int, int]: ...

    @property
    @abstractmethod
    def pos_embed(self) -> Tensor:
        """Positional embedding added to prefix + patch tokens, shape (1 or none, N, D)."""

    @abstractmethod
    def embed(self, images: Tensor, *, pre_norm: bool = False) -> Tensor:
        """Patch + prefix tokens with positions; after the pre-transformer norm unless ``pre_norm``."""

    @abstractmethod
    def norm_pre(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def run_blocks(self, x: Tensor) -> Tensor:
        """All transformer blocks through the library's own forward (so layer hooks apply)."""

    @abstractmethod
    def norm_tokens(self, x: Tensor) -> Tensor:
        """The tower's final token norm."""

    @abstractmethod
    def pool(self, x: Tensor) -> Tensor:
        """Final norm + pooling of block outputs, exactly as the stock forward does: (B, N, D) → (B, D)."""

    @abstractmethod
    def project(self, pooled: Tensor) -> Tensor:
        """Map pooled features into the joint embedding space."""

    @abstractmethod
    def pool_tokens(self, x: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:
        """Like :meth:`pool` with a custom token reduction ``(B, N, D) → (B, D)`` in place of the stock one.

        The final norm and any post-pool head run as in the stock forward, so for token-pooled towers
        ``pool_tokens(x, lambda t: t[:, 0]) == pool(x)``.
        """

    @abstractmethod
    def block_branches(self, index: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """The two residual halves of block ``index``: ``x ↦ x + attn(norm1(x))`` and ``x ↦ x + mlp(norm2(x))``.

        Composing them equals the block's own forward (no mask); methods that add a branch in parallel to
        the MLP (adapters) call them separately.
        """

    def encode(self, images: Tensor) -> Tensor:
        """The stock forward (reference for equivalence tests)."""
        return self.module(images)

    def encode_from_tokens(self, x: Tensor) -> Tensor:
        return self.project(self.pool(self.run_blocks(x)))


class NativeViTTower(VisionTower):
    """open_clip ``VisionTransformer`` (OpenAI CLIP, PubMedCLIP, custom native configs)."""

    def __init__(self, module: VisionTransformer):
        if getattr(module, "attn_pool", None) is not None:
            raise NotImplementedError("prompted forwards are not supported on attention-pooled (CoCa) towers")
        if not getattr(module.transformer, "batch_first", True):
            raise NotImplementedError("open_clip >= 3.0 (batch-first transformer blocks) is required")
        self.module = module

    def projections(self) -> list[Projection]:
        return native_block_projections("visual", self.blocks)

    @property
    def width(self) -> int:
        return self.module.class_embedding.shape[-1]

    @property
    def num_prefix_tokens(self) -> int:
        return 1

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.module.transformer.resblocks

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.module.conv1.kernel_size)

    @property
    def pos_embed(self) -> Tensor:
        return self.module.positional_embedding.unsqueeze(0)

    def embed(self, images: Tensor, *, pre_norm: bool = False) -> Tensor:
        v = self.module
        x = v.conv1(images).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        return x if pre_norm else v.ln_pre(x)

    def norm_pre(self, x: Tensor) -> Tensor:
        return self.module.ln_pre(x)

    def run_blocks(self, x: Tensor) -> Tensor:
        return self.module.transformer(x)

    def norm_tokens(self, x: Tensor) -> Tensor:
        return self.module.ln_post(x)

    def pool(self, x: Tensor) -> Tensor:
        return self.module._pool(x)[0]

    def project(self, pooled: Tensor) -> Tensor:
        proj = self.module.proj
        return pooled @ proj if proj is not None else pooled

    def pool_tokens(self, x: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:
        v = self.module
        return v.ln_post(reduce(x)) if v.final_ln_after_pool else reduce(v.ln_post(x))

    def block_branches(self, index: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        blk = self.blocks[index]
        if not hasattr(blk, "attention") or not hasattr(blk, "ln_2"):
            raise NotImplementedError(f"no residual split for block type {type(blk).__name__}")

        def attn(x: Tensor) -> Tensor:
            return x + blk.ls_1(blk.attention(q_x=blk.ln_1(x)))

        def mlp(x: Tensor) -> Tensor:
            return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

        return attn, mlp


class TimmViTTower(VisionTower):
    """open_clip ``TimmModel`` wrapping a timm ``VisionTransformer`` trunk (BiomedCLIP and friends)."""

    def __init__(self, module: TimmModel):
        trunk = module.trunk
        if not hasattr(trunk, "blocks") or not hasattr(trunk, "_pos_embed"):
            raise NotImplementedError(f"timm trunk {type(trunk).__name__} is not a ViT; no token interface")
        self.module = module
        self.trunk = trunk

    def projections(self) -> list[Projection]:
        return timm_block_projections("visual", self.blocks)

    @property
    def width(self) -> int:
        return self.trunk.embed_dim

    @property
    def num_prefix_tokens(self) -> int:
        return self.trunk.num_prefix_tokens

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.trunk.blocks

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.trunk.patch_embed.patch_size)

    @property
    def pos_embed(self) -> Tensor:
        return self.trunk.pos_embed

    def embed(self, images: Tensor, *, pre_norm: bool = False) -> Tensor:
        t = self.trunk
        x = t.patch_drop(t._pos_embed(t.patch_embed(images)))
        return x if pre_norm else t.norm_pre(x)

    def norm_pre(self, x: Tensor) -> Tensor:
        return self.trunk.norm_pre(x)

    def run_blocks(self, x: Tensor) -> Tensor:
        return self.trunk.blocks(x)

    def norm_tokens(self, x: Tensor) -> Tensor:
        return self.trunk.norm(x)

    def pool(self, x: Tensor) -> Tensor:
        return self.trunk.forward_head(self.trunk.norm(x))

    def project(self, pooled: Tensor) -> Tensor:
        return self.module.head(pooled)

    def pool_tokens(self, x: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:
        t = self.trunk
        return t.head(t.head_drop(t.fc_norm(reduce(t.norm(x)))))

    def block_branches(self, index: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        blk = self.blocks[index]
        if not all(hasattr(blk, a) for a in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2")):
            raise NotImplementedError(f"no residual split for block type {type(blk).__name__}")

        def attn(x: Tensor) -> Tensor:
            return x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))

        def mlp(x: Tensor) -> Tensor:
            return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))

        return attn, mlp


class ResNetTower(VisionTower):
    """open_clip ``ModifiedResNet`` (CLIP RN50 family, PMC-CLIP): a CNN with an attention-pool head.

    It has no patch tokens or transformer blocks (``has_tokens`` False), so only ``encode`` is available:
    text-prompt and feature-level methods work; methods declaring ``needs_image_tokens`` refuse it.
    """

    has_tokens = False

    def __init__(self, module: ModifiedResNet):
        self.module = module

    def _no_tokens(self, what: str):
        return NotImplementedError(f"{what}: the ResNet image tower has no patch tokens or transformer blocks "
                                   "(visual prompts and in-block deltas need a ViT image tower)")

    @property
    def width(self) -> int:
        return self.module.attnpool.c_proj.in_features

    @property
    def num_prefix_tokens(self) -> int:
        raise self._no_tokens("num_prefix_tokens")

    @property
    def blocks(self) -> Sequence[nn.Module]:
        raise self._no_tokens("blocks")

    @property
    def patch_size(self) -> tuple[int, int]:
        raise self._no_tokens("patch_size")

    @property
    def pos_embed(self) -> Tensor:
        raise self._no_tokens("pos_embed")

    def embed(self, images: Tensor, *, pre_norm: bool = False) -> Tensor:
        raise self._no_tokens("embed")

    def norm_pre(self, x: Tensor) -> Tensor:
        raise self._no_tokens("norm_pre")

    def run_blocks(self, x: Tensor) -> Tensor:
        raise self._no_tokens("run_blocks")

    def norm_tokens(self, x: Tensor) -> Tensor:
        raise self._no_tokens("norm_tokens")

    def pool(self, x: Tensor) -> Tensor:
        raise self._no_tokens("pool")

    def project(self, pooled: Tensor) -> Tensor:
        raise self._no_tokens("project")

    def pool_tokens(self, x: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:
        raise self._no_tokens("pool_tokens")

    def block_branches(self, index: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        raise self._no_tokens("block_branches")


def trim_padding(embeds: Tensor, ids: Tensor, pad_id: int | None) -> tuple[Tensor, Tensor]:
    """Drop the trailing positions that are padding in every row (prompts use ~10-20 of 64-256 positions).

    Exact where padding cannot influence the kept positions: causal attention, or attention masked by ``ids``;
    the text step then costs in proportion to the longest prompt rather than the context length."""
    if pad_id is None or ids.dim() != 2 or ids.shape[-1] == 0:
        return embeds, ids
    used = (ids != pad_id).any(dim=0)
    last = int(used.nonzero().max()) + 1 if bool(used.any()) else ids.shape[-1]
    if last >= ids.shape[-1]:
        return embeds, ids
    return embeds[..., :last, :], ids[..., :last]


class TextTower(ABC):
    """Text tower split into word embeddings → blocks → pool → project.

    ``encode_embeds(token_embed(ids), ids)`` equals the stock encoder on ``ids``; prompt learners replace
    rows of the word embeddings and keep ``ids`` for masks and pooling.
    """

    module: nn.Module
    tokenizer: object
    context_length: int

    #: special tokens before the text (SOT for CLIP BPE, [CLS] for BERT)
    num_prefix_tokens: int = 1

    def projections(self) -> list[Projection]:
        """Every block's q/k/v/out and MLP fc1/fc2 linear maps (see ``backbones.projections``)."""
        raise NotImplementedError(f"{type(self).__name__} exposes no block projections")

    @property
    @abstractmethod
    def width(self) -> int: ...

    @property
    @abstractmethod
    def blocks(self) -> Sequence[nn.Module]: ...

    @abstractmethod
    def token_embed(self, ids: Tensor) -> Tensor: ...

    @abstractmethod
    def encode_embeds(self, embeds: Tensor, ids: Tensor) -> Tensor: ...

    @abstractmethod
    def encode(self, ids: Tensor) -> Tensor:
        """The stock text encoder on token ids."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` occupies inside a prompt (no special tokens)."""

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(texts), context_length=self.context_length)


class NativeTextTower(TextTower):
    """open_clip's causal text transformer, flattened on ``CLIP`` or as ``TextTransformer``."""

    def __init__(self, owner: nn.Module, tokenizer, context_length: int | None = None):
        if isinstance(owner, TextTransformer) and (owner.cls_emb is not None or owner.use_pad_mask):
            raise NotImplementedError("text towers with a class token or pad mask are not supported")
        self.module = owner
        self.tokenizer = tokenizer
        self.pool_type = getattr(owner, "text_pool_type", None) or getattr(owner, "pool_type", "argmax")
        self.eos_id = getattr(owner, "text_eos_id", None) or getattr(owner, "eos_id", None)
        full = owner.positional_embedding.shape[0]
        self.context_length = min(context_length or full, full)

    def projections(self) -> list[Projection]:
        return native_block_projections("text", self.blocks)

    @property
    def width(self) -> int:
        return self.module.ln_final.weight.shape[0]

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.module.transformer.resblocks

    def token_embed(self, ids: Tensor) -> Tensor:
        return self.module.token_embedding(ids)

    def encode_embeds(self, embeds: Tensor, ids: Tensor) -> Tensor:
        m = self.module
        if self.pool_type in ("argmax", "first", "eos"):  # causal: positions after the last token change nothing
            embeds, ids = trim_padding(embeds, ids, 0)
        length = ids.shape[-1]
        cast = m.transformer.get_cast_dtype()
        x = embeds.to(cast) + m.positional_embedding[:length].to(cast)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        x = m.ln_final(m.transformer(x, attn_mask=mask))
        pooled = text_global_pool(x, ids, self.pool_type, eos_token_id=self.eos_id)
        proj = m.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj

    def encode(self, ids: Tensor) -> Tensor:
        return self.encode_embeds(self.token_embed(ids), ids)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))


class HFTextTower(TextTower):
    """open_clip ``HFTextEncoder`` (BERT family) driven through ``inputs_embeds`` — no library patching."""

    def __init__(self, module: HFTextEncoder, tokenizer, context_length: int | None = None):
        self.module = module
        self.tokenizer = tokenizer
        full = module.config.max_position_embeddings
        default = getattr(tokenizer, "context_length", None) or full
        self.context_length = min(context_length or default, full)
        self.pad_id = module.config.pad_token_id

    def projections(self) -> list[Projection]:
        return bert_block_projections("text", self.blocks)

    @property
    def width(self) -> int:
        return self.module.config.hidden_size

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.module.transformer.encoder.layer

    def token_embed(self, ids: Tensor) -> Tensor:
        return self.module.transformer.get_input_embeddings()(ids)

    def encode_embeds(self, embeds: Tensor, ids: Tensor) -> Tensor:
        m = self.module
        embeds, ids = trim_padding(embeds, ids, self.pad_id)  # masked padding changes nothing
        mask = (ids != self.pad_id).long()
        out = m.transformer(inputs_embeds=embeds, attention_mask=mask)
        return m.proj(m.pooler(out, mask))

    def encode(self, ids: Tensor) -> Tensor:
        return self.module(ids)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.tokenizer.tokenize(text))


def vision_tower_for(model: nn.Module) -> VisionTower:
    visual = model.visual
    if isinstance(visual, TimmModel):
        return TimmViTTower(visual)
    if isinstance(visual, VisionTransformer):
        return NativeViTTower(visual)
    if isinstance(visual, ModifiedResNet):
        return ResNetTower(visual)
    raise NotImplementedError(f"no adapter for image tower {type(visual).__name__}")


def text_tower_for(model: nn.Module, tokenizer, context_length: int | None = None) -> TextTower:
    text = getattr(model, "text", None)
    if isinstance(text, HFTextEncoder):
        return HFTextTower(text, tokenizer, context_length)
    if isinstance(text, TextTransformer):
        return NativeTextTower(text, tokenizer, context_length)
    if hasattr(model, "token_embedding"):
        return NativeTextTower(model, tokenizer, context_length)
    raise NotImplementedError(f"no adapter for text tower {type(text).__name__}")
