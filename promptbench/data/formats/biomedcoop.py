"""``format: biomedcoop``: the BiomedCoOp layout, ``<root>/<folder>/<folder>/<class_folder>/<image>`` plus
``<root>/<folder>/split_<folder>.json`` holding ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``.

Labels and class names are taken from the split file as shipped, never re-sorted, because the base/novel split
depends on the label order (BiomedCoOp ``datasets/*.py``; notes in ``shared/reference/biomed_dpt_biomedcoop.md``
§1.2-1.3). Pre-flight messages name the split-file entry and its line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from promptbench.data.formats import DATASET_FORMATS, DatasetFormat, Locate, write_tiny_image
from promptbench.data.readers import (
    ROOT_HINT,
    cfg_get,
    check_classnames,
    dataset_basics,
    finish_splits,
    refuse_duplicate_classes,
)
from promptbench.data.records import SPLITS, DatasetSplits, Record, escapes_root


@DATASET_FORMATS.register("biomedcoop")
class BiomedCoOpFormat(DatasetFormat):
    """A BiomedCoOp split file and its image folder."""

    def read(self, cfg: Any) -> DatasetSplits:
        name, root, folder, expected = dataset_basics(cfg)
        base = root / folder
        split_file = base / f"split_{folder}.json"
        image_root = base / folder
        layout = f"{base}/{folder}/<class>/<image> and {split_file}"
        if not split_file.is_file():
            raise FileNotFoundError(
                f"{name} split file not found at {split_file}. Put the BiomedCoOp {folder} folder under {root} "
                f"({layout}; download {folder}.zip from the HF dataset TahaKoleilat/BiomedCoOp) or {ROOT_HINT}."
            )
        if not image_root.is_dir():
            raise FileNotFoundError(
                f"{name} image folder not found at {image_root}. Expected {layout}; unzip the images there or "
                f"{ROOT_HINT}."
            )
        try:
            with open(split_file, encoding="utf-8") as fh:
                raw = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name}: {split_file} line {err.lineno} column {err.colno}: not valid JSON ({err.msg})"
                             ) from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{name}: {split_file} is not UTF-8 text ({err.reason})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{name}: {split_file} must hold an object {{\"train\": [...], \"val\": [...], "
                             f"\"test\": [...]}}, not a {type(raw).__name__}")
        label_names: dict[int, str] = {}
        splits: dict[str, list[Record]] = {}
        for split in SPLITS:
            if split not in raw:
                raise ValueError(f"{name}: {split_file} has no '{split}' list (keys: {sorted(raw)})")
            if not isinstance(raw[split], list):
                raise ValueError(f"{name}: {split_file} '{split}' must be a list of [relpath, label, classname]")
            records = []
            for i, entry in enumerate(raw[split]):
                relpath, label, classname = _split_entry(entry, f"{name}: {split_file} {split}[{i}]")
                if escapes_root(relpath):
                    raise ValueError(f"{name}: {split_file} {split}[{i}]: {relpath!r} is outside the image folder "
                                     f"{image_root} (absolute, or escaping with '..'); entries are relative to it")
                if label_names.setdefault(label, classname) != classname:
                    raise ValueError(
                        f"{name}: {split_file} gives label {label} two class names "
                        f"({label_names[label]!r} and {classname!r})"
                    )
                records.append(Record(str(relpath), label))
            splits[split] = records
        labels = sorted(label_names)
        if labels != list(range(len(labels))):
            raise ValueError(f"{name}: labels in {split_file} are not contiguous from 0: {labels}")
        refuse_duplicate_classes(name, [label_names[i] for i in labels], str(split_file))
        classnames = check_classnames(name, [label_names[i] for i in labels], expected, split_file)
        for split in SPLITS:  # cheap sanity check: the first image of each split exists
            if splits[split] and not (image_root / splits[split][0].key).is_file():
                raise FileNotFoundError(
                    f"{name} image {image_root / splits[split][0].key} listed in {split_file} is missing; "
                    f"expected {layout}. Re-extract the dataset or {ROOT_HINT}."
                )
        return finish_splits(name, splits, classnames, image_root=image_root, source=split_file,
                             intensity=cfg_get(cfg, "intensity", "dtype"))

    def locator(self, splits: DatasetSplits) -> Locate:
        """``<split file> <split>[i] line L (<key>)`` (line found lazily: the first line naming the path)."""
        source = splits.source
        if source is None or not source.is_file() or source.suffix != ".json":
            return super().locator(splits)
        lines: list[str] = []
        loaded = False

        def locate(split: str, index: int, key: str) -> str:
            nonlocal lines, loaded
            if not loaded:
                loaded = True
                try:
                    lines = source.read_text(encoding="utf-8").splitlines()
                except OSError:
                    lines = []
            line = next((n for n, text in enumerate(lines, 1) if f'"{key}"' in text), None)
            return f"{source} {split}[{index}]" + (f" line {line}" if line else "") + f" ({key})"

        return locate

    def write_example(self, folder: Path) -> dict[str, Any]:
        """``folder/EX/EX/<class>/<i>.png`` and ``folder/EX/split_EX.json``: 2 classes, 2 images per split."""
        classes = ["normal", "abnormal"]
        entries: dict[str, list[list[Any]]] = {split: [] for split in SPLITS}
        for s, split in enumerate(SPLITS):
            for label, cls in enumerate(classes):
                for i in range(2):
                    rel = f"{cls}/{split}_{i}.png"
                    write_tiny_image(folder / "EX" / "EX" / rel, 40 * s + 100 * label + 10 * i)
                    entries[split].append([rel, label, cls])
        (folder / "EX" / "split_EX.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
        return {"name": "ex_biomedcoop", "format": "biomedcoop", "root": str(folder), "folder": "EX",
                "classnames": classes}


def _split_entry(entry: Any, where: str) -> tuple[str, int, str]:
    """``[relpath, label, classname]`` of one split-file entry, or a one-line error naming the entry."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 3:
        raise ValueError(f"{where}: expected [relpath, label, classname], got {json.dumps(entry)[:80]}")
    relpath, label, classname = entry
    if not isinstance(relpath, str) or not relpath:
        raise ValueError(f"{where}: relpath {relpath!r} is not a non-empty string")
    if isinstance(label, bool) or not (isinstance(label, int) or (isinstance(label, str) and label.isdigit())):
        raise ValueError(f"{where}: label {label!r} is not a non-negative integer")
    if not isinstance(classname, str) or not classname:
        raise ValueError(f"{where}: class name {classname!r} is not a non-empty string")
    return relpath, int(label), classname
