"""Helpers shared by the visual prompt and feature-adapter methods.

- :class:`FrozenTextClassifier`: base class whose classifier is the frozen text features of the dataset's single
  template (recomputed in ``set_classnames``); subclasses provide ``image_features``.
- :func:`extract_features`: the one place where prepare-time image features are computed (a feature cache can
  hook in here).
- :func:`class_rows` / :func:`merge_seen`: map an evaluation class list onto the classes a head was fitted on;
  classes never seen in training fall back to the zero-shot text classifier.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from promptbench.backbones import Backbone
from promptbench.methods.base import Method, frozen_image_features


class FrozenTextClassifier(Method):
    """Visual-side methods: cosine logits of ``image_features(images)`` against frozen template text features.

    ``text_weights`` (C, E) are the dataset template's class embeddings for the current class list;
    ``train_text_weights`` keeps those of the training classes (the classes heads and caches are fitted on).
    """

    def __init__(self, backbone: Backbone, classnames: Sequence[str], cfg: Any, dataset: Any):
        super().__init__(backbone, classnames, cfg, dataset)
        self.train_classnames = list(self.classnames)
        self.set_classnames(classnames)
        self.register_buffer("train_text_weights", self.text_weights.clone(), persistent=False)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self.register_buffer("text_weights", self.class_text_features(self.templates()), persistent=False)
        self.rows = class_rows(self.train_classnames, self.classnames)

    def image_features(self, images: Tensor) -> Tensor:
        """Image features before the classifier (B, E)."""
        raise NotImplementedError

    def zeroshot_logits(self, image_features: Tensor) -> Tensor:
        return self.logits(image_features, self.text_weights)

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.image_features(images), self.text_weights)


def class_rows(train_classnames: Sequence[str], classnames: Sequence[str]) -> Tensor:
    """Index of each class of ``classnames`` in ``train_classnames`` (-1 when the class was never trained)."""
    lookup = {name: i for i, name in enumerate(train_classnames)}
    return torch.tensor([lookup.get(name, -1) for name in classnames], dtype=torch.long)


def merge_seen(seen_logits: Tensor, fallback_logits: Tensor, rows: Tensor) -> Tensor:
    """Logits for the current classes: learned column where the class was trained, fallback column elsewhere.

    ``seen_logits`` (B, C_train), ``fallback_logits`` (B, C), ``rows`` (C,) from :func:`class_rows`.
    """
    rows = rows.to(seen_logits.device)
    if len(rows) == seen_logits.shape[1] and bool((rows == torch.arange(len(rows), device=rows.device)).all()):
        return seen_logits
    picked = seen_logits[:, rows.clamp(min=0)]
    return torch.where((rows >= 0).unsqueeze(0), picked, fallback_logits)


@torch.no_grad()
def extract_features(
    backbone: Backbone, loader: Iterable[dict[str, Tensor]], *, passes: int = 1, normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """Frozen image features (N, E) and labels (N,) of every sample in ``loader``, sorted by sample index.

    With ``passes > 1`` the loader is iterated several times (fresh random augmentations each time) and each
    sample's features are averaged over the passes before normalisation (Tip-Adapter's ``augment_epoch``).
    """
    device = backbone.logit_scale.device
    total: Tensor | None = None
    labels: Tensor | None = None
    order: Tensor | None = None
    for _ in range(max(1, int(passes))):
        feats, ys, idx = [], [], []
        for batch in loader:
            feats.append(frozen_image_features(backbone, batch["image"].to(device)).float())
            ys.append(batch["label"].to(device))
            idx.append(torch.as_tensor(batch["index"], device=device))
        if not feats:
            break
        f, y, i = torch.cat(feats), torch.cat(ys), torch.cat(idx)
        sort = torch.argsort(i)
        f, y, i = f[sort], y[sort], i[sort]
        if total is None:
            total, labels, order = f, y, i
        else:
            if not torch.equal(order, i):
                raise RuntimeError("feature passes saw different samples; cannot average augmentations")
            total = total + f
    if total is None:
        dim = backbone.embed_dim
        return torch.zeros(0, dim, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return (F.normalize(total, dim=-1) if normalize else total / max(1, int(passes))), labels


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean()) if len(labels) else 0.0
