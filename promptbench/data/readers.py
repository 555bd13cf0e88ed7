"""Read a dataset config into :class:`DatasetSplits` (BiomedCoOp layout, image folders, MedMNIST npz).

Formats (``dataset.format``):

* ``biomedcoop`` — ``<root>/<folder>/<folder>/<class_folder>/<image>`` plus
  ``<root>/<folder>/split_<folder>.json`` holding ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``.
  Labels and class names are taken from the split file as shipped, never re-sorted, because the base/novel
  split depends on the label order (BiomedCoOp ``datasets/*.py``; notes in
  ``shared/reference/biomed_dpt_biomedcoop.md`` §1.2-1.3).
* ``image_folder`` — ``<root>/<folder>/{train,val,test}/<class_folder>/<image>``; class order from
  ``dataset.classnames`` (folder = class name with spaces replaced by underscores) or sorted folder names.
  A missing ``val`` folder gives an empty val split. Hidden files and folders and OS metadata (``.*``, macOS
  ``._*`` and ``__MACOSX``, ``Thumbs.db``, ``desktop.ini``) are skipped.
* ``medmnist`` — ``<root>/<folder>.npz`` (or ``<root>/medmnist/<folder>.npz``) in the MedMNIST v2 format
  (``{split}_images``, ``{split}_labels``); keys are ``"<split>/<idx>"``.

Every format refuses duplicate class names (compared ignoring case, ``_`` and repeated spaces) in one line, and
split-file entries must stay inside the image folder (no absolute paths, no ``..`` escapes; checked lexically, so
symlinked dataset folders work).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from promptbench.data.records import (
    INTENSITY_MODES,
    SPLITS,
    DatasetSplits,
    Record,
    compute_split_hash,
    escapes_root,
)

__all__ = ["DatasetSplits", "Record", "read_dataset", "cfg_get"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
_ROOT_HINT = "set paths.data_root=/path/to/data (or dataset.root=/path)"
#: OS metadata that is never a class folder or an image (besides every name starting with ".": ``._x.jpg``,
#: ``.ipynb_checkpoints``, ``.DS_Store``)
OS_METADATA = ("__macosx", "thumbs.db", "desktop.ini", "$recycle.bin", "system volume information")


def is_metadata(path: Path) -> bool:
    """Hidden files / folders and OS metadata, skipped by the class-folder reader."""
    return path.name.startswith(".") or path.name.lower() in OS_METADATA


def _class_key(name: str) -> str:
    """A class name as compared for duplicates: case, ``_`` and repeated spaces ignored."""
    return " ".join(name.replace("_", " ").casefold().split())


def refuse_duplicate_classes(name: str, classnames: list[str], where: str) -> None:
    """One line naming the first two class names of ``classnames`` that are the same class."""
    seen: dict[str, int] = {}
    for i, cls in enumerate(classnames):
        j = seen.setdefault(_class_key(cls), i)
        if j != i:
            raise ValueError(f"{name}: {where} names one class twice: label {j} {classnames[j]!r} and label {i} "
                             f"{cls!r}; give each class its own name")


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a mapping (dict, DictConfig) or an attribute object, with a default."""
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def read_dataset(cfg: Any) -> DatasetSplits:
    """Read the dataset described by ``cfg`` (a ``conf/dataset/*.yaml`` node) into :class:`DatasetSplits`."""
    fmt = cfg_get(cfg, "format", "biomedcoop")
    readers = {"biomedcoop": _read_biomedcoop, "image_folder": _read_image_folder, "medmnist": _read_medmnist}
    if fmt not in readers:
        raise ValueError(f"dataset.format={fmt!r} is not supported; use one of {sorted(readers)}")
    return readers[fmt](cfg)


def _common(cfg: Any) -> tuple[str, Path, str, list[str] | None]:
    """(display name, root, folder, configured classnames or None)."""
    folder = cfg_get(cfg, "folder")
    if not folder:
        raise ValueError("dataset.folder is not set (e.g. BTMRI for the BiomedCoOp BTMRI folder)")
    name = str(cfg_get(cfg, "display_name", folder))
    root_value = cfg_get(cfg, "root")
    if root_value in (None, ""):
        raise FileNotFoundError(f"{name}: no data root configured; {_ROOT_HINT}.")
    root = Path(str(root_value)).expanduser()
    classnames = cfg_get(cfg, "classnames")
    configured = [str(c) for c in classnames] if classnames else None
    if configured:
        refuse_duplicate_classes(name, configured, "dataset.classnames")
    return name, root, str(folder), configured


def _check_classnames(name: str, found: list[str], expected: list[str] | None, source: Path) -> list[str]:
    if expected is not None and list(found) != list(expected):
        raise ValueError(
            f"{name}: class names in {source} (label order {found}) do not match dataset.classnames "
            f"{expected}; fix the dataset config (the split file defines labels and their order)."
        )
    return list(found)


def _finish(name: str, splits: dict[str, list[Record]], classnames: list[str], **kw: Any) -> DatasetSplits:
    n = len(classnames)
    for split, records in splits.items():
        bad = [r for r in records if not 0 <= r.label < n]
        if bad:
            raise ValueError(f"{name}: {split} split has label {bad[0].label} outside 0..{n - 1}")
    intensity = str(kw.pop("intensity", "dtype"))
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"{name}: dataset.intensity={intensity!r} is not one of {INTENSITY_MODES}")
    return DatasetSplits(
        intensity=intensity,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        classnames=classnames,
        split_hash=compute_split_hash(splits["train"], splits["val"], splits["test"]),
        name=name,
        **kw,
    )


