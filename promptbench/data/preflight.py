"""Pre-flight of a dataset split, run once before any training, and the data fingerprint used for staleness.

:func:`preflight` checks what would otherwise fail late or pass silently: every listed file exists and opens
with an accepted image mode, every class has train and test images, no split needed for training or testing is
empty. It also warns (without stopping) about classes with fewer than K training images, duplicate entries
(within a split or shared between train and test) and images smaller than 2 pixels on a side. Problems name the
file and the entry (split file line where the entry can be found). Errors raise :class:`DataError` with one line
(the first problem and how many more); warnings are logged once per process and dataset.

:func:`content_fingerprint` hashes what determines the data a run sees: the split hash (keys, labels, order), the
class names and the bytes (sha256) of every listed file (or of the npz file), each hashed once per file identity
(:mod:`promptbench.core.filehash`), so a warm check costs one ``stat`` per file. :func:`data_fingerprint` is the older,
cheaper stat fingerprint (sizes and mtimes), kept to check results that recorded only it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from promptbench.core.filehash import hashes
from promptbench.data.formats import Locate, format_of
from promptbench.data.readers import read_dataset
from promptbench.data.records import ACCEPTED_MODES, SPLITS, DatasetSplits, open_image, stable_hash

log = logging.getLogger("promptbench")

#: images whose shorter side is below this many pixels are reported
MIN_SIDE = 2


class DataError(ValueError):
    """The split cannot be trained or tested on as it is (one line: file, entry, problem)."""


@dataclass
class Report:
    """Problems found by :func:`preflight`: ``errors`` stop the run, ``warnings`` are shown once."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def raise_errors(self) -> None:
        if self.errors:
            more = f" (and {len(self.errors) - 1} more problem(s))" if len(self.errors) > 1 else ""
            raise DataError(self.errors[0] + more)


def preflight(splits: DatasetSplits, *, shots: int = 0, check_images: bool = True) -> Report:
    """Check ``splits`` (see the module docstring); ``shots`` > 0 enables the fewer-than-K warning."""
    report = Report()
    name = splits.name or "dataset"
    locate = format_of(splits).locator(splits)  # where a record is listed (its format knows)
    n_classes = len(splits.classnames)
    for split in ("train", "test"):
        if not splits.split(split):
            report.errors.append(f"{name}: the {split} split of {splits.source} is empty")
    for split in ("train", "test"):
        records = splits.split(split)
        if not records:
            continue
        counts = Counter(r.label for r in records)
        empty = [splits.classnames[c] for c in range(n_classes) if counts.get(c, 0) == 0]
        if empty:
            report.errors.append(f"{name}: {splits.source}: class(es) {empty} have no {split} images "
                                 f"(every class needs train and test images)")
        if split == "train" and shots > 0:
            short = {splits.classnames[c]: counts[c] for c in range(n_classes) if 0 < counts.get(c, 0) < shots}
            if short:
                report.warnings.append(f"{name}: fewer than shots={shots} train images for {short} "
                                       f"(those classes train on what there is)")
    seen: dict[str, str] = {}
    for split in SPLITS:
        keys = Counter(r.key for r in splits.split(split))
        dups = [k for k, n in keys.items() if n > 1]
        if dups:
            i = next(i for i, r in enumerate(splits.split(split)) if r.key == dups[0])
            report.warnings.append(f"{name}: {len(dups)} duplicate entr(ies) in the {split} split, first "
                                   f"{locate(split, i, dups[0])}")
        for k in keys:
            seen.setdefault(k, split)
    shared = sorted({r.key for r in splits.train} & {r.key for r in splits.test})
    if shared:
        report.warnings.append(f"{name}: {len(shared)} image(s) listed in both train and test, first {shared[0]}")
    if check_images:
        _check_files(splits, report, locate)
    return report


