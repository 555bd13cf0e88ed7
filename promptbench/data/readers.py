"""Read a dataset config into :class:`DatasetSplits`, and the helpers every dataset format shares.

:func:`read_dataset` looks ``dataset.format`` up in :data:`promptbench.data.formats.DATASET_FORMATS` (one module of
``promptbench/data/formats/`` per format: ``biomedcoop``, ``image_folder``, ``medmnist``, ...; each module's
docstring describes its layout); an unknown format fails in one line with close matches and the list.

Every format refuses duplicate class names (compared ignoring case, ``_`` and repeated spaces) in one line, and
listed paths must stay inside the image folder (no absolute paths, no ``..`` escapes; checked lexically, so
symlinked dataset folders work).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptbench.data.formats import dataset_format
from promptbench.data.records import (
    INTENSITY_MODES,
    DatasetSplits,
    Record,
    compute_split_hash,
)

__all__ = ["DatasetSplits", "Record", "read_dataset", "cfg_get"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
ROOT_HINT = "set paths.data_root=/path/to/data (or dataset.root=/path)"
#: OS metadata that is never a class folder or an image (besides every name starting with ".": ``._x.jpg``,
#: ``.ipynb_checkpoints``, ``.DS_Store``)
OS_METADATA = ("__macosx", "thumbs.db", "desktop.ini", "$recycle.bin", "system volume information")


def is_metadata(path: Path) -> bool:
    """Hidden files / folders and OS metadata, skipped by the class-folder reader."""
    return path.name.startswith(".") or path.name.lower() in OS_METADATA


def class_key(name: str) -> str:
    """A class name as compared for duplicates: case, ``_`` and repeated spaces ignored."""
    return " ".join(name.replace("_", " ").casefold().split())


def refuse_duplicate_classes(name: str, classnames: list[str], where: str) -> None:
    """One line naming the first two class names of ``classnames`` that are the same class."""
    seen: dict[str, int] = {}
    for i, cls in enumerate(classnames):
        j = seen.setdefault(class_key(cls), i)
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
    fmt = str(cfg_get(cfg, "format", "biomedcoop"))
    splits = dataset_format(fmt).read(cfg)
    splits.format = splits.format or fmt
    return splits


def dataset_basics(cfg: Any) -> tuple[str, Path, str, list[str] | None]:
    """(display name, root, folder, configured classnames or None) of a dataset config, checked."""
    folder = cfg_get(cfg, "folder")
    if not folder:
        raise ValueError("dataset.folder is not set (e.g. BTMRI for the BiomedCoOp BTMRI folder)")
    name = str(cfg_get(cfg, "display_name", folder))
    root_value = cfg_get(cfg, "root")
    if root_value in (None, ""):
        raise FileNotFoundError(f"{name}: no data root configured; {ROOT_HINT}.")
    root = Path(str(root_value)).expanduser()
    classnames = cfg_get(cfg, "classnames")
    configured = [str(c) for c in classnames] if classnames else None
    if configured:
        refuse_duplicate_classes(name, configured, "dataset.classnames")
    return name, root, str(folder), configured


def check_classnames(name: str, found: list[str], expected: list[str] | None, source: Path) -> list[str]:
    """``found`` (the label order a listing defines), refused when it differs from the configured class names."""
    if expected is not None and list(found) != list(expected):
        raise ValueError(
            f"{name}: class names in {source} (label order {found}) do not match dataset.classnames "
            f"{expected}; fix the dataset config (the split file defines labels and their order)."
        )
    return list(found)


def finish_splits(name: str, splits: dict[str, list[Record]], classnames: list[str], **kw: Any) -> DatasetSplits:
    """The :class:`DatasetSplits` of ``splits`` (labels checked against ``classnames``, split hash computed);
    ``kw`` are its other fields (``image_root``, ``npz_path``, ``source``, ``intensity``, ...)."""
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
