"""Helpers shared by several methods: class descriptions (LLM-style prompt ensembles)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class DescriptionsError(FileNotFoundError):
    """No usable class descriptions for a dataset."""


def descriptions_path(dataset: Any) -> Path:
    """The dataset's descriptions file: ``dataset.descriptions`` if set, else the packaged one."""
    explicit = dataset.get("descriptions")
    if explicit:
        return Path(str(explicit)).expanduser()
    return Path(str(resources.files("promptbench") / "resources" / "descriptions" / f"{dataset.name}.json"))


def load_descriptions(dataset: Any, classnames: Sequence[str]) -> dict[str, list[str]]:
    """Class name → list of sentences (BiomedCoOp's prompt-file format), validated against ``classnames``."""
    path = descriptions_path(dataset)
    hint = (
        "Write a JSON file mapping each class name to a list of sentences describing it "
        "and pass dataset.descriptions=/path/to/file.json"
    )
    if not path.is_file():
        raise DescriptionsError(f"No class descriptions for dataset '{dataset.name}' at {path}. {hint}")
    data = json.loads(path.read_text())
    lookup = {k.replace("_", " ").strip().lower(): v for k, v in data.items()}
    out: dict[str, list[str]] = {}
    for name in classnames:
        sentences = lookup.get(name.lower())
        if not sentences:
            raise DescriptionsError(f"{path} has no descriptions for class '{name}'. {hint}")
        out[name] = list(sentences)
    return out


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