def _check_files(splits: DatasetSplits, report: Report, locate: Locate) -> None:
    name = splits.name or "dataset"
    if splits.npz_path is not None:
        _check_npz(splits, report)
        return
    assert splits.image_root is not None
    tiny: list[str] = []
    checked: set[str] = set()
    for split in SPLITS:
        for i, record in enumerate(splits.split(split)):
            if record.key in checked:
                continue
            checked.add(record.key)
            path = splits.image_root / record.key
            if not path.is_file():
                report.errors.append(f"{name}: image missing: {locate(split, i, record.key)}")
                continue
            try:
                with open_image(path) as img:  # PIL's decompression-bomb guard names the file
                    mode, size = img.mode, img.size
            except (OSError, ValueError, SyntaxError) as err:
                report.errors.append(f"{name}: cannot open {locate(split, i, record.key)}: "
                                     f"{str(err).splitlines()[0] if str(err) else type(err).__name__}")
                continue
            if mode not in ACCEPTED_MODES:
                report.errors.append(f"{name}: image mode {mode!r} is not supported: {locate(split, i, record.key)}")
            if min(size) < MIN_SIDE:
                tiny.append(f"{locate(split, i, record.key)} is {size[0]}x{size[1]}")
    if tiny:
        report.warnings.append(f"{name}: {len(tiny)} image(s) smaller than {MIN_SIDE} px on a side, first {tiny[0]}")


def _check_npz(splits: DatasetSplits, report: Report) -> None:
    name = splits.name or "dataset"
    for split in SPLITS:
        records = splits.split(split)
        if not records:
            continue
        try:
            images = splits._npz_images(split)
        except KeyError:
            report.errors.append(f"{name}: {splits.npz_path} has no '{split}_images' array")
            continue
        if len(images) != len(records):
            report.errors.append(f"{name}: {splits.npz_path} has {len(images)} {split}_images but "
                                 f"{len(records)} {split}_labels")
        elif images.ndim >= 3 and min(images.shape[1:3]) < MIN_SIDE:
            report.warnings.append(f"{name}: {splits.npz_path} {split}_images are {images.shape[1:3]} px")


# --------------------------------------------------------------------------------------------- fingerprint
def data_fingerprint(splits: DatasetSplits) -> str:
    """sha256 (16 hex) of the split hash, the class names and every listed file's (size, mtime_ns)."""
    stats: list[Any] = []
    if splits.npz_path is not None:
        st = os.stat(splits.npz_path)
        stats.append([str(splits.npz_path.name), st.st_size, st.st_mtime_ns])
    elif splits.image_root is not None:
        for key in sorted({r.key for split in SPLITS for r in splits.split(split)}):
            try:
                st = os.stat(splits.image_root / key)
                stats.append([key, st.st_size, st.st_mtime_ns])
            except OSError:
                stats.append([key, None, None])
    return stable_hash({"split": splits.split_hash, "classes": list(splits.classnames), "files": stats})


def content_fingerprint(splits: DatasetSplits) -> str:
    """sha256 (16 hex) of the split hash, the class names and every listed file's sha256 (a missing file: None).
    A same-size replacement with its mtime restored changes it (file hashes are keyed by inode and ctime too)."""

    if splits.npz_path is not None:
        files: list[Any] = [[str(splits.npz_path.name), hashes([splits.npz_path])[0]]]
    elif splits.image_root is not None:
        keys = sorted({r.key for split in SPLITS for r in splits.split(split)})
        files = [list(pair) for pair in zip(keys, hashes(splits.image_root / k for k in keys))]
    else:
        files = []
    return stable_hash({"split": splits.split_hash, "classes": list(splits.classnames), "content": files})


def fingerprints(dataset_cfg: Any, *, content: bool = True) -> dict[str, str]:
    """``{"data": stat fingerprint, "data_content": content fingerprint}`` of a dataset config as it is now (the
    content one only with ``content``); ``{}`` when the data cannot be read (no data check is then made)."""

    try:
        splits = read_dataset(dataset_cfg)
        out = {"data": data_fingerprint(splits)}
        if content:
            out["data_content"] = content_fingerprint(splits)
        return out
    except Exception:  # noqa: BLE001 - unreadable data: no data check (the run itself reports why)
        return {}


_REPORTED: set[str] = set()


def check_once(splits: DatasetSplits, *, shots: int) -> str:
    """Pre-flight ``splits`` (warnings logged once per process and dataset; errors raise :class:`DataError`
    every time) and return its data fingerprint."""
    fingerprint = data_fingerprint(splits)
    key = f"{fingerprint}/{shots}"
    if key in _REPORTED:
        return fingerprint
    report = preflight(splits, shots=shots)
    report.raise_errors()
    for warning in report.warnings:
        log.warning("data: %s", warning)
    _REPORTED.add(key)
    return fingerprint


__all__ = ["DataError", "Report", "preflight", "data_fingerprint", "content_fingerprint", "fingerprints",
           "check_once"]
