"""Learnable context spliced into class prompts, for either text tower (the CoOp machinery).

The prompt for class c is tokenised with placeholder tokens where the context goes; their word embeddings
are replaced by the learnable vectors, so token ids (EOT pooling, padding masks, the length budget) are the
stock ones. With the context set to the embeddings of the init words the output equals the stock encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from promptbench.backbones.towers import TextTower

Position = Literal["end", "middle", "front"]
PLACEHOLDER = "X"


def clean_classname(name: str) -> str:
    return name.replace("_", " ").strip()


def split_init(tower: TextTower, init: str, learn_words: int | None) -> tuple[str, str, int]:
    """Split init words into a learnable head and a fixed tail; return (head, tail, head token count).

    ``learn_words`` = how many leading words become learnable (all by default). MaPLe learns "a photo" of
    "a photo of a" and keeps "of a" fixed. Counts are in tokens, so multi-token words are handled.
    """
    words = init.split()
    k = len(words) if learn_words is None else learn_words
    if not 0 < k <= len(words):
        raise ValueError(f"cannot learn {k} words of ctx_init '{init}'")
    head, tail = " ".join(words[:k]), " ".join(words[k:])
    return head, tail, tower.count_tokens(head)


class TextPromptLearner(nn.Module):
    """Context vectors ``ctx`` (n, D) — or (C, n, D) class-specific — spliced into every class prompt.

    Args:
        tower: the text tower adapter.
        classnames: class names in label order.
        n_ctx: number of learnable tokens when there is no ``ctx_init`` (random N(0, init_std) init).
        ctx_init: init words ("a photo of a"); the context is their token embeddings and its length their
            token count (CoOp: init overrides n_ctx).
        learn_words: learn only the first k init words, keep the rest fixed (MaPLe/IVLP).
        position: where the class name sits relative to the context (CoOp's end / middle / front).
        class_specific: one context per class (CoOp's CSC).
        suffix: text after the class name ("." in CoOp).
    """

    def __init__(
        self,
        tower: TextTower,
        classnames: Sequence[str],
        *,
        n_ctx: int | None = None,
        ctx_init: str = "",
        learn_words: int | None = None,
        position: Position = "end",
        class_specific: bool = False,
        suffix: str = ".",
        init_std: float = 0.02,
    ):
        super().__init__()
        if position not in ("end", "middle", "front"):
            raise ValueError(f"class token position must be end, middle or front, got '{position}'")
        if tower.count_tokens(PLACEHOLDER) != 1:
            raise ValueError("the tokenizer splits the placeholder 'X'; cannot splice context")
        self.tower = tower
        if ctx_init.strip():
            head, tail, n_ctx = split_init(tower, ctx_init, learn_words)
        elif not n_ctx or n_ctx < 1:
            raise ValueError("TextPromptLearner needs n_ctx >= 1 or ctx_init words")
        else:
            head, tail = "", ""
        self.n_ctx, self.position, self.class_specific = n_ctx, position, class_specific
        self.fixed_tail, self.suffix = tail, suffix
        n_cls = len(classnames)
        shape = (n_cls, n_ctx, tower.width) if class_specific else (n_ctx, tower.width)
        if head:
            with torch.no_grad():
                ids = tower.tokenize([head])
                init = tower.token_embed(ids.to(self._device()))[0, tower.num_prefix_tokens :][:n_ctx]
            self.ctx = nn.Parameter(init.detach().clone().expand(shape).contiguous())
        else:
            self.ctx = nn.Parameter(torch.empty(shape).normal_(std=init_std))
        self.set_classnames(classnames)

    @classmethod
    def from_config(cls, tower: TextTower, classnames: Sequence[str], cfg) -> TextPromptLearner:
        """Build from a method config's standard keys: ``n_ctx``, ``ctx_init``, ``class_token_position``,
        ``class_specific``."""
        return cls(
            tower,
            classnames,
            n_ctx=cfg.get("n_ctx"),
            ctx_init=cfg.get("ctx_init") or "",
            position=cfg.get("class_token_position", "end"),
            class_specific=bool(cfg.get("class_specific", False)),
        )

    def _device(self) -> torch.device:
        return next(iter(self.tower.module.parameters())).device

    def prompt_text(self, name: str) -> str:
        ctx = " ".join([PLACEHOLDER] * self.n_ctx)
        half = " ".join([PLACEHOLDER] * (self.n_ctx // 2))
        rest = " ".join([PLACEHOLDER] * (self.n_ctx - self.n_ctx // 2))
        tail = f" {self.fixed_tail}" if self.fixed_tail else ""
        body = {
            "end": f"{ctx}{tail} {name}",
            "front": f"{name} {ctx}{tail}",
            "middle": f"{half} {name} {rest}{tail}",
        }[self.position]
        return f"{body}{self.suffix}".strip()

    def _ctx_positions(self, name_len: int) -> list[int]:
        p = self.tower.num_prefix_tokens
        n, half = self.n_ctx, self.n_ctx // 2
        if self.position == "end":
            return list(range(p, p + n))
        if self.position == "front":
            return list(range(p + name_len, p + name_len + n))
        return list(range(p, p + half)) + list(range(p + half + name_len, p + name_len + n))

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Rebuild the frozen token buffers for a new class list (base → novel); the context is kept."""
        names = [clean_classname(c) for c in classnames]
        if self.class_specific and len(names) != self.ctx.shape[0]:
            raise ValueError("class-specific context cannot be moved to a different number of classes")
        self.classnames = names
        texts = [self.prompt_text(n) for n in names]
        ids = self.tower.tokenize(texts)
        budget = ids.shape[-1] - 2
        for text in texts:
            if self.tower.count_tokens(text) > budget:
                raise ValueError(f"prompt '{text}' exceeds the text context length {ids.shape[-1]}")
        positions = torch.tensor([self._ctx_positions(self.tower.count_tokens(n)) for n in names])
        device = self._device()
        with torch.no_grad():
            embeds = self.tower.token_embed(ids.to(device))
        self.register_buffer("token_ids", ids.to(device), persistent=False)
        self.register_buffer("token_embeds", embeds, persistent=False)
        self.register_buffer("ctx_positions", positions.to(device), persistent=False)

    def splice(self, ctx: Tensor) -> Tensor:
        """Prompt embeddings (..., C, L, D) from context (..., C, n, D)."""
        batch = ctx.shape[:-3]
        base = self.token_embeds.expand(*batch, *self.token_embeds.shape)
        index = self.ctx_positions[..., None].expand(*batch, *self.ctx_positions.shape, ctx.shape[-1])
        return base.scatter(-2, index, ctx.to(base.dtype))

    def context(self, shift: Tensor | None = None) -> Tensor:
        """Context per class (C, n, D), or per image and class (B, C, n, D) with a (B, D) shift (CoCoOp)."""
        n_cls = self.token_ids.shape[0]
        ctx = self.ctx if self.class_specific else self.ctx.expand(n_cls, -1, -1)
        if shift is not None:
            ctx = ctx.unsqueeze(0) + shift[:, None, None, :]
        return ctx

    def forward(self, shift: Tensor | None = None) -> Tensor:
        """Class text features (C, E), or (B, C, E) when a per-image shift is given."""
        return self.encode_context(self.context(shift))

    def per_class(self, ctx: Tensor) -> Tensor:
        """A context shaped like ``ctx`` (n, D) / class-specific (C, n, D), or a batch of them (B, ...), as
        (..., C, n, D)."""
        if self.class_specific:
            return ctx
        return ctx.unsqueeze(-3).expand(*ctx.shape[:-2], self.token_ids.shape[0], *ctx.shape[-2:])

    def encode_context(self, ctx: Tensor) -> Tensor:
        """Class text features (C, E) from a context (C, n, D), or (B, C, E) from per-image contexts (B, C, n, D)."""
        embeds = self.splice(ctx)
        if embeds.dim() == 3:
            return self.tower.encode_embeds(embeds, self.token_ids)
        b, c, length, d = embeds.shape
        ids = self.token_ids.repeat(b, 1)
        return self.tower.encode_embeds(embeds.reshape(b * c, length, d), ids).reshape(b, c, -1)
