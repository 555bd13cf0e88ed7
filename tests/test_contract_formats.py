"""The dataset-format contract: every registered ``dataset.format`` (so a new one automatically) writes a tiny
example dataset (``DatasetFormat.write_example``) that reads into valid, deterministic splits.

A format without an example fails here rather than being skipped. Nothing here needs ``../shared``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from promptbench.data.datasets import RecordDataset
from promptbench.data.formats import (
    DATASET_FORMATS,
    DatasetFormat,
    UnknownFormat,
    dataset_format,
    format_of,
    write_tiny_image,
)
from promptbench.data.preflight import content_fingerprint, data_fingerprint, preflight
from promptbench.data.readers import class_key, dataset_basics, finish_splits, read_dataset
from promptbench.data.records import SPLITS, DatasetSplits, Record, compute_split_hash, escapes_root
from promptbench.data.transforms import build_eval_transform

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(autouse=True)
def _own_hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Content fingerprints hash files through a cache: keep it out of ~/.cache."""
    monkeypatch.setenv("PROMPTBENCH_HASH_CACHE", str(tmp_path / "filehash.json"))


def check_format_contract(name: str, folder: Path) -> DatasetSplits:
    """Write format ``name``'s example under ``folder``, read it twice and assert the split invariants."""
    cfg = dataset_format(name).write_example(folder)
    assert cfg.get("format") == name, f"{name}: write_example must return a config with format: {name}"
    splits, again = read_dataset(cfg), read_dataset(cfg)
    assert splits.format == name
    # every split present (the example fills all three), labels in range, class names unique
    n = len(splits.classnames)
    assert n >= 2 and all(isinstance(c, str) and c for c in splits.classnames)
    assert len({class_key(c) for c in splits.classnames}) == n, splits.classnames
    owner: dict[str, str] = {}
    for split in SPLITS:
        records = splits.split(split)
        assert records, f"{name}: the example's {split} split is empty"
        assert all(isinstance(r, Record) and isinstance(r.label, int) and 0 <= r.label < n for r in records)
        assert {r.label for r in records} == set(range(n)), f"{name}: every class in {split}"
        keys = [r.key for r in records]
        assert len(set(keys)) == len(keys), f"{name}: duplicate keys in {split}"
        for key in keys:
            assert owner.setdefault(key, split) == split, f"{name}: {key} in {owner[key]} and {split}"
    # deterministic: same records, order and split hash on every read, and the hash is of the records
    assert [splits.split(s) for s in SPLITS] == [again.split(s) for s in SPLITS]
    assert splits.split_hash == again.split_hash == compute_split_hash(splits.train, splits.val, splits.test)
    assert splits.classnames == again.classnames
    # storage as declared
    if type(dataset_format(name)).storage == "npz":
        assert splits.npz_path is not None and splits.npz_path.is_file() and splits.image_root is None
        assert all(r.key == f"{s}/{i}" for s in SPLITS for i, r in enumerate(splits.split(s)))
    else:
        assert splits.image_root is not None and splits.npz_path is None
        assert not any(escapes_root(r.key) for s in SPLITS for r in splits.split(s))
    # images decode through the loading path a run uses (DatasetSplits.load_image in RecordDataset)
    transform = build_eval_transform(8, MEAN, STD)
    for split in SPLITS:
        records = splits.split(split)
        items = RecordDataset(splits, records, range(len(records)), transform)
        for i in range(len(items)):
            item = items[i]
            assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
            assert item["label"] == records[i].label
        image = splits.load_image(records[0].key)
        assert isinstance(image, Image.Image) and image.mode == "RGB"
    # a clean pre-flight, a locator naming something, stable fingerprints
    report = preflight(splits, shots=1)
    assert report.errors == [] and report.warnings == [], report
    assert format_of(splits).locator(splits)("train", 0, splits.train[0].key)
    assert content_fingerprint(splits) == content_fingerprint(again)
    assert data_fingerprint(splits) == data_fingerprint(again)
    return splits


@pytest.mark.parametrize("name", DATASET_FORMATS.names())
def test_every_registered_format_meets_the_contract(name: str, tmp_path: Path) -> None:
    check_format_contract(name, tmp_path)


def test_the_shipped_formats_are_registered() -> None:
    assert {"biomedcoop", "image_folder", "medmnist"} <= set(DATASET_FORMATS.names())


def test_an_unknown_format_is_one_line_with_close_matches() -> None:
    with pytest.raises(UnknownFormat) as err:
        read_dataset({"format": "imagefolder", "root": "/nowhere", "folder": "x"})
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg  # ValueError: the sweep pre-flight catches it
    assert msg.startswith("unknown dataset.format 'imagefolder'; did you mean image_folder?")
    assert all(name in msg for name in DATASET_FORMATS.names())


# ------------------------------------------------------------------------------- a format added by a test
class ListingFormat(DatasetFormat):
    """A throw-away format: ``<root>/<folder>/listing.txt`` lines ``split path label`` under ``images/``."""

    def read(self, cfg: Any) -> DatasetSplits:
        name, root, folder, classnames = dataset_basics(cfg)
        assert classnames is not None
        splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
        for line in (root / folder / "listing.txt").read_text().splitlines():
            split, path, label = line.split()
            splits[split].append(Record(path, int(label)))
        return finish_splits(name, splits, classnames, image_root=root / folder / "images", source=root / folder)

    def write_example(self, folder: Path) -> dict[str, Any]:
        lines = []
        for s, split in enumerate(SPLITS):
            for label in (0, 1):
                write_tiny_image(folder / "listed" / "images" / f"{split}{label}.png", 60 * s + 100 * label)
                lines.append(f"{split} {split}{label}.png {label}")
        (folder / "listed" / "listing.txt").write_text("\n".join(lines))
        return {"format": "listing_test", "root": str(folder), "folder": "listed", "classnames": ["a", "b"]}


class NoExampleFormat(ListingFormat):
    """Reads like :class:`ListingFormat` but ships no example."""

    write_example = DatasetFormat.write_example


@pytest.fixture
def throwaway() -> Iterator[None]:
    DATASET_FORMATS.register("listing_test", ListingFormat)
    DATASET_FORMATS.register("no_example_test", NoExampleFormat)
    try:
        yield
    finally:
        DATASET_FORMATS.unregister("listing_test")
        DATASET_FORMATS.unregister("no_example_test")


def test_a_format_registered_elsewhere_is_read_and_checked(throwaway: None, tmp_path: Path) -> None:
    assert "listing_test" in DATASET_FORMATS.names()
    cfg = ListingFormat().write_example(tmp_path / "direct")
    splits = read_dataset(cfg)
    assert splits.format == "listing_test" and splits.train == [Record("train0.png", 0), Record("train1.png", 1)]
    assert check_format_contract("listing_test", tmp_path / "contract").split_hash == splits.split_hash


def test_a_format_without_an_example_fails_the_contract(throwaway: None, tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="has no write_example"):
        check_format_contract("no_example_test", tmp_path)
