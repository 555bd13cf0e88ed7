"""K-shot sampling, few-shot manifests and the base/novel class split.

Protocol facts (CoOp/BiomedCoOp, paraphrased in ``shared/reference/biomed_dpt_biomedcoop.md`` §1.2-1.3, §3):
K images per class are drawn from the train split; the few-shot val set has min(K, 4) per class drawn from
the val split; base classes are the first ceil(n/2) label ids and novel classes the rest, relabelled from 0.

Two samplers (``protocol.sampler``):

* ``dassl`` (default): the draw of the reference code (BiomedCoOp ``datasets/*.py`` calling Dassl's
  ``generate_fewshot_dataset`` right after ``set_random_seed(seed)``), image for image: one ``random.Random(seed)``
  stream; train first, then val with min(K, 4), each grouped by label in the order labels first appear in the
  split file, ``sample(items, K)`` per group (a group with fewer than K items is taken whole, in file order, and
  draws nothing from the stream). The draw covers all classes; base/novel subsampling comes after it.
* ``promptbench``: a dedicated ``random.Random`` per split seeded from sha256 of (dataset, split, shots, seed), so
  a subset depends on nothing but those, output sorted by (label, key).

Neither touches the global ``random`` state.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from promptbench.core.fileio import write_atomic
from promptbench.data.records import Record, records_to_lists, stable_hash, stable_seed

__all__ = [
    "SAMPLERS",
    "dassl_few_shot",
    "draw_subsets",
    "sample_few_shot",
    "val_shots",
    "few_shot_manifest",
    "manifest_hash",
    "write_manifest",
    "base_novel",
    "num_base_classes",
]

MAX_VAL_SHOTS = 4
SAMPLERS = ("dassl", "promptbench")


def _by_label(records: Iterable[Record]) -> dict[int, list[Record]]:
    groups: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.label].append(r)
    return groups


def sample_few_shot(records: Sequence[Record], shots: int, *, dataset: str, seed: int, split: str) -> list[Record]:
    """K = ``shots`` records per class (all of a class that has fewer; all records when ``shots <= 0``).

    Deterministic: depends only on the record set and (dataset, split, shots, seed), not on input order or any
    global RNG. Output is sorted by (label, key).
    """
    if shots <= 0:
        return sorted(records, key=lambda r: (r.label, r.key))
    rng = random.Random(stable_seed("few_shot", dataset, split, int(shots), int(seed)))
    out: list[Record] = []
    for _label, group in sorted(_by_label(records).items()):
        group = sorted(group, key=lambda r: r.key)
        out.extend(group if len(group) <= shots else rng.sample(group, shots))
    return sorted(out, key=lambda r: (r.label, r.key))


def dassl_few_shot(records: Sequence[Record], shots: int, rng: random.Random) -> list[Record]:
    """Dassl's ``generate_fewshot_dataset`` on one split, drawing from ``rng`` (advanced in place).

    Groups by label in first-appearance order; ``rng.sample(group, shots)`` when the group has at least ``shots``
    items, else the whole group in file order (no draw). ``shots < 1`` returns the records unchanged.
    """
    if shots < 1:
        return list(records)
    out: list[Record] = []
    for group in _by_label(records).values():  # dict order = first appearance in the split file
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def draw_subsets(
    train: Sequence[Record], val: Sequence[Record], *, sampler: str, shots: int, seed: int, dataset: str
) -> tuple[list[Record], list[Record]]:
    """The K-shot train and min(K, 4)-shot val subsets of ``sampler`` (over every class of the given records)."""
    if sampler == "dassl":
        rng = random.Random(int(seed))  # = random.seed(seed) in Dassl's set_random_seed, then the same calls
        return dassl_few_shot(train, shots, rng), dassl_few_shot(val, val_shots(shots), rng)
    if sampler == "promptbench":
        return (sample_few_shot(train, shots, dataset=dataset, seed=seed, split="train"),
                sample_few_shot(val, val_shots(shots), dataset=dataset, seed=seed, split="val"))
    raise ValueError(f"protocol.sampler={sampler!r} is not one of {SAMPLERS}")


def val_shots(shots: int) -> int:
    """Few-shot val size per class: min(K, 4); ``shots <= 0`` (the whole split) keeps the whole val split."""
    return 0 if shots <= 0 else min(shots, MAX_VAL_SHOTS)


def _counts(records: Sequence[Record]) -> dict[str, int]:
    groups = _by_label(records)
    return {str(label): len(groups[label]) for label in sorted(groups)}


def few_shot_manifest(
    train: Sequence[Record],
    val: Sequence[Record],
    *,
    dataset: str,
    shots: int,
    seed: int,
    split_hash: str | None = None,
    protocol: str | None = None,
    classnames: Sequence[str] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-ready description of the sampled subsets (keys + labels, per-class counts, short classes).

    ``short_classes`` lists, per split, labels that got fewer than the requested K (all their images were
    taken); it is empty when ``shots <= 0``. ``source`` says where the subsets came from (sampler and seed, or a
    subset file); it is left out when ``None``.
    """
    requested = {"train": int(shots), "val": val_shots(int(shots))}
    subsets = {"train": list(train), "val": list(val)}
    counts = {s: _counts(r) for s, r in subsets.items()}
    short = {s: {lab: n for lab, n in counts[s].items() if 0 < requested[s] and n < requested[s]} for s in subsets}
    manifest: dict[str, Any] = {
        "dataset": dataset,
        "protocol": protocol,
        "shots": int(shots),
        "val_shots": requested["val"],
        "seed": int(seed),
        "split_hash": split_hash,
        "classnames": list(classnames) if classnames is not None else None,
        "counts": counts,
        "short_classes": short,
        "train": records_to_lists(subsets["train"]),
        "val": records_to_lists(subsets["val"]),
    }
    if source is not None:
        manifest["source"] = dict(source)
    return manifest


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 (16 hex) of the canonical JSON of ``manifest``."""
    return stable_hash(manifest)


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` as JSON atomically (temp file in the same folder, then ``os.replace``)."""
    return write_atomic(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def num_base_classes(n_classes: int) -> int:
    """Number of base classes: ceil(n / 2)."""
    return math.ceil(n_classes / 2)


def base_novel(records: Sequence[Record], classnames: Sequence[str], subset: str) -> tuple[list[Record], list[str]]:
    """Restrict to ``subset`` in {"all", "base", "novel"}; novel labels are renumbered from 0."""
    n_base = num_base_classes(len(classnames))
    if subset == "all":
        return list(records), list(classnames)
    if subset == "base":
        return [r for r in records if r.label < n_base], list(classnames[:n_base])
    if subset == "novel":
        kept = [Record(r.key, r.label - n_base) for r in records if r.label >= n_base]
        return kept, list(classnames[n_base:])
    raise ValueError(f"subset must be 'all', 'base' or 'novel', got {subset!r}")
