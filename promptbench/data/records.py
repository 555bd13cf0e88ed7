"""Split records, the in-memory dataset description, and stable hashing helpers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One labelled image: ``key`` is a path relative to the image root, or ``"<split>/<idx>"`` for npz."""

    key: str
    label: int


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text (sorted keys, no whitespace) used for every hash in the data layer."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stable_hash(obj: Any, n_hex: int = 16) -> str:
    """First ``n_hex`` hex chars of sha256 over :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:n_hex]


def stable_seed(*parts: Any) -> int:
    """A 63-bit integer seed that depends only on ``parts`` (never on Python's salted ``hash``)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def records_to_lists(records: Sequence[Record]) -> list[list[Any]]:
    """``[[key, label], ...]`` in the given order (JSON-friendly)."""
    return [[r.key, int(r.label)] for r in records]


def compute_split_hash(train: Sequence[Record], val: Sequence[Record], test: Sequence[Record]) -> str:
    """sha256 (16 hex) of the canonical JSON of the three split lists, in file order."""
    return stable_hash({s: records_to_lists(r) for s, r in zip(SPLITS, (train, val, test))})


@dataclass
class DatasetSplits:
    """The train/val/test record lists of one dataset plus how to load their images.

    ``image_root`` is the folder keys are relative to (``None`` for npz data, which is read from
    ``npz_path`` and cached in memory on first use).
    """

    train: list[Record]
    val: list[Record]
    test: list[Record]
    classnames: list[str]
    image_root: Path | None
    split_hash: str
    name: str = ""
    npz_path: Path | None = None
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def split(self, name: str) -> list[Record]:
        """The record list of split ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def load_image(self, key: str) -> Image.Image:
        """Load the image of ``key`` as an RGB PIL image (grayscale is replicated to 3 channels)."""
        if self.npz_path is not None:
            split, _, idx = key.partition("/")
            array = self._npz_images(split)[int(idx)]
            return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
        if self.image_root is None:
            raise RuntimeError("DatasetSplits has neither image_root nor npz_path")
        path = self.image_root / key
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.name or 'dataset'} image not found at {path} (listed in the split file); "
                "the dataset folder is incomplete: re-extract it or fix paths.data_root / dataset.root."
            )
        with Image.open(path) as img:
            return img.convert("RGB")

    def _npz_images(self, split: str) -> np.ndarray:
        if split not in self._arrays:
            assert self.npz_path is not None
            with np.load(self.npz_path) as data:
                for s in SPLITS:
                    if f"{s}_images" in data.files:
                        self._arrays[s] = data[f"{s}_images"]
        if split not in self._arrays:
            raise KeyError(f"{self.npz_path} has no '{split}_images' array")
        return self._arrays[split]
