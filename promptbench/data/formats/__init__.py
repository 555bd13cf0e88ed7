"""Dataset formats (``dataset.format``): one module of this package per format, found by the registry's scan.

A format is a :class:`DatasetFormat` subclass registered under its name::

    # promptbench/data/formats/my_format.py  (a new file is all a new format needs)
    from promptbench.data.formats import DATASET_FORMATS, DatasetFormat

    @DATASET_FORMATS.register("my_format")
    class MyFormat(DatasetFormat):
        def read(self, cfg): ...            # -> DatasetSplits
        def write_example(self, folder): ...  # a tiny dataset in `folder` -> its dataset config

Formats living in another distribution register through the ``promptbench.dataset_formats`` entry-point group
(``my_format = "my_pkg.formats:MyFormat"``). ``tests/test_contract_formats.py`` reads every registered format's
example and checks the split invariants, so a format without :meth:`DatasetFormat.write_example` fails it.

Everything format-specific lives on the format: how to read it (:meth:`~DatasetFormat.read`), where its records'
images are (:attr:`~DatasetFormat.storage`: files under ``image_root`` or arrays of an npz file, the two kinds
:class:`~promptbench.data.records.DatasetSplits` can load) and how a problem with one record is located in its
listing (:meth:`~DatasetFormat.locator`, used by the pre-flight messages).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from promptbench.core.registry import Registry, UnknownName
from promptbench.data.records import DatasetSplits

__all__ = ["DATASET_FORMATS", "DatasetFormat", "UnknownFormat", "dataset_format", "format_of", "write_tiny_image"]

#: every dataset format by name; filled from this package's modules and the ``promptbench.dataset_formats`` group
DATASET_FORMATS: Registry[type[DatasetFormat]] = Registry(
    "dataset.format", package=__name__, entry_point_group="promptbench.dataset_formats")

#: ``(split, index in the split, record key) -> "where the record is listed"`` (pre-flight messages)
Locate = Callable[[str, int, str], str]


class UnknownFormat(UnknownName, ValueError):
    """``dataset.format`` names no registered format (a ``ValueError`` too: callers catching reader errors see it)."""


class DatasetFormat:
    """One way of laying out a dataset on disk. Subclasses implement :meth:`read` and :meth:`write_example`."""

    #: ``"files"``: record keys are paths under ``DatasetSplits.image_root``; ``"npz"``: keys are
    #: ``"<split>/<index>"`` into the ``<split>_images`` arrays of ``DatasetSplits.npz_path``
    storage: ClassVar[Literal["files", "npz"]] = "files"

    def read(self, cfg: Any) -> DatasetSplits:
        """Read the dataset described by ``cfg`` (a ``conf/dataset/*.yaml`` node); errors are one line naming the
        file (and entry) and what to change."""
        raise NotImplementedError(f"{type(self).__name__}.read")

    def write_example(self, folder: Path) -> dict[str, Any]:
        """Write a tiny valid dataset of this format (>= 2 classes, every class in train, val and test) under
        ``folder`` and return the dataset config that reads it. Required by the dataset-format contract test."""
        raise NotImplementedError(f"dataset format {type(self).__name__} has no write_example(folder) -> cfg; "
                                  f"every format needs one for tests/test_contract_formats.py")

    def locator(self, splits: DatasetSplits) -> Locate:
        """Where a record of ``splits`` is listed, for pre-flight messages (default: its image file and index)."""

        def locate(split: str, index: int, key: str) -> str:
            where = splits.image_root / key if splits.image_root else f"{splits.source} {key}"
            return f"{where} ({split}[{index}])"

        return locate


def dataset_format(name: str) -> DatasetFormat:
    """The format registered as ``name``; an unknown name is one :class:`UnknownFormat` line with close matches."""
    try:
        return DATASET_FORMATS.get(name, hint="see docs/datasets.md")()
    except UnknownName as err:
        raise UnknownFormat(str(err)) from None


def format_of(splits: DatasetSplits) -> DatasetFormat:
    """The format ``splits`` was read with (the base behaviour for splits built by hand or of an unknown format)."""
    if splits.format:
        try:
            return dataset_format(splits.format)
        except UnknownFormat:
            pass
    return DatasetFormat()


def write_tiny_image(path: Path, shade: int = 0, size: tuple[int, int] = (8, 8)) -> Path:
    """A small grey PNG (for :meth:`DatasetFormat.write_example`), its parent folders created."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, color=int(shade) % 256).save(path)
    return path
