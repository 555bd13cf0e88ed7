"""``format: csv``: a table listing each image's path and label (the way CheXpert, ISIC and most others ship).

Either one table with a split column, or one table per split::

    csv: labels.csv                 # <root>/<folder>/labels.csv (or an absolute path)
    split_column: split             # default "split"
    split_values: {train: train, val: [val, valid], test: test}   # each split's value(s): this is the default

    csv_files: {train: train.csv, val: val.csv, test: test.csv}   # instead of csv: no val file = empty val split

    path_column: path               # default "path": image paths relative to image_root
    label_column: label             # default "label": class names, or integer indices into classnames
    image_root: images              # default <root>/<folder>; relative to it, or absolute
    label_kind: auto                # auto | name | index (see below)
    delimiter: ","                  # default "," ("\\t" for .tsv files)

Labels are class names (order from ``dataset.classnames``; without it, sorted unique names) or integer indices
into ``dataset.classnames`` (required then; ``1.0`` counts as 1). ``auto`` reads names when every label is one of
``classnames`` or some label is not a number, indices otherwise. Names match ``classnames`` ignoring case, ``_``
and repeated spaces. Records keep the table's row order.

What the reader does deliberately: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped; header names and
values are stripped of surrounding whitespace; rows with no value at all are skipped; Windows ``\\`` separators
become ``/``; an absolute path inside the image folder becomes relative to it. It refuses, in one line naming the
file, line and column: a missing column (with close matches), a row with more values than the header (an
unquoted comma), an empty path or label, a path outside the image folder (absolute elsewhere, or ``..``), an
unknown split value or label, an out-of-range or non-integer index, duplicate class names, and a split whose first
image does not exist (usually a wrong ``image_root``). Pre-flight messages name the line of a bad image.
"""

from __future__ import annotations

import csv
import ntpath
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptbench.core.registry import did_you_mean
from promptbench.data.formats import DATASET_FORMATS, DatasetFormat, Locate, write_tiny_image
from promptbench.data.readers import (
    ROOT_HINT,
    cfg_get,
    class_key,
    dataset_basics,
    finish_splits,
    refuse_duplicate_classes,
)
from promptbench.data.records import SPLITS, DatasetSplits, Record, escapes_root

DEFAULT_SPLIT_VALUES = {"train": ["train"], "val": ["val", "valid"], "test": ["test"]}
LABEL_KINDS = ("auto", "name", "index")
_INTEGER = re.compile(r"[+-]?\d+(\.0*)?")


@dataclass(frozen=True)
class _Row:
    file: Path
    line: int
    split: str
    key: str
    label: str


@DATASET_FORMATS.register("csv")
class CsvFormat(DatasetFormat):
    """A CSV (or TSV) table of image paths and labels, with a split column or one table per split."""

    def read(self, cfg: Any) -> DatasetSplits:
        name, root, folder, expected = dataset_basics(cfg)
        base = root / folder
        image_root = _path(cfg_get(cfg, "image_root"), base) or base
        path_col = str(cfg_get(cfg, "path_column", "path"))
        label_col = str(cfg_get(cfg, "label_column", "label"))
        kind = str(cfg_get(cfg, "label_kind", "auto"))
        if kind not in LABEL_KINDS:
            raise ValueError(f"{name}: dataset.label_kind={kind!r} is not one of {LABEL_KINDS}")
        tables = _tables(name, cfg, base)
        values = _split_values(name, cfg)
        rows: list[_Row] = []
        for file, fixed_split in tables:
            table = _Table(name, file, cfg_get(cfg, "delimiter"))
            paths, labels = table.column(path_col, "path_column"), table.column(label_col, "label_column")
            split_at = None if fixed_split else table.column(str(cfg_get(cfg, "split_column", "split")),
                                                             "split_column")
            for line, cells in table.rows:
                where = f"{name}: {file} line {line}"
                split = fixed_split if split_at is None else _split_of(where, table.header[split_at],
                                                                       cells[split_at], values)
                key = _key(f"{where} column {path_col!r}", cells[paths], image_root)
                if not cells[labels]:
                    raise ValueError(f"{where} column {label_col!r}: empty label")
                rows.append(_Row(file, line, split, key, cells[labels]))
        if not any(row.split == "train" for row in rows):
            raise ValueError(f"{name}: no train rows in {', '.join(str(f) for f, _ in tables)}")
        classnames, label_of = _labels(name, rows, expected, kind, label_col)
        records: dict[str, list[Record]] = {s: [] for s in SPLITS}
        lines: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
        shown = {file: str(file) for file, _ in tables}  # one string per table, shared by its rows
        for row in rows:
            records[row.split].append(Record(row.key, label_of(row)))
            lines[row.split].append((shown[row.file], row.line))
        first = {r.split: r for r in reversed(rows)}
        for split in SPLITS:  # cheap sanity check (a wrong image_root): the first image of each split exists
            row = first.get(split)
            if row is not None and not (image_root / row.key).is_file():
                raise FileNotFoundError(
                    f"{name}: image {image_root / row.key} not found ({row.file} line {row.line} column "
                    f"{path_col!r}); paths are relative to {image_root}: fix dataset.image_root or {ROOT_HINT}.")
        source = rows[0].file if len({r.file for r in rows}) == 1 else base
        return finish_splits(name, records, classnames, image_root=image_root, source=source,
                             intensity=cfg_get(cfg, "intensity", "dtype"), format_info={"lines": lines})

    def locator(self, splits: DatasetSplits) -> Locate:
        """``<table> line L (<split>[i], <key>)``."""
        lines = splits.format_info.get("lines", {})
        default = super().locator(splits)

        def locate(split: str, index: int, key: str) -> str:
            at = lines.get(split, [])
            if index >= len(at):
                return default(split, index, key)
            file, line = at[index]
            return f"{file} line {line} ({split}[{index}], {key})"

        return locate

    def write_example(self, folder: Path) -> dict[str, Any]:
        """``folder/excsv/labels.csv`` (with a byte-order mark, a ``valid`` split and class names in another case)
        listing ``folder/excsv/images/<class>/<split>_<i>.png``: 2 classes, 2 images per split."""
        lines = ["image,diagnosis,split"]
        for s, (split, value) in enumerate((("train", "train"), ("val", "valid"), ("test", "Test"))):
            for label, cls in enumerate(("benign", "malignant")):
                for i in range(2):
                    rel = f"{cls}/{split}_{i}.png"
                    write_tiny_image(folder / "excsv" / "images" / rel, 40 * s + 100 * label + 10 * i)
                    lines.append(f"{rel}, {cls.upper() if i else cls},{value}")
        (folder / "excsv" / "labels.csv").write_text("\ufeff" + "\r\n".join(lines) + "\r\n", encoding="utf-8")
        return {"name": "ex_csv", "format": "csv", "root": str(folder), "folder": "excsv", "csv": "labels.csv",
                "image_root": "images", "path_column": "image", "label_column": "diagnosis",
                "classnames": ["benign", "malignant"]}


