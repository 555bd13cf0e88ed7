"""What an image-tower output depends on, hashed into a cache key.

- the image tower: a hash of its parameters and buffers (so random-init, fine-tuned or re-downloaded weights
  never share entries), plus the tower class;
- numerics: trainer precision and device type (CPU and GPU kernels round differently);
- each image: its key in the split, and for files the resolved path, size and modification time (for ``.npz``
  datasets: the archive's path, size and mtime) — editing or replacing an image changes the key;
- the transform: its full description (size, crop scale/ratio, flip, interpolation, normalisation);
- for augmented training views: the run seed and the view's epoch (the datamodule makes a view a pure function
  of seed, epoch and index, ``promptbench.data.transforms``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from promptbench.data.records import DatasetSplits
from promptbench.data.transforms import DeterministicTrainTransform

__all__ = ["tower_hash", "image_ids", "transform_description", "entry_key"]

_TOWER_HASHES: dict[int, tuple[tuple[tuple[int, int], ...], str]] = {}


def _module_of(tower: Any) -> nn.Module:
    module = getattr(tower, "module", tower)
    if not isinstance(module, nn.Module):
        raise TypeError(f"cannot hash image tower {type(tower).__name__}: no nn.Module")
    return module


@torch.no_grad()
def tower_hash(backbone: Any) -> str:
    """sha256 over the image tower's class, parameter names, shapes, dtypes and bytes (memoised per tower
    object, storage pointers and version counters, so moving it, replacing or editing a weight re-hashes)."""
    tower = backbone.visual
    module = _module_of(tower)
    state = module.state_dict()
    pointers = tuple((t.data_ptr(), t._version) for t in state.values())  # in-place edits bump _version
    memo = _TOWER_HASHES.get(id(module))
    if memo is not None and memo[0] == pointers:
        return memo[1]
    digest = hashlib.sha256(type(tower).__name__.encode())
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    value = digest.hexdigest()
    _TOWER_HASHES[id(module)] = (pointers, value)
    return value


def image_ids(splits: DatasetSplits, keys: Sequence[str]) -> list[list[Any]]:
    """Identity of each image: ``[key, size, mtime_ns]`` for files, ``[key]`` for npz rows (the archive's own
    size and mtime are part of :func:`dataset_source`)."""
    if splits.npz_path is not None:
        return [[k] for k in keys]
    root = splits.image_root
    out = []
    for k in keys:
        try:
            st = os.stat(root / k) if root is not None else None
        except FileNotFoundError:
            st = None
        out.append([k, st.st_size, st.st_mtime_ns] if st is not None else [k, None, None])
    return out


def dataset_source(splits: DatasetSplits) -> list[Any]:
    """Where the images come from: the resolved image folder, or the npz archive with its size and mtime."""
    if splits.npz_path is not None:
        st = os.stat(splits.npz_path)
        return ["npz", str(splits.npz_path.resolve()), st.st_size, st.st_mtime_ns]
    return ["folder", str(splits.image_root.resolve()) if splits.image_root is not None else None]


def transform_description(transform: Any) -> Any:
    """A JSON-able description of everything a transform does (its repr names every torchvision step with
    its parameters; the train transform's repr lacks the normalisation, added here)."""
    if isinstance(transform, DeterministicTrainTransform):
        norm = transform.normalize
        return ["train_view", repr(transform), list(map(float, norm.mean)), list(map(float, norm.std))]
    return ["eval", repr(transform)]


def entry_key(**parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (the full key; 64 hex)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
