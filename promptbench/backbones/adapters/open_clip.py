"""open_clip's tower families: native ViT and causal text transformer, timm ViT trunks (BiomedCLIP), HF BERT text
encoders, and ``ModifiedResNet`` image towers (PMC-CLIP, RN50 CLIP)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.model import CLIP
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
from promptbench.backbones.towers import TextTower, VisionTower, register_tower, trim_padding


@register_tower("vision", VisionTransformer)
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


@register_tower("vision", TimmModel)
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


@register_tower("vision", ModifiedResNet)
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


@register_tower("text", TextTransformer, CLIP)
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


@register_tower("text", HFTextEncoder)
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