def _path(value: Any, base: Path) -> Path | None:
    """``value`` as a path, relative ones under ``base`` (None when unset)."""
    if value in (None, ""):
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def _tables(name: str, cfg: Any, base: Path) -> list[tuple[Path, str]]:
    """``[(table, split or "")]``: the one table (``dataset.csv``), or one per split (``dataset.csv_files``)."""
    one, per_split = cfg_get(cfg, "csv"), cfg_get(cfg, "csv_files")
    if bool(one) == bool(per_split):
        raise ValueError(f"{name}: set either dataset.csv=<table with a split column> or dataset.csv_files="
                         f"{{train: ..., val: ..., test: ...}} (one table per split), "
                         f"not {'both' if one else 'neither'}")
    if one:
        path = _path(one, base)
        assert path is not None
        if not path.is_file():
            raise FileNotFoundError(f"{name}: table {path} not found (dataset.csv, relative to {base}); {ROOT_HINT}.")
        return [(path, "")]
    if not isinstance(per_split, Mapping):
        raise ValueError(f"{name}: dataset.csv_files must map splits to tables, e.g. {{train: train.csv, "
                         f"test: test.csv}}, not {per_split!r}")
    unknown = sorted(set(per_split) - set(SPLITS))
    if unknown:
        raise ValueError(f"{name}: dataset.csv_files has unknown split(s) {unknown}; use {list(SPLITS)}")
    tables = []
    for split in SPLITS:
        path = _path(per_split.get(split), base)
        if path is None:
            if split != "val":
                raise ValueError(f"{name}: dataset.csv_files has no {split} table (only val may be left out)")
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{name}: {split} table {path} not found (dataset.csv_files.{split}, relative "
                                    f"to {base}); {ROOT_HINT}.")
        tables.append((path, split))
    return tables


class _Table:
    """A CSV file's header and its non-empty rows (values stripped), read once."""

    def __init__(self, name: str, path: Path, delimiter: Any) -> None:
        self.name, self.path = name, path
        sep = str(delimiter) if delimiter not in (None, "") else ("\t" if path.suffix.lower() == ".tsv" else ",")
        self.header: list[str] = []
        self.rows: list[tuple[int, list[str]]] = []
        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                reader = csv.reader(fh, delimiter=sep)
                for cells in reader:
                    values = [c.strip() for c in cells]
                    if not any(values):
                        continue  # an empty line, or one with only delimiters
                    if not self.header:
                        self.header = [values[0].lstrip("\ufeff"), *values[1:]]
                        continue
                    if len(values) > len(self.header) and any(values[len(self.header):]):
                        raise ValueError(f"{name}: {path} line {reader.line_num} has {len(values)} values but the "
                                         f"header has {len(self.header)} (a value with an unquoted {sep!r}? quote "
                                         f"it)")
                    values += [""] * (len(self.header) - len(values))
                    self.rows.append((reader.line_num, values[:len(self.header)]))
        except UnicodeDecodeError as err:
            raise ValueError(f"{name}: {path} is not UTF-8 text ({err.reason}); save it as UTF-8 (Excel: "
                             f"\"CSV UTF-8\")") from None
        except csv.Error as err:
            raise ValueError(f"{name}: {path} is not a readable table ({err})") from None
        if not self.header:
            raise ValueError(f"{name}: {path} is empty (expected a header line, then one line per image)")

    def column(self, column: str, setting: str) -> int:
        """The index of ``column`` (one line naming the table, its columns and the setting otherwise)."""
        found = [i for i, h in enumerate(self.header) if h == column]
        if len(found) > 1:
            raise ValueError(f"{self.name}: {self.path} has {len(found)} columns named {column!r}; rename all but one")
        if not found:
            raise ValueError(f"{self.name}: {self.path} has no column {column!r}{did_you_mean(column, self.header)} "
                             f"(columns: {', '.join(self.header)}); set dataset.{setting}")
        return found[0]


