"""Published numbers (``conf/expected/<name>.yaml``) and the side-by-side comparison with ours.

File format (values in percent unless the block says ``unit: fraction``)::

    name: few_shot
    sources:
      biomedcoop_readme: {citation: "...", url: "...", label: "paper README"}
    blocks:
      - source: biomedcoop_readme
        protocol: few_shot        # optional filters: protocol, backbone, dataset, shots, metric, method
        backbone: biomedclip
        dataset: Average          # a dataset config name, a group name of the table (X-ray, CT, ...) or Average
        metric: acc               # acc | base | novel | hm | mean_hm | am | gain_vs:<method>
        by: shots                 # the dimension that ``keys`` run over (omit for one value per row)
        keys: [1, 2, 4, 8, 16]
        values:                   # row (method unless ``rows:`` says otherwise) -> list over keys, or a scalar
          coop: [50.16, 54.18, 59.75, 65.84, 69.62]

``shots`` left out (or null) matches our table at any shots value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from promptbench.config import CONFIG_DIR

EXPECTED_DIR = CONFIG_DIR / "expected"
FIELDS = ("source", "protocol", "backbone", "method", "dataset", "shots", "metric")
GAIN = "gain_vs:"


@dataclass
class Expected:
    name: str
    description: str
    sources: dict[str, dict[str, Any]]
    entries: pd.DataFrame  # columns FIELDS + value (percent)


def expected_path(name: str) -> Path:
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") and path.is_file() else EXPECTED_DIR / f"{name}.yaml"


def available() -> list[str]:
    return sorted(p.stem for p in EXPECTED_DIR.glob("*.yaml"))


def load_expected(name: str) -> Expected:
    """Read and flatten an expected-numbers file (raises ``FileNotFoundError`` / ``ValueError`` when malformed)."""
    path = expected_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no expected numbers '{name}' (looked for {path}; available: {available()})")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(data, dict)
    sources = {str(k): dict(v or {}) for k, v in (data.get("sources") or {}).items()}
    rows: list[dict[str, Any]] = []
    for i, block in enumerate(data.get("blocks") or []):
        if block.get("source") not in sources:
            raise ValueError(f"{path}: block {i} names unknown source {block.get('source')!r}")
        factor = 100.0 if block.get("unit", data.get("unit", "percent")) == "fraction" else 1.0
        fixed = {k: block.get(k) for k in FIELDS}
        by, keys, row_dim = block.get("by"), block.get("keys"), block.get("rows", "method")
        for row_value, values in (block.get("values") or {}).items():
            if by is None:
                pairs: Sequence[tuple[Any, Any]] = [(None, values)]
            else:
                if not isinstance(values, list) or len(values) != len(keys or []):
                    raise ValueError(f"{path}: block {i}, {row_value}: {len(keys or [])} keys but values {values}")
                pairs = list(zip(keys, values))
            for key, value in pairs:
                if value is None:
                    continue
                row = {**fixed, row_dim: row_value, "value": float(value) * factor}
                if by is not None:
                    row[by] = key
                rows.append(row)
    entries = pd.DataFrame(rows, columns=[*FIELDS, "value"])
    return Expected(str(data.get("name") or path.stem), str(data.get("description") or ""), sources, entries)


def _ours(summary: pd.DataFrame, method: str, dataset: str, metric: str, shots: Any, backbone: Any
          ) -> pd.DataFrame:
    sel = summary[(summary["method"] == method) & (summary["dataset"].str.lower() == str(dataset).lower())
                  & (summary["metric"] == metric)]
    if backbone:
        sel = sel[sel["backbone"] == backbone]
    if shots is not None and not (isinstance(shots, float) and math.isnan(shots)):
        sel = sel[sel["shots"] == int(shots)]
    return sel


def compare(tables: Sequence[Any], expected: Expected) -> pd.DataFrame:
    """Ours beside theirs: one row per (expected entry × matching cell of our tables), Δ = ours − theirs (points).

    Entries for a method or dataset the table does not cover are left out; a covered cell without results shows
    ``ours`` as NaN. ``gain_vs:<m>`` compares our accuracy difference ``method − m`` with the reported gain.
    """
    out: list[dict[str, Any]] = []
    for table in tables:
        summary, scale = table.summary, table.spec.scale
        methods, datasets = set(summary["method"]), {str(d).lower() for d in summary["dataset"]}
        for e in expected.entries.to_dict("records"):
            if e["protocol"] and e["protocol"] != table.protocol:
                continue
            if e["method"] not in methods or str(e["dataset"]).lower() not in datasets:
                continue
            metric = str(e["metric"] or "acc")
            base_metric = "acc" if metric.startswith(GAIN) else metric
            mine = _ours(summary, e["method"], e["dataset"], base_metric, e["shots"], e["backbone"])
            matches: list[tuple[Any, Any, float]] = []
            for r in mine.to_dict("records"):
                value = r["mean"] * scale
                if metric.startswith(GAIN):
                    other = _ours(summary, metric[len(GAIN):], e["dataset"], "acc", r["shots"], r["backbone"])
                    value = value - other["mean"].iloc[0] * scale if len(other) else float("nan")
                matches.append((r["backbone"], r["shots"], value))
            if not matches:
                matches = [(e["backbone"], e["shots"], float("nan"))]
            for backbone, shots, value in matches:
                out.append({"protocol": table.protocol, "source": e["source"], "backbone": backbone,
                            "method": e["method"], "dataset": e["dataset"], "shots": shots, "metric": metric,
                            "ours": value, "theirs": e["value"], "diff": value - e["value"]})
    return pd.DataFrame(out, columns=["protocol", "source", "backbone", "method", "dataset", "shots", "metric",
                                      "ours", "theirs", "diff"])
