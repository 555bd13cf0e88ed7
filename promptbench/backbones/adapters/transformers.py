"""transformers ``CLIPModel`` / ``SiglipModel`` towers (PubMedCLIP, MedSigLIP, UniMed-CLIP exports, ...).

The loader (:mod:`promptbench.backbones.loaders.transformers`) wraps a loaded model in :class:`HFDualEncoder`:
``visual`` / ``text`` are small modules holding the library's vision/text model and its projection, whose forward
is the stock ``get_image_features`` / ``get_text_features``; the adapters below split those forwards into the
tower interface, always through the library's own modules (encoder layers are called by the library's encoder,
so layer hooks apply). Nothing here imports transformers: the wrappers are plain ``nn.Module`` containers.

Choices (documented in docs/ARCHITECTURE.md):

* CLIP vision pools the class token and applies ``post_layernorm`` to it; ``pool_tokens`` reduces the
  ``post_layernorm``-ed tokens (the order open_clip uses for the same OpenAI weights; equal for the class token).
* SigLIP vision has no class token (``num_prefix_tokens`` 0) and no pre-norm; it pools with an attention head
  (MAP: a learned probe attends over all tokens, then LayerNorm + MLP residual). ``pool_tokens`` replaces the
  probe's attention weights by the given reduction: ``reduce(out_proj(v_proj(tokens)))`` then the head's MLP
  residual. For a convex linear reduction (a mean, a token selection) that is exactly the MAP head attending with
  those weights; with the probe's own weights (one head) it is the stock pooling.
* CLIP text pools at the EOS token exactly as ``CLIPTextModel`` does (first ``eos_token_id``, or the legacy argmax
  when ``eos_token_id == 2``); causal attention lets ``encode_embeds`` drop every position after the last pooled
  one. SigLIP text is bidirectional without a padding mask and pools the last position (its ``head``): ids are
  padded to the full context length and nothing is trimmed.
* SigLIP's ``logit_bias`` is kept on the model (``HFDualEncoder.logit_bias``) but not added to class logits: a
  constant added to every logit changes neither softmax, cross-entropy nor argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.backbones.projections import Projection
from promptbench.backbones.towers import TextTower, VisionTower, register_tower

# -- the loaded model -----------------------------------------------------------------------------------------------


class HFVision(nn.Module):
    """A transformers vision model and its projection; ``forward`` is the stock ``get_image_features``."""

    def __init__(self, vision_model: nn.Module, projection: nn.Module | None = None):
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection
        self.image_size = int(vision_model.config.image_size)

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.vision_model(pixel_values=images).pooler_output
        return self.projection(pooled) if self.projection is not None else pooled


class HFText(nn.Module):
    """A transformers text model and its projection; ``forward`` is the stock ``get_text_features``."""

    def __init__(self, text_model: nn.Module, projection: nn.Module | None = None):
        super().__init__()
        self.text_model = text_model
        self.projection = projection

    def forward(self, ids: Tensor) -> Tensor:
        pooled = self.text_model(input_ids=ids).pooler_output
        return self.projection(pooled) if self.projection is not None else pooled


class CLIPVision(HFVision):
    """``CLIPModel.vision_model`` + ``visual_projection``."""


class SiglipVision(HFVision):
    """``SiglipModel.vision_model`` (its attention-pooling head is the projection)."""


class CLIPText(HFText):
    """``CLIPModel.text_model`` + ``text_projection``."""


class SiglipText(HFText):
    """``SiglipModel.text_model`` (its ``head`` is the projection)."""


class HFDualEncoder(nn.Module):
    """``visual``, ``text``, ``logit_scale`` (and SigLIP's ``logit_bias``) over a transformers dual encoder.

    The parameters are the library model's own (shared, not copied); ``stock`` is that model, kept outside the
    module tree so ``state_dict`` holds each tensor once."""

    def __init__(self, model: nn.Module):
        super().__init__()
        kind = type(model).__name__
        if kind == "CLIPModel":
            self.visual: HFVision = CLIPVision(model.vision_model, model.visual_projection)
            self.text: HFText = CLIPText(model.text_model, model.text_projection)
        elif kind == "SiglipModel":
            self.visual = SiglipVision(model.vision_model)
            self.text = SiglipText(model.text_model)
        else:
            raise NotImplementedError(f"no promptbench wrapper for transformers {kind} (CLIPModel, SiglipModel)")
        self.logit_scale = model.logit_scale
        self.logit_bias = getattr(model, "logit_bias", None)
        object.__setattr__(self, "_stock", model)

    @property
    def stock(self) -> nn.Module:
        """The transformers model itself (``get_image_features`` / ``get_text_features``)."""
        return self._stock

    def encode_image(self, images: Tensor) -> Tensor:
        """Stock image embeddings (as open_clip's ``CLIP.encode_image``; not normalised)."""
        return self.visual(images)

    def encode_text(self, ids: Tensor) -> Tensor:
        """Stock text embeddings (as open_clip's ``CLIP.encode_text``; not normalised)."""
        return self.text(ids)


class HFTokenizer:
    """open_clip-style callable over a transformers tokenizer: ``tokenizer(texts, context_length=L)`` → (B, L).

    Texts are padded to ``L`` (``padding="max_length"``, as SigLIP was trained) and truncated keeping the special
    tokens; ``count`` is the number of tokens a text occupies without them."""

    def __init__(self, tokenizer: Any, context_length: int):
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        with_special = list(tokenizer("x")["input_ids"])
        plain = list(tokenizer("x", add_special_tokens=False)["input_ids"])
        starts = [i for i in range(len(with_special) - len(plain) + 1) if with_special[i:i + len(plain)] == plain]
        #: special tokens before the text (CLIP's BOS: 1; SigLIP: 0)
        self.num_prefix_tokens = starts[0] if starts else 0

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = int(context_length or self.context_length)
        out = self.tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        return out["input_ids"].long()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count(self, text: str) -> int:
        return len(self.encode(text))


# -- shared pieces --------------------------------------------------------------------------------------------------


def hf_block_projections(tower: str, blocks: Sequence[nn.Module]) -> list[Projection]:
    """CLIP/SigLIP encoder layers: ``self_attn.{q,k,v,out}_proj`` and ``mlp.fc1`` / ``mlp.fc2`` (separate Linears)."""
    out = []
    for i, blk in enumerate(blocks):
        attn = blk.self_attn
        out += [Projection(tower, i, "q", attn.q_proj), Projection(tower, i, "k", attn.k_proj),
                Projection(tower, i, "v", attn.v_proj), Projection(tower, i, "out", attn.out_proj),
                Projection(tower, i, "fc1", blk.mlp.fc1), Projection(tower, i, "fc2", blk.mlp.fc2)]
    return out


def _identity(x: Tensor) -> Tensor:
    return x


class _HFVisionTower(VisionTower):
    def __init__(self, module: HFVision):
        self.module = module
        self.vm = module.vision_model

    def projections(self) -> list[Projection]:
        return hf_block_projections("visual", self.blocks)

    @property
    def width(self) -> int:
        return int(self.vm.config.hidden_size)

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.vm.encoder.layers

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.vm.embeddings.patch_embedding.kernel_size)

    @property
    def pos_embed(self) -> Tensor:
        return self.vm.embeddings.position_embedding.weight.unsqueeze(0)

    def embed(self, images: Tensor, *, pre_norm: bool = False) -> Tensor:
        x = self.vm.embeddings(images)
        return x if pre_norm else self.norm_pre(x)

    def run_blocks(self, x: Tensor) -> Tensor:
        return self.vm.encoder(inputs_embeds=x).last_hidden_state

    def norm_tokens(self, x: Tensor) -> Tensor:
        return self.vm.post_layernorm(x)

    def project(self, pooled: Tensor) -> Tensor:
        proj = self.module.projection
        return proj(pooled) if proj is not None else pooled

    def block_branches(self, index: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        blk = self.blocks[index]

        def attn(x: Tensor) -> Tensor:
            return x + blk.self_attn(hidden_states=blk.layer_norm1(x), attention_mask=None)[0]

        def mlp(x: Tensor) -> Tensor:
            return x + blk.mlp(blk.layer_norm2(x))

        return attn, mlp


@register_tower("vision", CLIPVision)
class HFCLIPVisionTower(_HFVisionTower):
    """transformers ``CLIPVisionModel``: class token, pre-norm, class-token pooling + ``post_layernorm``."""

    @property
    def num_prefix_tokens(self) -> int:
        return 1

    def norm_pre(self, x: Tensor) -> Tensor:
        return self.vm.pre_layrnorm(x)

    def pool(self, x: Tensor) -> Tensor:
        return self.vm.post_layernorm(x[:, 0])

    def pool_tokens(self, x: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:
        return reduce(self.vm.post_layernorm(x))


@register_tower("vision", SiglipVision)
class HFSiglipVisionTower(_HFVisionTower):
    """transformers ``SiglipVisionModel``: patch tokens only, no pre-norm, attention-pooling (MAP) head."""

    def __init__(self, module: SiglipVision):
        if not getattr(module.vision_model, "use_head", True):
            raise NotImplementedError("SigLIP vision towers without a pooling head (vision_use_head=false) have "
                                      "no image embedding")
        super().__init__(module)

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    def norm_pre(self, x: Tensor) -> Tensor:
        return _identity(x)

    def pool(self, x: Tensor) -> Tensor:
        return self.vm.head(self.vm.post_layernorm(x))

    def pool_tokens(self, x: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:
        """The MAP head with its attention weights replaced by ``reduce`` (see the module docstring)."""
        head = self.vm.head
        mha = head.attention
        e = mha.embed_dim
        bias = mha.in_proj_bias[2 * e:] if mha.in_proj_bias is not None else None
        values = F.linear(F.linear(self.vm.post_layernorm(x), mha.in_proj_weight[2 * e:], bias),
                          mha.out_proj.weight, mha.out_proj.bias)
        h = reduce(values)
        return h + head.mlp(head.layernorm(h))


class _HFTextTower(TextTower):
    def __init__(self, module: HFText, tokenizer: Any, context_length: int | None = None):
        self.module = module
        self.tm = module.text_model
        self.tokenizer = tokenizer
        full = int(self.tm.config.max_position_embeddings)
        default = getattr(tokenizer, "context_length", None) or full
        self.context_length = min(context_length or default, full)
        self.num_prefix_tokens = int(getattr(tokenizer, "num_prefix_tokens", self.num_prefix_tokens))

    def projections(self) -> list[Projection]:
        return hf_block_projections("text", self.blocks)

    @property
    def width(self) -> int:
        return int(self.tm.config.hidden_size)

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.tm.encoder.layers

    def token_embed(self, ids: Tensor) -> Tensor:
        return self.tm.embeddings.token_embedding(ids)

    def encode(self, ids: Tensor) -> Tensor:
        return self.module(ids)

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count(text)


@register_tower("text", CLIPText)
class HFCLIPTextTower(_HFTextTower):
    """transformers ``CLIPTextModel``: causal, EOS pooling, ``text_projection``."""

    def pool_index(self, ids: Tensor) -> Tensor:
        """The pooled (EOS) position of each row, as ``CLIPTextModel.forward`` picks it."""
        ids = ids.to(torch.int)
        eos = self.tm.eos_token_id
        return ids.argmax(dim=-1) if eos == 2 else (ids == eos).int().argmax(dim=-1)

    def encode_embeds(self, embeds: Tensor, ids: Tensor) -> Tensor:
        from transformers.masking_utils import create_causal_mask

        tm = self.tm
        index = self.pool_index(ids)
        if index.numel():  # causal: positions after the last pooled one change nothing
            keep = int(index.max()) + 1
            embeds, ids = embeds[..., :keep, :], ids[..., :keep]
        shape = embeds.shape
        h = tm.embeddings(inputs_embeds=embeds.reshape(-1, *shape[-2:]))
        mask = create_causal_mask(config=tm.config, inputs_embeds=h, attention_mask=None, cache=None)
        h = tm.final_layer_norm(tm.encoder(inputs_embeds=h, attention_mask=mask, is_causal=True).last_hidden_state)
        pooled = h[torch.arange(h.shape[0], device=h.device), index.reshape(-1).to(h.device)]
        proj = self.module.projection
        out = proj(pooled) if proj is not None else pooled
        return out.reshape(*shape[:-2], out.shape[-1])


@register_tower("text", SiglipText)
class HFSiglipTextTower(_HFTextTower):
    """transformers ``SiglipTextModel``: bidirectional, no padding mask, last-position pooling through ``head``."""

    num_prefix_tokens = 0

    def encode_embeds(self, embeds: Tensor, ids: Tensor) -> Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        tm = self.tm
        shape = embeds.shape
        h = tm.embeddings(inputs_embeds=embeds.reshape(-1, *shape[-2:]))
        mask = create_bidirectional_mask(config=tm.config, inputs_embeds=h, attention_mask=None)
        h = tm.final_layer_norm(tm.encoder(inputs_embeds=h, attention_mask=mask).last_hidden_state)
        out = tm.head(h[:, -1])
        return out.reshape(*shape[:-2], out.shape[-1])
