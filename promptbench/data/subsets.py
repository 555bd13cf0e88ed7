"""Portable few-shot subsets: one JSON file per (dataset, K, seed), written by ``promptbench splits export`` and
read by a run with ``protocol.subset_file=<file or folder>`` instead of sampling.

A subset file lists the K-shot train and min(K, 4)-shot val images of every class (paths relative to the
dataset's image folder, labels of the split file), with the sampler and seed that drew them and the hash of the
split file they came from. Base-to-novel runs keep the base classes of it, as the reference code does.

    promptbench splits export dataset=btmri,ctkidney shots=1,2,4,8,16 seeds=1,2,3 [sampler=dassl] [out=DIR]
"""

from __future__ import annotations

import copyreg
import json
import logging
import pickle
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptbench.config import compose
from promptbench.config.overrides import quiet_launcher_schema_warning
from promptbench.core.hashing import content_hash_of
from promptbench.data.fewshot import SAMPLERS, draw_subsets, val_shots, write_manifest
from promptbench.data.readers import cfg_get, read_dataset
from promptbench.data.records import DatasetSplits, Record, records_to_lists, stable_hash

__all__ = ["FORMAT", "subset_document", "subset_name", "resolve_subset_file", "load_subset", "read_reference_pickle",
           "export_main"]

log = logging.getLogger("promptbench")

FORMAT = "promptbench-subset/1"
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)


def subset_name(dataset: str, shots: int, seed: int) -> str:
    """Relative path of a subset inside an export folder: ``<dataset>/shots_<K>-seed_<S>.json``."""
    return f"{dataset}/shots_{int(shots)}-seed_{int(seed)}.json"


