"""Lightning DataModule for the few-shot, base-to-novel and full-data protocols."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
from torch.utils.data import DataLoader

from promptbench.core.rng import loader_generator
from promptbench.data.datasets import EpochSampler, RecordDataset
from promptbench.data.fewshot import (
    SAMPLERS,
    base_novel,
    draw_subsets,
    few_shot_manifest,
    manifest_hash,
    write_manifest,
)
from promptbench.data.readers import cfg_get, read_dataset
from promptbench.data.realistic import realistic_summary, sample_realistic
from promptbench.data.records import DatasetSplits, Record
from promptbench.data.subsets import load_subset, resolve_subset_file
from promptbench.data.transforms import build_eval_transform, build_train_transform

__all__ = ["PromptDataModule", "PROTOCOLS"]

PROTOCOLS = ("few_shot", "base_to_novel", "full", "realistic")
#: decoded training images kept in memory per process (MiB of pixels): few-shot sets fit entirely
KEEP_DECODED_MB = 1024.0


def _index_of(records: Sequence[Record]) -> dict[str, int]:
    """key -> position in the full split list (first occurrence)."""
    index: dict[str, int] = {}
    for i, r in enumerate(records):
        index.setdefault(r.key, i)
    return index


@dataclass
class _State:
    splits: DatasetSplits
    classnames: list[str]
    manifest: dict[str, Any]
    manifest_hash: str
    train_records: list[Record]
    val_records: list[Record]
    eval_records: dict[str, list[Record]]
    eval_names: dict[str, list[str]]
    train_set: RecordDataset
    val_set: RecordDataset
    test_sets: dict[str, RecordDataset]


class PromptDataModule(lightning.LightningDataModule):
    """Reads a dataset config, samples the protocol's subsets and serves dict batches.

    Batches: ``{"image": FloatTensor[B,3,H,W], "label": LongTensor[B], "index": LongTensor[B]}`` where
    ``index`` is the record's position in its full split list (``splits.train``/``val``/``test``).

    * ``few_shot``: K-shot train over all classes, min(K, 4)-shot val; test on the whole test split.
    * ``base_to_novel``: K-shot train and val on the base classes (first ceil(n/2) labels); test sets
      ``test_base`` and ``test_novel`` (novel relabelled from 0).
    * ``full``: the whole train and val splits.
    * ``realistic``: K x C train images drawn from the train split's class prior, no val (``data/realistic.py``).

    Properties such as :attr:`classnames` or :attr:`manifest` run :meth:`setup` on first access; ``setup``
    reads the data once per instance.
    """

    def __init__(
        self,
        dataset_cfg: Any,
        *,
        protocol: str,
        shots: int,
        seed: int,
        batch_size: int,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bicubic",
        train_scale: Sequence[float] = (0.08, 1.0),
        train_flip: bool = False,
        drop_last: bool = True,
        manifest_path: str | Path | None = None,
        sampler: str = "dassl",
        subset_file: str | Path | None = None,
        subset_seed: int | None = None,
    ) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.dataset_cfg = dataset_cfg
        self.dataset_name = str(cfg_get(dataset_cfg, "name", cfg_get(dataset_cfg, "folder", "dataset")))
        self.protocol = protocol
        self.shots = int(shots)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.drop_last = bool(drop_last)
        self.manifest_path = Path(manifest_path) if manifest_path is not None else None
        if sampler not in SAMPLERS:
            raise ValueError(f"protocol.sampler={sampler!r} is not one of {SAMPLERS}")
        self.sampler = str(sampler)
        self.subset_file = subset_file if subset_file not in (None, "") else None
        self.subset_seed = self.seed if subset_seed is None else int(subset_seed)
        self.train_transform = build_train_transform(
            image_size, mean, std, scale=tuple(train_scale), flip=train_flip, interpolation=interpolation
        )
        self.eval_transform = build_eval_transform(image_size, mean, std, interpolation=interpolation)
        self._state: _State | None = None
        self._epoch = 0
        self._train_sampler: EpochSampler | None = None

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        """Read the data (once), sample the protocol's subsets, build the manifest and datasets."""
        if self._state is not None:
            return
        splits = read_dataset(self.dataset_cfg)
        all_names = list(splits.classnames)
        name, shots, seed = self.dataset_name, self.shots, self.seed

        train, val, source = self._subsets(splits)
        if self.protocol == "base_to_novel":  # after the draw over all classes, as the reference does
            train, classnames = base_novel(train, all_names, "base")
            val, _ = base_novel(val, all_names, "base")
            base_test, base_names = base_novel(splits.test, all_names, "base")
            novel_test, novel_names = base_novel(splits.test, all_names, "novel")
            eval_records = {"test_base": base_test, "test_novel": novel_test}
            eval_names = {"test_base": base_names, "test_novel": novel_names}
        else:
            classnames = all_names
            eval_records = {"test": list(splits.test)}
            eval_names = {"test": all_names}

        manifest = few_shot_manifest(
            train,
            val,
            dataset=name,
            shots=0 if self.protocol == "full" else shots,
            seed=seed,
            split_hash=splits.split_hash,
            protocol=self.protocol,
            classnames=classnames,
            source=source,
        )
        if self.protocol == "realistic":
            manifest.update(val_shots=0, short_classes={}, realistic=realistic_summary(
                train, list(splits.train), classnames, shots))
        if self.manifest_path is not None:
            write_manifest(manifest, self.manifest_path)

        index = {s: _index_of(splits.split(s)) for s in ("train", "val", "test")}

        def dataset(records: list[Record], split: str, transform: Any, **kw: Any) -> RecordDataset:
            return RecordDataset(splits, records, [index[split][r.key] for r in records], transform, **kw)

        self._state = _State(
            splits=splits,
            classnames=list(classnames),
            manifest=manifest,
            manifest_hash=manifest_hash(manifest),
            train_records=train,
            val_records=val,
            eval_records=eval_records,
            eval_names=eval_names,
            train_set=dataset(train, "train", self.train_transform, seed=seed, epoch=self._epoch,
                              keep_decoded_mb=KEEP_DECODED_MB),
            val_set=dataset(val, "val", self.eval_transform),
            test_sets={k: dataset(r, "test", self.eval_transform) for k, r in eval_records.items()},
        )

    def _subsets(self, splits: DatasetSplits) -> tuple[list[Record], list[Record], dict[str, Any] | None]:
        """(train, val, source) over all classes: the whole splits, a subset file, or the sampler's draw."""
        if self.protocol == "full":
            return list(splits.train), list(splits.val), None
        if self.protocol == "realistic":  # class-prior support, no validation set (data/realistic.py)
            train = sample_realistic(list(splits.train), self.shots, len(splits.classnames),
                                     dataset=self.dataset_name, seed=self.subset_seed)
            return train, [], None
        if self.subset_file is not None:

            path = resolve_subset_file(self.subset_file, self.dataset_name, self.shots, self.subset_seed)
            folder = str(cfg_get(self.dataset_cfg, "folder", self.dataset_name))
            return load_subset(path, splits, folder=folder, shots=self.shots, seed=self.subset_seed)
        train, val = draw_subsets(splits.train, splits.val, sampler=self.sampler, shots=self.shots,
                                  seed=self.subset_seed, dataset=self.dataset_name)
        return train, val, {"sampler": self.sampler, "seed": self.subset_seed}

    @property
    def state(self) -> _State:
        """Everything :meth:`setup` produced (runs ``setup`` on first access)."""
        if self._state is None:
            self.setup()
        assert self._state is not None
        return self._state

    @property
    def classnames(self) -> list[str]:
        """Class names of the training label space (base classes for ``base_to_novel``)."""
        return self.state.classnames

    @property
    def splits(self) -> DatasetSplits:
        return self.state.splits

    @property
    def manifest(self) -> dict[str, Any]:
        return self.state.manifest

    @property
    def manifest_hash(self) -> str:
        return self.state.manifest_hash

    @property
    def split_hash(self) -> str:
        return self.state.splits.split_hash

    @property
    def train_records(self) -> list[Record]:
        return self.state.train_records

    @property
    def val_records(self) -> list[Record]:
        return self.state.val_records

    @property
    def eval_records(self) -> dict[str, list[Record]]:
        return self.state.eval_records

    # ------------------------------------------------------------------ public helpers

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def eval_sets(self) -> dict[str, list[str]]:
        """Evaluation set name -> class names of its label space, in test-loader order."""
        self.setup()
        return {k: list(v) for k, v in self.state.eval_names.items()}

    def set_epoch(self, epoch: int) -> None:
        """Select the deterministic train views (and shuffle order) of ``epoch``."""
        self._epoch = int(epoch)
        if self._state is not None:
            self._state.train_set.epoch = self._epoch
        if self._train_sampler is not None:
            self._train_sampler.set_epoch(self._epoch)

    # ------------------------------------------------------------------ loaders

    def _loader(self, dataset: RecordDataset, batch_size: int, sampler: EpochSampler | None = None,
                drop_last: bool = False, name: str = "eval") -> DataLoader:
        # its own generator, seeded by the run: each iter() draws the workers' base seed from it, not from the
        # global RNG (which the method's dropout and init use), so how often loaders start changes no other draw
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=loader_generator(self.seed, name),
        )

    def train_dataloader(self) -> DataLoader:
        train_set = self.state.train_set
        self._train_sampler = EpochSampler(len(train_set), self.seed, shuffle=True, epoch=self._epoch)
        # Dassl (data_manager.py): drop the incomplete last batch when the set holds at least one full batch
        drop = self.drop_last and len(train_set) >= self.batch_size
        return self._loader(train_set, self.batch_size, self._train_sampler, drop_last=drop, name="train")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.state.val_set, self.eval_batch_size, name="val")

    def test_dataloader(self) -> list[DataLoader]:
        state = self.state
        return [self._loader(state.test_sets[k], self.eval_batch_size, name=k) for k in state.eval_names]