def _split_values(name: str, cfg: Any) -> dict[str, str]:
    """``{value (casefolded): split}`` from ``dataset.split_values``."""
    configured = cfg_get(cfg, "split_values")
    mapping = DEFAULT_SPLIT_VALUES if not configured else configured
    if not isinstance(mapping, Mapping) or set(mapping) - set(SPLITS):
        raise ValueError(f"{name}: dataset.split_values must map {list(SPLITS)} to the split column's values, "
                         f"e.g. {{train: train, val: valid, test: test}}, not {configured!r}")
    out: dict[str, str] = {}
    for split, values in mapping.items():
        for value in [values] if isinstance(values, (str, int)) else list(values or []):
            key = str(value).strip().casefold()
            if out.setdefault(key, split) != split:
                raise ValueError(f"{name}: dataset.split_values gives {value!r} to both {out[key]} and {split}")
    return out


def _split_of(where: str, column: str, value: str, values: dict[str, str]) -> str:
    """The split a split-column value names (one line listing the known values otherwise)."""
    split = values.get(value.casefold())
    if split is None:
        what = "empty split value" if not value else f"split value {value!r} is not one of {', '.join(values)}"
        raise ValueError(f"{where} column {column!r}: {what}; set dataset.split_values={{train: ..., val: ..., "
                         f"test: ...}} (values compared ignoring case)")
    return split


def _key(where: str, value: str, image_root: Path) -> str:
    """The record key of a path cell: relative to ``image_root``, ``/``-separated, normalised."""
    if not value:
        raise ValueError(f"{where}: empty path")
    path = value.replace("\\", "/")
    if posixpath.isabs(path) and not ntpath.splitdrive(value)[0]:
        inside = posixpath.normpath(os.path.abspath(image_root).replace("\\", "/"))
        normal = posixpath.normpath(path)
        if normal.startswith(inside.rstrip("/") + "/"):
            path = normal[len(inside.rstrip("/")) + 1:]
    key = posixpath.normpath(path)
    if escapes_root(key) or key == ".":
        raise ValueError(f"{where}: {value!r} is outside the image folder {image_root} (absolute elsewhere, or "
                         f"escaping with '..'); make paths relative to it or set dataset.image_root")
    return key


def _labels(name: str, rows: list[_Row], expected: list[str] | None, kind: str, column: str
            ) -> tuple[list[str], Callable[[_Row], int]]:
    """The class names and ``row -> label index``, from class-name or integer labels (see the module docstring)."""
    by_key = {class_key(c): i for i, c in enumerate(expected or [])}
    if kind == "auto":
        if expected and all(class_key(r.label) in by_key for r in rows):
            kind = "name"
        else:
            kind = "index" if rows and all(_is_number(r.label) for r in rows) else "name"

    def where(row: _Row) -> str:
        return f"{name}: {row.file} line {row.line} column {column!r}"

    if kind == "index":
        if not expected:
            row = rows[0]
            raise ValueError(f"{where(row)}: integer labels (e.g. {row.label!r}) need dataset.classnames, "
                             f"listed in label order")
        n = len(expected)
        for row in rows:
            if not _INTEGER.fullmatch(row.label):
                raise ValueError(f"{where(row)}: label {row.label!r} is not an integer index into dataset.classnames")
            if not 0 <= int(float(row.label)) < n:
                raise ValueError(f"{where(row)}: label {row.label} is outside 0..{n - 1} (dataset.classnames lists "
                                 f"{n})")
        return list(expected), lambda row: int(float(row.label))
    if expected:
        for row in rows:
            if class_key(row.label) not in by_key:
                raise ValueError(f"{where(row)}: label {row.label!r} is not one of dataset.classnames {expected}"
                                 f"{did_you_mean(row.label, expected)}")
        return list(expected), lambda row: by_key[class_key(row.label)]
    classnames = sorted({r.label for r in rows})
    refuse_duplicate_classes(name, classnames, f"the {column!r} column of {rows[0].file}")
    index = {c: i for i, c in enumerate(classnames)}
    return classnames, lambda row: index[row.label]


def _is_number(value: str) -> bool:
    try:
        return float(value) == float(value) and abs(float(value)) != float("inf")
    except ValueError:
        return False
