"""What figures and reports need besides the numbers: method and dataset display names (``display_name`` in
``conf/method/<id>.yaml`` and ``conf/dataset/<id>.yaml``), method families (``Method.family``), chance levels
(1 / number of classes, from the result files' ``eval_sets``) and which datasets an average covers."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from promptbench.report.aggregate import Table, is_b2n


def _conf_dirs(group: str) -> list[Path]:
    from promptbench import config

    dirs = []
    for attr in ("CONFIG_DIR", "CONF_DIR"):
        if getattr(config, attr, None):
            dirs.append(Path(getattr(config, attr)) / group)
    dirs.append(Path(__file__).resolve().parents[1] / "conf" / group)      # configs shipped in the package
    dirs.append(Path(__file__).resolve().parents[2] / "conf" / group)      # source checkout
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def _display_names(group: str) -> dict[str, str]:
    """Config id → literal ``display_name`` of ``conf/<group>/*.yaml`` (an interpolation such as the dataset
    default ``${.name}`` is no display name and is left out)."""
    names: dict[str, str] = {}
    for folder in reversed(_conf_dirs(group)):
        for path in sorted(folder.glob("*.yaml")):
            try:
                node = OmegaConf.load(path)
            except Exception:  # noqa: BLE001 - a broken file is reported by Hydra when it is used
                continue
            if not isinstance(node, Mapping) or OmegaConf.is_interpolation(node, "display_name"):
                continue
            if node.get("display_name"):
                names[str(node.get("name") or path.stem)] = str(node["display_name"])
    return names


@functools.lru_cache(maxsize=1)
def method_display_names() -> dict[str, str]:
    """Method id → ``display_name`` of its config (ids without one are left out)."""
    return _display_names("method")


@functools.lru_cache(maxsize=1)
def dataset_display_names() -> dict[str, str]:
    """Dataset id → ``display_name`` of ``conf/dataset/<id>.yaml`` (``demo_btmri`` → "BTMRI (demo subset)")."""
    return _display_names("dataset")


@functools.lru_cache(maxsize=1)
def method_families() -> dict[str, str]:
    """Method id → its family (``Method.family``: baseline, adapter, text, visual, weight, other) for every
    registered method: read from the method sources (no torch import, so drawing the figures of finished results
    stays light); only a method whose family is not a literal in its module (an entry point, an inherited value)
    is imported. A contract test checks this equals the loaded classes' ``family``."""
    from promptbench.methods.registry import METHODS

    families = {name: str(value) for name, value in METHODS.declared_attribute("family").items()}
    missing = [name for name in METHODS.declared_names() if name not in families]
    for name in missing:
        families[name] = str(getattr(METHODS.get(name), "family", "other"))
    return families


def method_family(method: str, families: Mapping[str, str] | None = None) -> str:
    """The family of a method id; a variant (``coop+ctx8``) is its method's; an unknown id: ``other``."""
    families = method_families() if families is None else families
    return families.get(str(method)) or families.get(str(method).partition("+")[0], "other")


def display_name(method: str, names: Mapping[str, str] | None = None) -> str:
    """``tip_adapter_f`` → ``Tip-Adapter-F``; a variant keeps its suffix (``coop+ctx8`` → ``CoOp+ctx8``)."""
    names = method_display_names() if names is None else names
    if method in names:
        return names[method]
    base, sep, variant = str(method).partition("+")
    return names.get(base, base) + (sep + variant if sep else "")


def group_members(table: Table, datasets: Sequence[str]) -> dict[str, list[str]]:
    """Average label → its datasets, as :func:`promptbench.report.aggregate.summarize` forms them."""
    spec = table.spec
    if spec.groups:
        groups = {g: [d for d in m if d in datasets] for g, m in spec.groups.items()}
    else:
        modality = dict(zip(table.long["dataset"], table.long["modality"])) if len(table.long) else {}
        if spec.cells is not None and "modality" in spec.cells:
            modality.update(dict(zip(spec.cells["dataset"], spec.cells["modality"])))
        by_mod: dict[str, list[str]] = {}
        for d in datasets:
            if modality.get(d):
                by_mod.setdefault(str(modality[d]), []).append(d)
        groups = by_mod if len(by_mod) > 1 else {}
    groups = {g: m for g, m in groups.items() if m}
    if spec.overall and len(datasets) > 1:
        groups[spec.overall] = list(datasets)
    return groups


def _class_counts(paths: Sequence[str]) -> dict[str, int]:
    for path in paths:
        try:
            sets = json.loads(Path(path).read_text()).get("eval_sets") or {}
        except (OSError, ValueError):
            continue
        if isinstance(sets, dict) and sets:
            return {str(k): len(v) for k, v in sets.items() if v and isinstance(v, list)}
    return {}


def chance_levels(table: Table) -> dict:
    """Chance accuracy per dataset and average: ``{dataset: 1/C}``, or for base-to-novel
    ``{(dataset, "base"): 1/C_base, (dataset, "novel"): 1/C_novel}``; an average gets the mean over its datasets.
    Empty for metrics without a simple chance level (macro-F1)."""
    if table.spec.metric not in ("acc", "balanced_acc") or not len(table.long) or "path" not in table.long:
        return {}
    keys = {"test_base": "base", "test_novel": "novel"} if is_b2n(table.protocol) else {"test": None}
    per: dict = {}
    ok = table.long[table.long["status"] == "ok"]
    for dataset, block in ok.groupby("dataset", sort=False):
        counts = _class_counts(list(block["path"])[:3])
        for name, part in keys.items():
            if counts.get(name):
                per[(dataset, part) if part else dataset] = 1.0 / counts[name]
    datasets = list(dict.fromkeys(table.summary.loc[table.summary["kind"] == "dataset", "dataset"]))
    for group, members in group_members(table, datasets).items():
        for part in keys.values():
            values = [per.get((d, part) if part else d) for d in members]
            if values and all(v is not None for v in values):
                per[(group, part) if part else group] = float(np.mean(values))
    return {k: v for k, v in per.items() if not math.isnan(v)}