# --------------------------------------------------------------------------- BiomedCoOp layout


def _read_biomedcoop(cfg: Any) -> DatasetSplits:
    name, root, folder, expected = _common(cfg)
    base = root / folder
    split_file = base / f"split_{folder}.json"
    image_root = base / folder
    layout = f"{base}/{folder}/<class>/<image> and {split_file}"
    if not split_file.is_file():
        raise FileNotFoundError(
            f"{name} split file not found at {split_file}. Put the BiomedCoOp {folder} folder under {root} "
            f"({layout}; download {folder}.zip from the HF dataset TahaKoleilat/BiomedCoOp) or {_ROOT_HINT}."
        )
    if not image_root.is_dir():
        raise FileNotFoundError(
            f"{name} image folder not found at {image_root}. Expected {layout}; unzip the images there or {_ROOT_HINT}."
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
    classnames = _check_classnames(name, [label_names[i] for i in labels], expected, split_file)
    for split in SPLITS:  # cheap sanity check: the first image of each split exists
        if splits[split] and not (image_root / splits[split][0].key).is_file():
            raise FileNotFoundError(
                f"{name} image {image_root / splits[split][0].key} listed in {split_file} is missing; "
                f"expected {layout}. Re-extract the dataset or {_ROOT_HINT}."
            )
    return _finish(name, splits, classnames, image_root=image_root, source=split_file,
                   intensity=cfg_get(cfg, "intensity", "dtype"))


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


# --------------------------------------------------------------------------- image folders


def _read_image_folder(cfg: Any) -> DatasetSplits:
    name, root, folder, expected = _common(cfg)
    base = root / folder
    layout = f"{base}/{{train,val,test}}/<class_folder>/<image>"
    for split in ("train", "test"):
        if not (base / split).is_dir():
            raise FileNotFoundError(
                f"{name} {split} folder not found at {base / split}. Expected {layout} or {_ROOT_HINT}."
            )
    if expected is not None:
        classnames = expected
        folders = [c.replace(" ", "_") for c in expected]
    else:
        folders = sorted(p.name for p in (base / "train").iterdir() if p.is_dir() and not is_metadata(p))
        classnames = [f.replace("_", " ") for f in folders]
        refuse_duplicate_classes(name, classnames, f"the class folders of {base / 'train'}")
    splits: dict[str, list[Record]] = {}
    for split in SPLITS:
        split_dir = base / split
        records: list[Record] = []
        if split_dir.is_dir():
            present = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not is_metadata(p))
            unknown = sorted(set(present) - set(folders))
            if unknown:
                raise ValueError(
                    f"{name}: class folders {unknown} in {split_dir} are not in dataset.classnames "
                    f"(expected folders {folders})"
                )
            for label, cls in enumerate(folders):
                cls_dir = split_dir / cls
                if not cls_dir.is_dir():
                    continue
                for path in sorted(cls_dir.iterdir()):
                    if path.suffix.lower() in IMAGE_EXTENSIONS and not is_metadata(path) and path.is_file():
                        records.append(Record(f"{split}/{cls}/{path.name}", label))
        splits[split] = records
    if not splits["train"]:
        raise FileNotFoundError(f"{name}: no images found under {base / 'train'}; expected {layout}.")
    return _finish(name, splits, list(classnames), image_root=base, source=base,
                   intensity=cfg_get(cfg, "intensity", "dtype"))


# --------------------------------------------------------------------------- MedMNIST npz


def _read_medmnist(cfg: Any) -> DatasetSplits:
    name, root, folder, expected = _common(cfg)
    stem = folder[:-4] if folder.endswith(".npz") else folder
    candidates = [root / f"{stem}.npz", root / "medmnist" / f"{stem}.npz"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"{name} file not found at {candidates[0]} (nor {candidates[1]}). Put the MedMNIST v2 file "
            f"{stem}.npz (from zenodo.org/record/6496656) there or {_ROOT_HINT}."
        )
    splits: dict[str, list[Record]] = {}
    max_label = -1
    try:
        data_file = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{name}: {path} cannot be read as an npz file ({str(err).splitlines()[0][:100]})") from None
    with data_file as data:
        for split in SPLITS:
            key = f"{split}_labels"
            if key not in data.files:
                raise ValueError(f"{name}: {path} has no '{key}' array (MedMNIST v2 format expected)")
            labels = np.asarray(data[key])
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.ndim != 1:
                raise ValueError(f"{name}: {path} '{key}' has shape {labels.shape}; only single-label data")
            splits[split] = [Record(f"{split}/{i}", int(y)) for i, y in enumerate(labels.tolist())]
            max_label = max(max_label, int(labels.max()) if labels.size else -1)
    if expected is None:
        raise ValueError(f"{name}: dataset.classnames must be set for medmnist data (labels are integers)")
    if max_label >= len(expected):
        raise ValueError(f"{name}: {path} has label {max_label} but dataset.classnames lists {len(expected)}")
    return _finish(name, splits, list(expected), image_root=None, npz_path=path, source=path,
                   intensity=cfg_get(cfg, "intensity", "dtype"))
