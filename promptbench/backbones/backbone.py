"""A frozen CLIP-style backbone: the loaded model plus tower adapters and preprocessing facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from promptbench.backbones.sources import LoadedModel
from promptbench.backbones.towers import TextTower, VisionTower, text_tower_for, vision_tower_for
from promptbench.backbones.weights import weights_hash

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"


@dataclass
class BackboneInfo:
    name: str
    source: str
    weights_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backbone(nn.Module):
    """Frozen CLIP-style model. It stays in eval mode whatever ``train()`` is called with."""

    def __init__(self, loaded: LoadedModel, info: BackboneInfo, context_length: int | None = None):
        super().__init__()
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.info = info
        self._weights_path = loaded.weights_path
        self._loaded_sha256 = getattr(loaded, "weights_sha256", None)
        self.model.requires_grad_(False)
        self.model.eval()
        self.visual: VisionTower = vision_tower_for(self.model)
        self.text: TextTower = text_tower_for(self.model, self.tokenizer, context_length)
        self.preprocessing = _preprocessing(loaded.preprocess, self.model)
        super().train(False)

    def train(self, mode: bool = True) -> Backbone:  # noqa: D102 - frozen towers never leave eval
        super().train(False)
        return self

    @property
    def logit_scale(self) -> Tensor:
        """The learned temperature's exponent (``exp()`` gives the multiplier)."""
        return self.model.logit_scale

    @cached_property
    def embed_dim(self) -> int:
        """Joint embedding width (measured once from the text tower's output)."""
        with torch.no_grad():
            return int(self.text.encode(self.text.tokenize(["a"])).shape[-1])

    @cached_property
    def weights_sha256(self) -> str | None:
        if self._loaded_sha256 is not None:  # hashed when loaded: a file replaced later does not change it
            return self._loaded_sha256
        return weights_hash(Path(self._weights_path)) if self._weights_path else None

    def encode_image(self, images: Tensor) -> Tensor:
        return self.visual.encode(images)

    def encode_text(self, ids: Tensor) -> Tensor:
        return self.text.encode(ids)


def _preprocessing(cfg: dict[str, Any], model: nn.Module) -> Preprocessing:
    size = cfg.get("image_size") or getattr(model.visual, "image_size", 224)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return Preprocessing(
        image_size=int(size),
        mean=tuple(cfg.get("mean", OPENAI_MEAN)),
        std=tuple(cfg.get("std", OPENAI_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
    )
