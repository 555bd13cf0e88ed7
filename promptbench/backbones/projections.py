"""A uniform view of every block's linear maps (attention q/k/v/out, MLP fc1/fc2) on all tower kinds.

open_clip's native towers pack q, k, v into ``nn.MultiheadAttention.in_proj_weight``; timm fuses them in one
``qkv`` Linear; HF BERT has separate ``query``/``key``/``value`` Linears. :class:`Projection` hides this: its
``weight`` is the (out, in) matrix of one map (a view into the packed tensor where packed), and
:func:`projection_deltas` adds method-owned output deltas ``Δ(x)`` to any set of projections *functionally*:
forward hooks that exist only inside the ``with`` block, so the shared backbone's parameters, modes and hooks
are exactly as before afterwards. Low-rank (LoRA: ``Δ(x) = s·B A drop(x)``) and spectral
(SVD: ``Δ(x) = x (U diag(δ) Vᵀ)ᵀ``) deltas are both plain callables.

For ``nn.MultiheadAttention`` (whose in-projection is not a module and cannot be hooked) the hook recomputes the
attention from the block's inputs with explicit q/k/v/out projections plus deltas and returns that output; the
library's own result is discarded (exact, at the cost of computing that attention twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Delta = Callable[[Tensor], Tensor]

ATTENTION_KINDS = ("q", "k", "v", "out")
MLP_KINDS = ("fc1", "fc2")


@dataclass(frozen=True, eq=False)
class Projection:
    """One linear map ``y = x Wᵀ + b`` inside block ``layer`` of a tower.

    ``module`` owns the parameters: an ``nn.Linear`` (``rows`` selects this map's output rows when fused) or an
    ``nn.MultiheadAttention`` (q/k/v rows of ``in_proj_weight``; ``out`` is its ``out_proj``).
    """

    tower: str  # "visual" | "text"
    layer: int
    kind: str  # q | k | v | out | fc1 | fc2
    module: nn.Module
    rows: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return f"{self.tower}.{self.layer}.{self.kind}"

    @property
    def _linear(self) -> tuple[Tensor, Tensor | None]:
        m = self.module
        if isinstance(m, nn.MultiheadAttention):
            if self.kind == "out":
                return m.out_proj.weight, m.out_proj.bias
            i = "qkv".index(self.kind)
            e = m.embed_dim
            w = m.in_proj_weight[i * e:(i + 1) * e]
            b = m.in_proj_bias[i * e:(i + 1) * e] if m.in_proj_bias is not None else None
            return w, b
        w, b = m.weight, m.bias
        if self.rows is not None:
            lo, hi = self.rows
            return w[lo:hi], (b[lo:hi] if b is not None else None)
        return w, b

    @property
    def weight(self) -> Tensor:
        """The (out_features, in_features) weight (a view; never assign into it)."""
        return self._linear[0]

    @property
    def bias(self) -> Tensor | None:
        return self._linear[1]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


# -- enumeration per block kind ------------------------------------------------------------------------------------


def native_block_projections(tower: str, blocks: Sequence[nn.Module]) -> list[Projection]:
    """open_clip ``ResidualAttentionBlock``: ``attn`` (nn.MultiheadAttention), ``mlp.c_fc``, ``mlp.c_proj``."""
    out = []
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            raise NotImplementedError(f"no projection view for attention {type(attn).__name__} in {tower} block {i}")
        out += [Projection(tower, i, k, attn) for k in ATTENTION_KINDS]
        out += [Projection(tower, i, "fc1", blk.mlp.c_fc), Projection(tower, i, "fc2", blk.mlp.c_proj)]
    return out


def timm_block_projections(tower: str, blocks: Sequence[nn.Module]) -> list[Projection]:
    """timm ViT ``Block``: fused ``attn.qkv`` (rows q|k|v), ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``."""
    out = []
    for i, blk in enumerate(blocks):
        qkv = getattr(blk.attn, "qkv", None)
        if not isinstance(qkv, nn.Linear):
            raise NotImplementedError(f"no projection view for timm attention without a fused qkv (block {i})")
        e = qkv.out_features // 3
        out += [Projection(tower, i, k, qkv, (j * e, (j + 1) * e)) for j, k in enumerate("qkv")]
        out += [Projection(tower, i, "out", blk.attn.proj),
                Projection(tower, i, "fc1", blk.mlp.fc1), Projection(tower, i, "fc2", blk.mlp.fc2)]
    return out


def bert_block_projections(tower: str, blocks: Sequence[nn.Module]) -> list[Projection]:
    """HF BERT ``BertLayer``: ``attention.self.{query,key,value}``, ``attention.output.dense``,
    ``intermediate.dense``, ``output.dense``."""
    out = []
    for i, layer in enumerate(blocks):
        sa = layer.attention.self
        out += [Projection(tower, i, "q", sa.query), Projection(tower, i, "k", sa.key),
                Projection(tower, i, "v", sa.value), Projection(tower, i, "out", layer.attention.output.dense),
                Projection(tower, i, "fc1", layer.intermediate.dense), Projection(tower, i, "fc2", layer.output.dense)]
    return out


# -- functional deltas ----------------------------------------------------------------------------------------------


def _pad_rows(delta: Tensor, rows: tuple[int, int] | None, total: int) -> Tensor:
    if rows is None:
        return delta
    lo, hi = rows
    return F.pad(delta, (lo, total - hi))


def _linear_hook(items: list[tuple[Projection, Delta]]):
    def hook(module: nn.Linear, args, output: Tensor) -> Tensor:
        x = args[0]
        for proj, delta in items:
            output = output + _pad_rows(delta(x), proj.rows, module.out_features)
        return output

    return hook


def _mha_hook(deltas: dict[str, Delta]):
    def hook(mha: nn.MultiheadAttention, args, kwargs, output):
        query, key, value = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")[len(args):]])[:3]
        out = mha_forward(mha, query, key, value, attn_mask=kwargs.get("attn_mask"),
                          key_padding_mask=kwargs.get("key_padding_mask"), deltas=deltas)
        return (out, None) if isinstance(output, tuple) else out

    return hook


def _additive_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return mask if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def mha_forward(mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor, *,
                attn_mask: Tensor | None = None, key_padding_mask: Tensor | None = None,
                deltas: Mapping[str, Delta] | None = None) -> Tensor:
    """``nn.MultiheadAttention`` (packed in-projection) written out, with optional output deltas per projection."""
    deltas = deltas or {}
    if not mha.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    e, h = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias

    def project(x: Tensor, i: int, kind: str) -> Tensor:
        y = F.linear(x, w[i * e:(i + 1) * e], b[i * e:(i + 1) * e] if b is not None else None)
        return y + deltas[kind](x) if kind in deltas else y

    q, k, v = project(query, 0, "q"), project(key, 1, "k"), project(value, 2, "v")
    bsz, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    q, k, v = (t.reshape(bsz, -1, h, e // h).transpose(1, 2) for t in (q, k, v))
    mask = _additive_mask(attn_mask, q.dtype)
    if key_padding_mask is not None:
        pad = _additive_mask(key_padding_mask, q.dtype).view(bsz, 1, 1, nk)
        mask = pad if mask is None else mask + pad
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=mha.dropout if mha.training else 0.0)
    o = o.transpose(1, 2).reshape(bsz, nq, e)
    out = F.linear(o, mha.out_proj.weight, mha.out_proj.bias)
    if "out" in deltas:
        out = out + deltas["out"](o)
    return out if mha.batch_first else out.transpose(0, 1)


@contextmanager
def projection_deltas(deltas: Mapping[Projection, Delta]) -> Iterator[None]:
    """Add ``delta(x_in)`` to each projection's output inside the block; nothing of it remains afterwards."""
    linear: dict[nn.Module, list[tuple[Projection, Delta]]] = {}
    mha: dict[nn.Module, dict[str, Delta]] = {}
    for proj, delta in deltas.items():
        if isinstance(proj.module, nn.MultiheadAttention):
            mha.setdefault(proj.module, {})[proj.kind] = delta
        else:
            linear.setdefault(proj.module, []).append((proj, delta))
    handles = [m.register_forward_hook(_linear_hook(items)) for m, items in linear.items()]
    handles += [m.register_forward_hook(_mha_hook(d), with_kwargs=True) for m, d in mha.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def select(projections: Sequence[Projection], kinds: Sequence[str] = ATTENTION_KINDS + MLP_KINDS,
           layers: Sequence[int] | None = None) -> list[Projection]:
    """The projections of the given kinds (and layers, default all)."""
    bad = set(kinds) - set(ATTENTION_KINDS + MLP_KINDS)
    if bad:
        raise ValueError(f"unknown projection kinds {sorted(bad)}; use {list(ATTENTION_KINDS + MLP_KINDS)}")
    return [p for p in projections if p.kind in kinds and (layers is None or p.layer in layers)]
