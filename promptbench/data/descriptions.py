"""Per-class clinical descriptions (``promptbench/resources/descriptions/<name>.json``).

Format (compatible with BiomedCoOp's teacher-prompt dictionaries): a JSON object mapping each class name,
exactly as in ``dataset.classnames``, to a list of one-sentence descriptions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptbench.data.readers import cfg_get

__all__ = ["DESCRIPTIONS_DIR", "DescriptionsError", "descriptions_path", "load_descriptions"]

DESCRIPTIONS_DIR = Path(__file__).resolve().parent.parent / "resources" / "descriptions"


def descriptions_path(dataset_cfg: Any) -> Path:
    """``dataset.descriptions`` when set, else the packaged ``<dataset.name>.json``."""
    custom = cfg_get(dataset_cfg, "descriptions")
    if custom:
        return Path(str(custom)).expanduser()
    return DESCRIPTIONS_DIR / f"{cfg_get(dataset_cfg, 'name')}.json"


class DescriptionsError(FileNotFoundError):
    """No usable class descriptions for a dataset; the message says how to supply them."""


def _norm(name: str) -> str:
    return name.replace("_", " ").strip().lower()


def load_descriptions(
    dataset_cfg: Any, classnames: Sequence[str] | None = None, *, min_per_class: int = 1
) -> dict[str, list[str]]:
    """Descriptions for ``classnames`` (default ``dataset.classnames``), in that order.

    Class names match case-insensitively, with underscores read as spaces. A missing file or class raises
    :class:`DescriptionsError`; fewer than ``min_per_class`` sentences raises ``ValueError``.
    """
    path = descriptions_path(dataset_cfg)
    hint = "Supply a JSON file (class name -> list of sentences) with dataset.descriptions=/path/to/file.json"
    if not path.is_file():
        raise DescriptionsError(
            f"No class descriptions for dataset '{cfg_get(dataset_cfg, 'name')}' at {path}. {hint}"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} line {err.lineno} column {err.colno}: not valid JSON ({err.msg})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold an object (class name -> list of sentences), not {type(raw).__name__}")
    lookup = {_norm(k): v for k, v in raw.items()}
    out: dict[str, list[str]] = {}
    for name in classnames if classnames is not None else cfg_get(dataset_cfg, "classnames", []):
        sentences = lookup.get(_norm(name))
        if not sentences:
            raise DescriptionsError(f"{path} has no descriptions for class '{name}'. {hint}")
        if not isinstance(sentences, list) or len(sentences) < min_per_class:
            raise ValueError(f"{path}: class {name!r} needs a list of at least {min_per_class} descriptions")
        out[name] = [str(s) for s in sentences]
    return out
