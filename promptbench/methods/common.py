"""Helpers shared by several methods: class descriptions (LLM-style prompt ensembles)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from promptbench.data.descriptions import DescriptionsError, descriptions_path, load_descriptions

__all__ = ["DescriptionFeatures", "DescriptionsError", "description_features", "descriptions_path",
           "load_descriptions"]


@dataclass
class DescriptionFeatures:
    per_class: list[Tensor]  # C tensors of shape (M_c, E), L2-normalised
    mean_features: Tensor  # (C, E), normalised mean of the above


def description_features(method, classnames: Sequence[str]) -> DescriptionFeatures:
    """Encode every description of every class with the frozen text tower."""
    descriptions = load_descriptions(method.dataset_cfg, classnames)
    per_class = [F.normalize(method.encode_prompts(descriptions[c]), dim=-1) for c in classnames]
    mean = F.normalize(torch.stack([f.mean(0) for f in per_class]), dim=-1)
    return DescriptionFeatures(per_class, mean)
