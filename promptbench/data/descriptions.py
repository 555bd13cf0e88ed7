"""Per-class clinical descriptions (``promptbench/resources/descriptions/<name>.json``).

Format (compatible with BiomedCoOp's teacher-prompt dictionaries): a JSON object mapping each class name,
exactly as in ``dataset.classnames``, to a list of one-sentence descriptions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from promptbench.data.readers import cfg_get

__all__ = ["DESCRIPTIONS_DIR", "descriptions_path", "load_descriptions"]

DESCRIPTIONS_DIR = Path(__file__).resolve().parent.parent / "resources" / "descriptions"


def descriptions_path(dataset_cfg: Any) -> Path:
    """``dataset.descriptions`` when set, else the packaged ``<dataset.name>.json``."""
    custom = cfg_get(dataset_cfg, "descriptions")
    if custom:
        return Path(str(custom)).expanduser()
    return DESCRIPTIONS_DIR / f"{cfg_get(dataset_cfg, 'name')}.json"


def load_descriptions(dataset_cfg: Any, *, min_per_class: int = 1) -> dict[str, list[str]]:
    """Descriptions for ``dataset.classnames`` (in that order); raises if a class is missing or too short."""
    path = descriptions_path(dataset_cfg)
    if not path.is_file():
        raise FileNotFoundError(
            f"class descriptions not found at {path}; set dataset.descriptions=/path/to/file.json "
            "(a JSON object: class name -> list of sentences)"
        )
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    out: dict[str, list[str]] = {}
    for name in cfg_get(dataset_cfg, "classnames", []):
        sentences = data.get(name)
        if not isinstance(sentences, list) or len(sentences) < min_per_class:
            raise ValueError(f"{path}: class {name!r} needs a list of at least {min_per_class} descriptions")
        out[name] = [str(s) for s in sentences]
    return out
