"""``format: medmnist``: ``<root>/<folder>.npz`` (or ``<root>/medmnist/<folder>.npz``) in the MedMNIST v2 format
(``{split}_images``, ``{split}_labels``); keys are ``"<split>/<idx>"``, labels are indices into
``dataset.classnames`` (required).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from promptbench.data.formats import DATASET_FORMATS, DatasetFormat
from promptbench.data.readers import ROOT_HINT, cfg_get, dataset_basics, finish_splits
from promptbench.data.records import SPLITS, DatasetSplits, Record


@DATASET_FORMATS.register("medmnist")
class MedMNISTFormat(DatasetFormat):
    """One npz file holding every split's images and labels."""

    storage = "npz"

    def read(self, cfg: Any) -> DatasetSplits:
        name, root, folder, expected = dataset_basics(cfg)
        stem = folder[:-4] if folder.endswith(".npz") else folder
        candidates = [root / f"{stem}.npz", root / "medmnist" / f"{stem}.npz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"{name} file not found at {candidates[0]} (nor {candidates[1]}). Put the MedMNIST v2 file "
                f"{stem}.npz (from zenodo.org/record/6496656) there or {ROOT_HINT}."
            )
        splits: dict[str, list[Record]] = {}
        max_label = -1
        try:
            data_file = np.load(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{name}: {path} cannot be read as an npz file ({str(err).splitlines()[0][:100]})"
                             ) from None
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
        return finish_splits(name, splits, list(expected), image_root=None, npz_path=path, source=path,
                             intensity=cfg_get(cfg, "intensity", "dtype"))

    def write_example(self, folder: Path) -> dict[str, Any]:
        """``folder/exmnist.npz``: 8x8 uint8 images, labels of shape (N, 1), 2 classes x 2 images per split."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for s, split in enumerate(SPLITS):
            labels = np.array([[0], [1], [0], [1]], dtype=np.uint8)
            arrays[f"{split}_images"] = np.stack([np.full((8, 8), 40 * s + 50 * i, np.uint8) for i in range(4)])
            arrays[f"{split}_labels"] = labels
        np.savez(folder / "exmnist.npz", **arrays)  # type: ignore[arg-type]
        return {"name": "ex_medmnist", "format": "medmnist", "root": str(folder), "folder": "exmnist",
                "classnames": ["normal", "pneumonia"]}
