"""Serve frozen image features instead of images to methods that never need the image tower in their graph.

:class:`FeatureDataModule` wraps a :class:`~promptbench.data.PromptDataModule` and yields the same batches —
same items, order, batch sizes and ``drop_last`` (read from the wrapped module's own loaders, so any change to
its batching applies here too) — with ``"image"`` holding the (B, E) image-tower output of that item's view.
Views come from the wrapped module's own datasets and transforms (training views keyed by seed, epoch and index),
are encoded in large batches and kept in a :class:`~promptbench.features.store.FeatureStore`. Evaluation
features are keyed by backbone, images and transform only, so every method, shot and seed reuses them.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from promptbench.core.console import progress
from promptbench.core.rng import isolated_rng, loader_generator
from promptbench.features.keys import dataset_source, entry_key, image_ids, tower_hash, transform_description
from promptbench.features.store import FeatureStore

log = logging.getLogger("promptbench")

__all__ = ["FeatureDataModule", "encode_items", "autocast_for"]

KEY_VERSION = 1


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast Lightning's ``precision`` applies to forwards (none for ``32-true`` / ``*-true``)."""
    p = str(precision)
    if p.startswith("bf16") and "mixed" in p:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if p.startswith("16") and "mixed" in p:
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def encode_items(backbone: Any, dataset: Any, items: Sequence[Any], *, batch_size: int = 256,
                 num_workers: int = 0, precision: str = "32-true", group: int | None = None) -> Tensor:
    """Image-tower outputs (len(items), E), float32 on CPU, of ``dataset[item]`` for each item, in batches.

    ``group``: items form consecutive groups of this size (one entry each) and no batch straddles two, so an
    entry's features are bitwise the same whether it is encoded alone or with others (batch shapes can change
    CPU kernels' rounding)."""
    device = backbone.logit_scale.device
    if not items:
        return torch.zeros(0, backbone.embed_dim)
    items, size, step = list(items), int(batch_size), int(group or len(items))
    batches = [items[s:min(s + size, g + step)] for g in range(0, len(items), step)
               for s in range(g, min(g + step, len(items)), size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=int(num_workers),
                        generator=loader_generator("features"))
    out = []
    # isolated: computing an entry and reading it from the store leave the caller's RNG streams in the same state
    with isolated_rng(), autocast_for(precision, device):
        for batch in progress(loader, len(items), "encoding images", unit="batch", total=len(batches)):
            out.append(backbone.encode_image(batch["image"].to(device)).float().cpu())
    return torch.cat(out)


class _EvalFeatures:
    """Sequential batches of one evaluation set (the image path's order)."""

    def __init__(self, owner: FeatureDataModule, dataset: Any, batch_size: int):
        self.owner, self.dataset, self.batch_size = owner, dataset, int(batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        feats = self.owner.eval_features(self.dataset)
        labels, index = _labels_index(self.dataset)
        for start in range(0, len(self.dataset), self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield {"image": feats[sl].clone(), "label": labels[sl], "index": index[sl]}  # never a view of the store


class _TrainFeatures:
    """The wrapped training loader's batches (its batch sampler: order, size, drop_last) as feature batches."""

    def __init__(self, owner: FeatureDataModule, loader: DataLoader):
        self.owner, self.loader = owner, loader
        self.sampler = loader.sampler  # Lightning calls sampler.set_epoch here, as on a DataLoader

    def __len__(self) -> int:
        return len(self.loader.batch_sampler)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        dataset = self.loader.dataset
        labels, index = _labels_index(dataset)
        for batch in self.loader.batch_sampler:
            pos = torch.tensor([b[0] if isinstance(b, tuple) else b for b in batch], dtype=torch.long)
            epochs = {int(b[1]) if isinstance(b, tuple) else int(dataset.epoch) for b in batch}
            if len(epochs) != 1:
                raise RuntimeError(f"one training batch mixes views of epochs {sorted(epochs)}")
            feats = self.owner.train_features(epochs.pop())
            yield {"image": feats[pos], "label": labels[pos], "index": index[pos]}


def _labels_index(dataset: Any) -> tuple[Tensor, Tensor]:
    labels = torch.tensor([int(r.label) for r in dataset.records], dtype=torch.long)
    return labels, torch.tensor(dataset.split_index, dtype=torch.long)


class FeatureDataModule(L.LightningDataModule):
    """Feature batches over a wrapped datamodule (``inner``); everything else is delegated to it.

    ``epochs``: training epochs (their views are encoded together, in one batched pass, on first use).
    ``views_per_image``: opt-in fixed pool of V views per image; epoch e uses view e mod V (not exact: the
    image path draws a fresh view every epoch).
    """

    def __init__(self, inner: Any, backbone: Any, store: FeatureStore, *, precision: str = "32-true",
                 epochs: int = 0, views_per_image: int | None = None, batch_size: int = 256,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.inner = inner
        self.backbone = backbone
        self.store = store
        self.precision = str(precision)
        self.epochs = int(epochs)
        self.views_per_image = int(views_per_image) if views_per_image else None
        if self.views_per_image is not None and self.views_per_image < 1:
            raise ValueError(f"features.views_per_image must be a positive integer or null, got {views_per_image}")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self._ids: dict[int, list[list[Any]]] = {}
        self._base: tuple[torch.device, dict[str, Any]] | None = None  # the frozen tower is hashed once per cell
        self._train_keys: dict[tuple[torch.device, int], str] = {}

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    # -- delegated life cycle ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.inner.setup(stage)

    @property
    def classnames(self) -> list[str]:
        return self.inner.classnames

    def eval_sets(self) -> dict[str, list[str]]:
        return self.inner.eval_sets()

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    # -- loaders -------------------------------------------------------------------------------------
    def train_dataloader(self) -> _TrainFeatures:
        return _TrainFeatures(self, self.inner.train_dataloader())

    def val_dataloader(self) -> _EvalFeatures:
        loader = self.inner.val_dataloader()
        return _EvalFeatures(self, loader.dataset, loader.batch_size)

    def test_dataloader(self) -> list[_EvalFeatures]:
        return [_EvalFeatures(self, loader.dataset, loader.batch_size) for loader in self.inner.test_dataloader()]

    # -- features ------------------------------------------------------------------------------------
    def _base_key(self) -> dict[str, Any]:
        device = self.backbone.logit_scale.device
        if self._base is not None and self._base[0] == device:
            return self._base[1]
        self._base = (device, {"v": KEY_VERSION, "tower": tower_hash(self.backbone),
                "tower_class": type(self.backbone.visual).__name__, "precision": self.precision,
                "device": device.type, "source": dataset_source(self.inner.splits)})
        return self._base[1]

    def _image_ids(self, dataset: Any) -> list[list[Any]]:
        if id(dataset) not in self._ids:
            self._ids[id(dataset)] = image_ids(self.inner.splits, [r.key for r in dataset.records])
        return self._ids[id(dataset)]

    def _meta(self, dataset: Any, kind: str, **extra: Any) -> dict[str, Any]:
        info = getattr(self.backbone, "info", None)
        name = getattr(info, "name", None) or type(self.backbone.visual).__name__
        return {"kind": kind, "dataset": self.inner.dataset_name, "backbone": name,
                "tower": tower_hash(self.backbone)[:12], "precision": self.precision, "n": len(dataset), **extra}

    def _cols(self) -> int | None:
        """The embedding dimension every entry must have (its column count)."""
        dim = getattr(self.backbone, "embed_dim", None)
        return int(dim) if dim is not None else None

    def eval_features(self, dataset: Any) -> Tensor:
        """(N, E) features of an evaluation dataset (eval transform), in its order."""
        key = entry_key(**self._base_key(), kind="eval", transform=transform_description(dataset.transform),
                        images=self._image_ids(dataset))
        value = self.store.get_or_compute(
            key, lambda: encode_items(self.backbone, dataset, range(len(dataset)), batch_size=self.batch_size,
                                      num_workers=self.num_workers, precision=self.precision),
            self._meta(dataset, "eval"), rows=len(dataset), cols=self._cols())
        return value

    def view_epoch(self, epoch: int) -> int:
        return int(epoch) % self.views_per_image if self.views_per_image else int(epoch)

    def _train_key(self, dataset: Any, view_epoch: int) -> str:
        memo = (self.backbone.logit_scale.device, int(view_epoch))
        if memo in self._train_keys:
            return self._train_keys[memo]
        images = [[*ident, idx] for ident, idx in zip(self._image_ids(dataset), dataset.split_index)]
        key = entry_key(**self._base_key(), kind="train_view", transform=transform_description(dataset.transform),
                        seed=int(dataset.seed), epoch=int(view_epoch), images=images)
        self._train_keys[memo] = key
        return key

    def train_features(self, epoch: int) -> Tensor:
        """(N, E) features of the training views of ``epoch``, in dataset order. On first use every epoch's
        views that are not cached yet are encoded in one batched pass."""
        dataset = self.inner.state.train_set
        wanted = self.view_epoch(epoch)
        key = self._train_key(dataset, wanted)
        rows, cols = len(dataset), self._cols()
        value = self.store.get(key, rows, cols, warn=False)  # a failed check is reported by the read under the lock
        if value is not None:
            return value
        epochs = sorted({self.view_epoch(e) for e in range(max(1, self.epochs))} | {wanted})
        keys = {e: self._train_key(dataset, e) for e in epochs}
        fresh: Tensor | None = None
        with self.store.lock(key):
            missing = [e for e in epochs if self.store.get(keys[e], rows, cols) is None]
            if missing:
                items = [(i, e) for e in missing for i in range(len(dataset))]
                feats = encode_items(self.backbone, dataset, items, batch_size=self.batch_size, group=len(dataset),
                                     num_workers=self.num_workers, precision=self.precision)
                self.store.hits["computed"] += len(missing)
                for j, e in enumerate(missing):
                    part = self.store.put(keys[e], feats[j * len(dataset):(j + 1) * len(dataset)],
                                          self._meta(dataset, "train_view", seed=int(dataset.seed), epoch=e))
                    if e == wanted:
                        fresh = part
        value = fresh if fresh is not None else self.store.get(key, rows, cols)
        if value is None:
            raise RuntimeError(f"feature cache lost the training views of epoch {wanted} (key {key[:12]})")
        return value
