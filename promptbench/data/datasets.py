"""Torch datasets over :class:`DatasetSplits` records and the epoch-keyed train sampler."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from promptbench.data.records import DatasetSplits, Record, stable_seed
from promptbench.data.transforms import DeterministicTrainTransform

__all__ = ["RecordDataset", "EpochSampler"]


class RecordDataset(Dataset):
    """Items ``{"image", "label", "index"}``; ``index`` is the record's position in its full split list.

    ``keep_decoded_mb`` > 0 keeps decoded images in memory up to that many MiB of pixels (in each DataLoader
    worker, which persist across epochs), so epochs after the first skip file reading and decoding.

    With a :class:`DeterministicTrainTransform` the item at position ``i`` is the view keyed by
    (seed, epoch, index). ``__getitem__`` also accepts ``(i, epoch)`` pairs (yielded by
    :class:`EpochSampler`), so the epoch reaches DataLoader workers without re-creating them.
    """

    def __init__(
        self,
        splits: DatasetSplits,
        records: Sequence[Record],
        split_index: Sequence[int],
        transform: Callable[..., torch.Tensor],
        *,
        seed: int = 0,
        epoch: int = 0,
        keep_decoded_mb: float = 0.0,
    ) -> None:
        if len(records) != len(split_index):
            raise ValueError("records and split_index must have the same length")
        self.splits = splits
        self.records = list(records)
        self.split_index = [int(i) for i in split_index]
        self.transform = transform
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.deterministic_views = isinstance(transform, DeterministicTrainTransform)
        # decoded images kept in memory (up to keep_decoded_mb of pixels), so later epochs skip decoding
        self.keep_decoded_bytes = int(float(keep_decoded_mb) * 2**20)
        self._decoded: dict[int, Image.Image] = {}
        self._decoded_bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        i, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        record, index = self.records[i], self.split_index[i]
        img = self._decoded.get(i)
        if img is None:
            img = self.splits.load_image(record.key)
            size = img.width * img.height * len(img.getbands())
            if self._decoded_bytes + size <= self.keep_decoded_bytes:
                self._decoded[i] = img
                self._decoded_bytes += size
        if self.deterministic_views:
            image = self.transform(img, self.seed, epoch, index)
        else:
            image = self.transform(img)
        return {"image": image, "label": record.label, "index": index}


class EpochSampler(Sampler):
    """Shuffles ``n`` items with a ``torch.Generator`` seeded from (seed, epoch); yields ``(i, epoch)``.

    The order of epoch ``e`` depends only on (seed, e), so resuming at any epoch reproduces it. Lightning
    calls :meth:`set_epoch` on the sampler before each training epoch.
    """

    def __init__(self, n: int, seed: int, *, shuffle: bool = True, epoch: int = 0) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(stable_seed("shuffle", self.seed, epoch))
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        return iter([(i, epoch) for i in order])
