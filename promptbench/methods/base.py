"""The method interface every prompt learner implements, and the shared zero-shot classifier maths."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptbench.backbones import Backbone
from promptbench.prompts.text import clean_classname


class Method(nn.Module):
    """A classifier over a frozen backbone. Subclasses add learnable parts and a loss.

    Life cycle, driven by the Lightning module:
    ``__init__`` → ``prepare(datamodule)`` (optional closed-form fits, caches) → training steps
    (``training_loss``) if ``trains`` → evaluation via ``forward`` (``set_classnames`` between eval sets).

    ``cfg`` is the method's config node (``conf/method/<name>.yaml``); ``dataset`` the dataset node
    (templates, modality, descriptions).
    """

    method_name: ClassVar[str] = "method"
    #: whether gradient training runs at all (zero-shot and closed-form methods set False)
    trains: ClassVar[bool] = True
    #: whether evaluation needs gradients (test-time tuning)
    needs_grad_at_test: ClassVar[bool] = False
    #: whether the method's graph needs the image tower (visual prompts, test-time views). False: it only uses
    #: the frozen output of ``backbone.encode_image``, always through :meth:`encode_image`, so the engine may
    #: pass cached image features (B, E) instead of images (B, 3, H, W) to ``forward`` / ``training_loss`` /
    #: ``prepare``'s loaders (``promptbench.features``). Training epochs are then tensor loops over features.
    needs_image_tower: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.dataset_cfg = dataset
        self.classnames = [clean_classname(c) for c in classnames]
        backbone.requires_grad_(False)

    # -- interface ---------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Class logits (B, C) for the current class list."""
        raise NotImplementedError

    def training_loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``{"loss": scalar, "logits": (B, C), ...named loss terms}``. Default: cross-entropy."""
        logits = self(images)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Re-target the classifier to another class list (base → novel evaluation)."""
        self.classnames = [clean_classname(c) for c in classnames]

    def prepare(self, datamodule: Any) -> None:
        """Hook run once before training, with the datamodule set up (few-shot data available)."""

    # -- shared helpers ----------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> Tensor:
        """Frozen image features (B, E) of images (B, 3, H, W); a 2-D input already is features, returned as is."""
        return frozen_image_features(self.backbone, images)

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        self.backbone.eval()
        return self

    def learnable_parameters(self) -> Iterable[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.learnable_parameters())

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """``exp(logit_scale) · norm(img) @ norm(txt)ᵀ``; text may be (C, E) or per image (B, C, E)."""
        img = F.normalize(image_features, dim=-1)
        txt = F.normalize(text_features, dim=-1)
        scale = self.backbone.logit_scale.exp()
        if txt.dim() == 3:
            return scale * torch.einsum("be,bce->bc", img, txt)
        return scale * img @ txt.t()

    def templates(self) -> list[str]:
        single = self.dataset_cfg.get("template") or "a photo of a {}."
        return [single]

    @torch.no_grad()
    def encode_prompts(self, texts: Sequence[str]) -> Tensor:
        """Frozen text features of literal prompts (N, E)."""
        tower = self.backbone.text
        ids = tower.tokenize(list(texts)).to(self.backbone.logit_scale.device)
        return tower.encode(ids)

    @torch.no_grad()
    def class_text_features(self, templates: Sequence[str], classnames: Sequence[str] | None = None) -> Tensor:
        """Template-ensembled class embeddings (C, E): mean of normalised features, re-normalised (CLIP)."""
        names = [clean_classname(c) for c in (classnames or self.classnames)]
        per_template = [F.normalize(self.encode_prompts([t.format(n) for n in names]), dim=-1) for t in templates]
        return F.normalize(torch.stack(per_template).mean(0), dim=-1)


def frozen_image_features(backbone: Backbone, images: Tensor) -> Tensor:
    """``backbone.encode_image(images)``, or ``images`` itself when it is already a (B, E) feature batch."""
    return images if images.dim() == 2 else backbone.encode_image(images)
