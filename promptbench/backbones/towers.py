"""Tower adapters: one small interface over every image and text tower family, and the registry that picks them.

Methods and the prompt machinery only talk to :class:`VisionTower` and :class:`TextTower`. Which adapter wraps a
loaded model's ``visual`` / ``text`` module is decided by that module's class (:func:`vision_tower_for` /
:func:`text_tower_for` walk its MRO through :data:`TOWER_ADAPTERS`); each family's adapters live in a module of
:mod:`promptbench.backbones.adapters` and register themselves with :func:`register_tower`.

Token layout is always batch-first ``(B, N, D)``. The adapters are plain objects holding references to the
library modules (they own no parameters), so they never change a model's ``state_dict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

from torch import Tensor, nn

from promptbench.backbones.projections import Projection
from promptbench.core.registry import Registry

Side = Literal["vision", "text"]


class VisionTower(ABC):
    """Image tower split into embed → blocks → pool → project."""

    side: ClassVar[Side] = "vision"
    handles: ClassVar[tuple[type, ...]] = ()

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

    side: ClassVar[Side] = "text"
    handles: ClassVar[tuple[type, ...]] = ()
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


#: adapter classes by name; each declares ``side`` and the module classes it ``handles``
TOWER_ADAPTERS: Registry[type] = Registry("tower adapter", package="promptbench.backbones.adapters",
                                          entry_point_group="promptbench.tower_adapters", check_name=False)


def register_tower(side: Side, *handles: type) -> Callable[[type], type]:
    """Class decorator: the adapter for ``side`` towers whose module is an instance of one of ``handles``."""

    def add(cls: type) -> type:
        cls.side, cls.handles = side, tuple(handles)
        TOWER_ADAPTERS.register(cls.__name__, cls)
        return cls

    return add


def adapter_for(side: Side, module: nn.Module) -> type:
    """The registered adapter class for ``module`` (the most specific class in its MRO wins)."""
    by_class = {h: cls for _, cls in TOWER_ADAPTERS.items() if cls.side == side for h in cls.handles}
    for klass in type(module).__mro__:
        if klass in by_class:
            return by_class[klass]
    raise NotImplementedError(f"no {side} tower adapter for {type(module).__name__}; register one with "
                              f"@register_tower({side!r}, {type(module).__name__}) in promptbench.backbones.adapters")


def vision_tower_for(model: nn.Module) -> VisionTower:
    """The adapter over ``model.visual``."""
    return adapter_for("vision", model.visual)(model.visual)


def text_tower_for(model: nn.Module, tokenizer: object, context_length: int | None = None) -> TextTower:
    """The adapter over ``model.text`` (or the model itself when its text tower is flattened onto it)."""
    module = getattr(model, "text", None)
    if not isinstance(module, nn.Module):
        module = model
    return adapter_for("text", module)(module, tokenizer, context_length)
