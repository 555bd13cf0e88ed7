"""Where a backbone's weights file is, without loading it: folder names, the HF cache, snapshot revisions.

Light at import time (no torch, no open_clip): status checks ask for the weights a config would load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from promptbench.core import filehash

#: weights file names looked for in a local open_clip backbone folder, in this order
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")
#: what open_clip loads from an ``hf-hub:`` repo, in this order (safetensors first, as open_clip does)
HUB_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class Unresolved(LookupError):
    """The weights a backbone would load cannot be found without loading it (e.g. not in the HF cache)."""


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` of a mapping-like backbone node, ``default`` when absent or None."""
    try:
        value = cfg.get(key, default)
    except AttributeError:
        return default
    return default if value is None else value


def find_weights(folder: Path, names: tuple[str, ...] = WEIGHT_NAMES) -> Path | None:
    """The first of ``names`` in a local backbone folder (None when there is none)."""
    return next((folder / name for name in names if (folder / name).is_file()), None)


def hub_file(repo_id: str, names: tuple[str, ...] = HUB_WEIGHT_NAMES, cache_dir: str | None = None,
             revision: str | None = None) -> Path | None:
    """The first of ``names`` present in the local HF cache snapshot of ``repo_id`` (``refs/main`` unless
    ``revision``), without network; None when none is cached."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
        if isinstance(found, str):
            return Path(found)
    return None


def hub_revision(path: str | os.PathLike[str] | None) -> str | None:
    """The snapshot (commit) of a file inside an HF cache (``.../models--org--name/snapshots/<rev>/<file>``)."""
    if path is None:
        return None
    parts = Path(path).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i - 1] == "snapshots" and parts[i - 2].startswith("models--"):
            return parts[i]
    return None


def weights_hash(path: str | os.PathLike[str] | None) -> str | None:
    """sha256 of a weights file (None for random init), hashed once per file identity (core.filehash)."""
    return filehash.file_hash(path) if path is not None else None


def weights_record(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """``{"weights": sha256 or None, "weights_revision": hub snapshot or None}`` of a loaded weights file."""
    if path is None:
        return {"weights": None, "weights_revision": None}
    return {"weights": weights_hash(path), "weights_revision": hub_revision(path)}
