"""What a cell's number depends on besides its config: backbone weights, the data's bytes, the subset file.

Recorded in ``result.json`` → ``hashes`` by a run and recomputed by status checks (``is_done``, ``sweep``), cheaply:
file hashes come from :mod:`promptbench.filehash` (hashed once per file identity). Light at import time (no
torch, no open_clip unless a source names an open_clip pretrained tag).

* ``weights``: sha256 of the weights file the backbone loads (``None``: random init); ``weights_revision``: the
  HF hub snapshot (commit) it came from, for ``hf-hub:`` sources and open_clip tags served from the hub.
* ``data_content``: sha256 over the split hash, the class names and every listed image's sha256 (or the npz's).
* ``subset``: the ``content_hash`` of the subset file a run read (``protocol.subset_file``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from promptbench import filehash

#: weights file names looked for in a local backbone folder, in this order (= promptbench.backbones.loading)
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")
#: what open_clip loads from an ``hf-hub:`` repo, in this order (safetensors first, as open_clip does)
HUB_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class Unresolved(LookupError):
    """The weights a backbone would load cannot be found without loading it (e.g. not in the HF cache)."""


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    try:
        value = cfg.get(key, default)
    except AttributeError:
        return default
    return default if value is None else value


def local_folder(source: str) -> Path | None:
    """The folder of a ``local-dir:`` (or plain path) source, else None."""
    if source.startswith("local-dir:"):
        return Path(source[len("local-dir:"):]).expanduser()
    if not source.startswith("hf-hub:") and ("/" in source or source.startswith(".")):
        return Path(source).expanduser()
    return None


def find_weights(folder: Path) -> Path | None:
    """The first of :data:`WEIGHT_NAMES` in a local backbone folder (None when there is none)."""
    return next((folder / name for name in WEIGHT_NAMES if (folder / name).is_file()), None)


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


def _tag_file(source: str, tag: str, cache_dir: str | None) -> Path:
    """The cached file of an open_clip pretrained tag (``ViT-B-16`` + ``openai``)."""
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(source, tag) or {}
    hub = str(pcfg.get("hf_hub") or "")
    if hub:
        repo_id, _, name = _split_hub(hub)
        names = (name,) if name else HUB_WEIGHT_NAMES
        found = hub_file(repo_id, names, cache_dir)
        if found is not None:
            return found
    url = str(pcfg.get("url") or "")
    if url:
        candidate = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if candidate.is_file():
            return candidate
    raise Unresolved(f"{source}/{tag} is not in the local caches")


def _split_hub(hub: str) -> tuple[str, str, str]:
    parts = hub.strip("/").split("/")
    return "/".join(parts[:2]), "", "/".join(parts[2:])


def weights_file(backbone_cfg: Any) -> Path | None:
    """The weights file a backbone config loads (None for random init), found as the loader finds it; raises
    :class:`Unresolved` when it cannot be known without loading (hub file not cached)."""
    source = str(_cfg_get(backbone_cfg, "source", ""))
    pretrained = _cfg_get(backbone_cfg, "pretrained")
    if not bool(_cfg_get(backbone_cfg, "load_weights", True)):
        return None
    cache_dir = _cfg_get(backbone_cfg, "cache_dir")
    folder = local_folder(source)
    if folder is not None:
        if pretrained:
            return Path(str(pretrained)).expanduser()
        found = find_weights(folder)
        if found is None:
            raise Unresolved(f"no weights in {folder}")
        return found
    if source.startswith("hf-hub:"):
        found = hub_file(source[len("hf-hub:"):], cache_dir=cache_dir)
        if found is None:
            raise Unresolved(f"{source} is not in the HF cache")
        return found
    if pretrained and Path(str(pretrained)).expanduser().is_file():
        return Path(str(pretrained)).expanduser()
    if pretrained:
        return _tag_file(source, str(pretrained), cache_dir)
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


def weights_record(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """``{"weights": sha256 or None, "weights_revision": hub snapshot or None}`` of a loaded weights file."""
    if path is None:
        return {"weights": None, "weights_revision": None}
    return {"weights": filehash.file_hash(path), "weights_revision": hub_revision(path)}


def current_weights(backbone_cfg: Any) -> dict[str, Any]:
    """:func:`weights_record` of what ``backbone_cfg`` would load now; ``{}`` when that cannot be known."""
    try:
        return weights_record(weights_file(backbone_cfg))
    except (Unresolved, OSError, ImportError, ValueError):
        return {}


def content_hash_of(doc: dict[str, Any]) -> str:
    """The ``content_hash`` a parsed subset file's content has (everything in it but the stated hash)."""
    from promptbench.data.records import stable_hash

    return stable_hash({k: v for k, v in doc.items() if k != "content_hash"})


def subset_content_hash(path: str | os.PathLike[str]) -> str:
    """The ``content_hash`` a subset file's content has (not the one it states: an edited file differs)."""
    import json

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a subset file")
    return content_hash_of(doc)


__all__ = ["WEIGHT_NAMES", "HUB_WEIGHT_NAMES", "find_weights", "content_hash_of", "Unresolved", "weights_file",
           "hub_file", "hub_revision", "weights_record", "current_weights", "subset_content_hash"]
