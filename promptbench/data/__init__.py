"""Data layer: dataset readers, few-shot sampling, deterministic transforms and the Lightning DataModule.

``PromptDataModule`` is imported lazily so that readers and samplers do not pull in Lightning.
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
from promptbench.data.transforms import (
    DeterministicTrainTransform,
    build_eval_transform,
    build_train_transform,
    view_seed,
)

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
    raise AttributeError(f"module 'promptbench.data' has no attribute {name!r}")
