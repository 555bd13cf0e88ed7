"""``format: image_folder``: ``<root>/<folder>/{train,val,test}/<class_folder>/<image>``.

Class order from ``dataset.classnames`` (folder = class name with spaces replaced by underscores) or sorted folder
names. A missing ``val`` folder gives an empty val split. Hidden files and folders and OS metadata (``.*``, macOS
``._*`` and ``__MACOSX``, ``Thumbs.db``, ``desktop.ini``) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptbench.data.formats import DATASET_FORMATS, DatasetFormat, write_tiny_image
from promptbench.data.readers import (
    IMAGE_EXTENSIONS,
    ROOT_HINT,
    cfg_get,
    dataset_basics,
    finish_splits,
    is_metadata,
    refuse_duplicate_classes,
)
from promptbench.data.records import SPLITS, DatasetSplits, Record


@DATASET_FORMATS.register("image_folder")
class ImageFolderFormat(DatasetFormat):
    """One folder per split, one sub-folder per class."""

    def read(self, cfg: Any) -> DatasetSplits:
        name, root, folder, expected = dataset_basics(cfg)
        base = root / folder
        layout = f"{base}/{{train,val,test}}/<class_folder>/<image>"
        for split in ("train", "test"):
            if not (base / split).is_dir():
                raise FileNotFoundError(
                    f"{name} {split} folder not found at {base / split}. Expected {layout} or {ROOT_HINT}."
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
        return finish_splits(name, splits, list(classnames), image_root=base, source=base,
                             intensity=cfg_get(cfg, "intensity", "dtype"))

    def write_example(self, folder: Path) -> dict[str, Any]:
        """``folder/ex/{train,val,test}/<class>/<i>.png``: 2 classes (one with a space), 2 images per split."""
        classes = ["normal lungs", "covid"]
        for s, split in enumerate(SPLITS):
            for label, cls in enumerate(classes):
                for i in range(2):
                    write_tiny_image(folder / "ex" / split / cls.replace(" ", "_") / f"{i}.png",
                                     40 * s + 100 * label + 10 * i)
        return {"name": "ex_image_folder", "format": "image_folder", "root": str(folder), "folder": "ex",
                "classnames": classes}
