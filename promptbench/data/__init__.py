"""Data layer: dataset readers, few-shot sampling, deterministic transforms and the Lightning DataModule.

``PromptDataModule`` and the transforms are imported lazily so that readers, samplers and the status checks'
fingerprints pull in neither Lightning nor torch(vision).
"""

from typing import Any

from promptbench.data.descriptions import descriptions_path, load_descriptions
from promptbench.data.fewshot import (
    base_novel,
    few_shot_manifest,
    manifest_hash,
    num_base_classes,
    sample_few_shot,
    val_shots,
    write_manifest,
)
from promptbench.data.readers import read_dataset
from promptbench.data.records import DatasetSplits, Record, stable_hash, stable_seed

_TRANSFORMS = ("DeterministicTrainTransform", "build_eval_transform", "build_train_transform", "view_seed")

__all__ = [
    "PROTOCOLS",
    "DatasetSplits",
    "DeterministicTrainTransform",
    "PromptDataModule",
    "Record",
    "base_novel",
    "build_eval_transform",
    "build_train_transform",
    "descriptions_path",
    "few_shot_manifest",
    "load_descriptions",
    "manifest_hash",
    "num_base_classes",
    "read_dataset",
    "sample_few_shot",
    "stable_hash",
    "stable_seed",
    "val_shots",
    "view_seed",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    if name in ("PromptDataModule", "PROTOCOLS"):
        from promptbench.data import datamodule

        return getattr(datamodule, name)
    if name in _TRANSFORMS:
        from promptbench.data import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'promptbench.data' has no attribute {name!r}")