def subset_document(splits: DatasetSplits, train: Sequence[Record], val: Sequence[Record], *, dataset: str,
                    folder: str, shots: int, seed: int, sampler: str) -> dict[str, Any]:
    """The JSON-ready subset file (``content_hash`` covers everything else in it)."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "dataset": dataset,
        "folder": folder,
        "shots": int(shots),
        "val_shots": val_shots(int(shots)),
        "seed": int(seed),
        "sampler": sampler,
        "split_hash": splits.split_hash,
        "classnames": list(splits.classnames),
        "paths": "relative to the dataset's image folder (<root>/<folder>/<folder>/ for the BiomedCoOp layout)",
        "train": records_to_lists(train),
        "val": records_to_lists(val),
    }
    doc["content_hash"] = stable_hash(doc)
    return doc


def resolve_subset_file(value: str | Path, dataset: str, shots: int, seed: int) -> Path:
    """``value`` itself when it is a file; ``<value>/<dataset>/shots_<K>-seed_<S>.json`` when it is a folder."""
    path = Path(str(value)).expanduser()
    if path.is_dir():
        path = path / subset_name(dataset, shots, seed)
    if not path.is_file():
        raise FileNotFoundError(f"protocol.subset_file: no subset file at {path}; write one with "
                                f"'promptbench splits export dataset={dataset} shots={shots} seeds={seed}'")
    return path


def _records(doc: dict[str, Any], part: str, path: Path) -> list[Record]:
    entries = doc.get(part)
    if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 2 for e in entries):
        raise ValueError(f"{path}: '{part}' must be a list of [path, label] pairs")
    return [Record(str(key), int(label)) for key, label in entries]


def load_subset(path: str | Path, splits: DatasetSplits, *, folder: str, shots: int, seed: int
                ) -> tuple[list[Record], list[Record], dict[str, Any]]:
    """Read and check a subset file against the run's dataset, K and subset seed.

    Returns (train, val, source) where ``source`` describes the file for the manifest. Every check failure
    raises ``ValueError`` with one line naming the file, the field and the fix.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable subset file ({type(err).__name__}: {err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a promptbench subset file (expected format {FORMAT!r}, got "
                         f"{doc.get('format') if isinstance(doc, dict) else type(doc).__name__!r})")
    if str(doc.get("folder")) != folder:
        raise ValueError(f"{path}: subset of dataset folder {doc.get('folder')!r} ({doc.get('dataset')}), but this "
                         f"run reads {folder!r}; pick the file exported for this dataset")
    if int(doc.get("shots", -1)) != int(shots):
        raise ValueError(f"{path}: subset has shots={doc.get('shots')} but the run has shots={shots}; "
                         f"set shots={doc.get('shots')} or use the K={shots} file")
    if int(doc.get("seed", -1)) != int(seed):
        raise ValueError(f"{path}: subset was drawn with seed {doc.get('seed')} but the run expects subset seed "
                         f"{seed}; set protocol.subset_seed={doc.get('seed')} (training seed stays seed=...) or "
                         "use the matching file")
    if list(doc.get("classnames") or []) != list(splits.classnames):
        raise ValueError(f"{path}: classnames {doc.get('classnames')} differ from the dataset's "
                         f"{list(splits.classnames)}; the file belongs to another split or label order")
    train, val = _records(doc, "train", path), _records(doc, "val", path)
    for part, records, pool in (("train", train, splits.train), ("val", val, splits.val)):
        labels = {r.key: r.label for r in pool}
        for r in records:
            if r.key not in labels:
                raise ValueError(f"{path}: {part} image {r.key!r} is not in the dataset's {part} split; "
                                 "the file was exported from a different split file")
            if labels[r.key] != r.label:
                raise ValueError(f"{path}: {part} image {r.key!r} has label {r.label} in the file but "
                                 f"{labels[r.key]} in the split file")
    actual = content_hash_of(doc)
    if doc.get("content_hash") != actual:
        raise ValueError(f"{path}: content_hash {doc.get('content_hash')} does not match the file's content "
                         f"({actual}): it was edited; re-export it ('promptbench splits export "
                         f"dataset={doc.get('dataset')} shots={doc.get('shots')} seeds={doc.get('seed')}'), or if "
                         f"the edit is intended set \"content_hash\": \"{actual}\" (a subset of its own)")
    _check_counts(path, train, val, splits, int(shots))
    if doc.get("split_hash") != splits.split_hash:
        log.warning("%s: drawn from split %s, the dataset's split is %s; every listed image was found with its "
                    "label, so the subset is used as is", path, doc.get("split_hash"), splits.split_hash)
    source = {"subset_file": str(path), "content_hash": doc.get("content_hash"), "sampler": doc.get("sampler"),
              "seed": int(doc["seed"]), "file_split_hash": doc.get("split_hash")}
    return train, val, source


def _check_counts(path: Path, train: Sequence[Record], val: Sequence[Record], splits: DatasetSplits,
                  shots: int) -> None:
    """A K-shot subset has each image once and min(K, available) images of every class (val: min(K, 4))."""
    for part, records, pool, k in (("train", train, splits.train, shots), ("val", val, splits.val, val_shots(shots))):
        listed, entries = Counter(r.key for r in records), Counter(r.key for r in pool)
        twice = next((key for key, n in listed.items() if n > entries[key]), None)  # more often than in the split
        if twice is not None:
            raise ValueError(f"{path}: {part} image {twice!r} is listed twice; a few-shot subset lists each image "
                             "once (re-export the file)")
        have = {c: 0 for c in range(len(splits.classnames))}
        available = dict(have)
        for r in records:
            have[r.label] = have.get(r.label, 0) + 1
        for r in pool:
            available[r.label] = available.get(r.label, 0) + 1
        for label, n in have.items():
            want = min(k, available.get(label, 0))
            if n != want:
                name = splits.classnames[label] if 0 <= label < len(splits.classnames) else label
                raise ValueError(f"{path}: {part} has {n} image(s) of class {name!r} but a {shots}-shot subset of "
                                 f"this split has {want}; the file was edited or is not a {shots}-shot subset "
                                 "(re-export it)")


# ----------------------------------------------------------------------------------------- reference pickles


class _Datum:
    """Stand-in for Dassl's ``Datum`` while unpickling a reference ``shot_K-seed_S.pkl`` (attributes only)."""


class _DatumUnpickler(pickle.Unpickler):
    """Unpickles only dicts/lists of Dassl ``Datum`` objects; any other class is refused (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "Datum" and module.startswith("dassl."):
            return _Datum
        if (module, name) == ("copyreg", "_reconstructor"):
            return copyreg._reconstructor
        if (module, name) == ("builtins", "object"):
            return object
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a few-shot pickle holds only Dassl Datum objects")


def _relative_key(impath: str, keys: set[str]) -> str | None:
    parts = impath.replace("\\", "/").split("/")
    return next(("/".join(parts[i:]) for i in range(len(parts)) if "/".join(parts[i:]) in keys), None)


def read_reference_pickle(path: str | Path, splits: DatasetSplits) -> tuple[list[Record], list[Record]]:
    """(train, val) of a reference few-shot cache (``<root>/<NAME>/split_fewshot/shot_K-seed_S.pkl``).

    The pickle stores absolute image paths of the machine that wrote it; each is matched to the split file's
    relative path it ends with, and its label must equal the split file's.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = _DatumUnpickler(fh).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
        raise ValueError(f"{path}: not a readable reference few-shot pickle ({err})") from None
    if not isinstance(data, dict) or not {"train", "val"} <= set(data):
        raise ValueError(f"{path}: expected a dict with 'train' and 'val' lists (Dassl split_fewshot pickle)")
    out: list[list[Record]] = []
    for part, pool in (("train", splits.train), ("val", splits.val)):
        labels = {r.key: r.label for r in pool}
        records = []
        for item in data[part]:
            impath, label = str(getattr(item, "_impath", "")), int(getattr(item, "_label", -1))
            key = _relative_key(impath, set(labels))
            if key is None:
                raise ValueError(f"{path}: {part} image {impath} matches no path of the dataset's {part} split")
            if labels[key] != label:
                raise ValueError(f"{path}: {part} image {key!r} has label {label} in the pickle but {labels[key]} "
                                 "in the split file")
            records.append(Record(key, label))
        out.append(records)
    return out[0], out[1]


def import_reference_pickle(path: str | Path, argv: Sequence[str]) -> Path:
    """``splits import <pkl> dataset=<name> [sampler-free]`` → a subset file (K and seed from the file name)."""
    import re


    path = Path(path)
    match = re.fullmatch(r"shot_(\d+)-seed_(-?\d+)\.pkl", path.name)
    opts, overrides = parse_export_args(argv)
    if match is None:
        raise ValueError(f"{path}: expected a reference file name shot_<K>-seed_<S>.pkl (K and seed come from it)")
    if len(opts["dataset"]) != 1:
        raise ValueError("splits import: name exactly one dataset, e.g. dataset=btmri")
    shots, seed = int(match.group(1)), int(match.group(2))
    cfg = _compose(opts["dataset"][0], overrides)
    splits = read_dataset(cfg.dataset)
    train, val = read_reference_pickle(path, splits)
    name = str(cfg.dataset.name)
    doc = subset_document(splits, train, val, dataset=name, folder=str(cfg_get(cfg.dataset, "folder")), shots=shots,
                          seed=seed, sampler="reference-pickle")
    out = Path(opts["out"] or Path(str(cfg.paths.output_dir)) / "subsets")
    return write_manifest(doc, out / subset_name(name, shots, seed))


# ----------------------------------------------------------------------------------------- CLI


def _ints(text: str, key: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"splits export: {key}={text!r} must be comma-separated integers") from None


def parse_export_args(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``key=value`` arguments of ``splits export``; other ``a.b=c`` overrides pass to config composition."""
    opts: dict[str, Any] = {"dataset": None, "shots": list(DEFAULT_SHOTS), "seeds": list(DEFAULT_SEEDS),
                            "sampler": "dassl", "out": None}
    overrides: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(f"splits export: argument {arg!r} is not key=value (e.g. dataset=btmri shots=16)")
        if key == "dataset":
            opts["dataset"] = [v for v in value.split(",") if v]
        elif key in ("shots", "seeds", "seed"):
            opts["shots" if key == "shots" else "seeds"] = _ints(value, key)
        elif key in ("sampler", "protocol.sampler"):
            if value not in SAMPLERS:
                raise ValueError(f"splits export: sampler={value!r} is not one of {SAMPLERS}")
            opts["sampler"] = value
        elif key == "out":
            opts["out"] = value
        else:
            overrides.append(arg)
    if not opts["dataset"]:
        raise ValueError("splits export: say which datasets, e.g. dataset=btmri or dataset=btmri,ctkidney,kneexray")
    if any(k < 1 for k in opts["shots"]):
        raise ValueError(f"splits export: shots={opts['shots']} must be >= 1 (K = 0 means the whole split)")
    return opts, overrides


def _compose(name: str, overrides: Sequence[str]) -> Any:
    from hydra.errors import HydraException


    try:
        return compose([f"dataset={name}", *overrides])
    except HydraException as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"splits: cannot compose dataset={name} {' '.join(overrides)}: {first} "
                         "('promptbench list' shows the datasets)") from None


def export_subsets(argv: Sequence[str]) -> list[Path]:
    """Write one subset file per (dataset, K, seed); returns their paths."""

    opts, overrides = parse_export_args(argv)
    written: list[Path] = []
    for name in opts["dataset"]:
        cfg = _compose(name, overrides)
        out = Path(opts["out"] or Path(str(cfg.paths.output_dir)) / "subsets")
        splits = read_dataset(cfg.dataset)
        folder = str(cfg_get(cfg.dataset, "folder"))
        for shots in opts["shots"]:
            for seed in opts["seeds"]:
                train, val = draw_subsets(splits.train, splits.val, sampler=opts["sampler"], shots=shots, seed=seed,
                                          dataset=str(cfg.dataset.name))
                doc = subset_document(splits, train, val, dataset=str(cfg.dataset.name), folder=folder,
                                      shots=shots, seed=seed, sampler=opts["sampler"])
                written.append(write_manifest(doc, out / subset_name(str(cfg.dataset.name), shots, seed)))
    return written


SPLITS_USAGE = """usage: promptbench splits export dataset=<name>[,<name>...] [shots=1,2,4,8,16] [seeds=1,2,3]
                                [sampler=dassl|promptbench] [out=<folder>] [paths.data_root=...]

       promptbench splits import <root>/<NAME>/split_fewshot/shot_<K>-seed_<S>.pkl dataset=<name> [out=<folder>]

export writes <out>/<dataset>/shots_<K>-seed_<S>.json (default out: <paths.output_dir>/subsets); import turns a
few-shot cache of the reference code (BiomedCoOp/Dassl) into such a file. A run uses one with
protocol.subset_file=<file>, or protocol.subset_file=<out> to pick the file of its dataset, shots and seed."""


def export_main(argv: Sequence[str]) -> int:
    """``promptbench splits export|import ...``."""

    quiet_launcher_schema_warning()
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(SPLITS_USAGE)
        return 0
    if argv[0] not in ("export", "import"):
        print(f"unknown splits command {argv[0]!r}\n{SPLITS_USAGE}", file=sys.stderr)
        return 2
    try:
        if argv[0] == "import":
            if len(argv) < 2 or "=" in argv[1]:
                raise ValueError("splits import: give the pickle first, e.g. splits import shot_16-seed_1.pkl "
                                 "dataset=btmri")
            written = [import_reference_pickle(argv[1], argv[2:])]
        else:
            written = export_subsets(argv[1:])
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"{len(written)} subset file(s) written")
    return 0
