"""Frozen-feature store: image-tower outputs computed once per (tower, image, view, precision) and reused.

Methods that declare ``needs_image_tower = False`` (``promptbench.methods.base.Method``) train and evaluate on
feature batches served by :class:`FeatureDataModule`; see docs/features.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from promptbench.features.datamodule import FeatureDataModule, autocast_for, encode_items
from promptbench.features.store import FeatureStore, memory_cache

__all__ = ["FeatureDataModule", "FeatureStore", "autocast_for", "encode_items", "memory_cache", "cache_dir",
           "store_from_cfg", "wrap_datamodule"]

ENV = "PROMPTBENCH_CACHE"


def cache_dir(cfg: Any) -> Path:
    """The feature folder: ``paths.cache_dir`` plus ``/features``.

    ``conf/paths/default.yaml`` defaults ``paths.cache_dir`` to ``$PROMPTBENCH_CACHE``, else
    ``<paths.output_dir>/cache``, so an explicit ``paths.cache_dir=DIR`` override wins over the variable (Hydra's
    precedence). Only a config without ``paths.cache_dir`` (or with an empty one) falls back to the variable here.
    """
    paths = cfg.get("paths") if cfg is not None else None
    root = paths.get("cache_dir") if paths is not None else None
    if not root:
        root = os.environ.get(ENV) or (Path(str(paths.output_dir)) / "cache" if paths is not None else None)
    if not root:
        raise ValueError("no feature cache folder: set paths.cache_dir or $PROMPTBENCH_CACHE")
    return Path(str(root)) / "features"


def store_from_cfg(cfg: Any) -> FeatureStore:
    feats = cfg.get("features") or {}
    memory_cache.max_bytes = int(float(feats.get("memory_mb", 2048)) * 2**20)
    root = cache_dir(cfg) if feats.get("disk", True) else None
    return FeatureStore(root, memory=bool(feats.get("memory", True)))


def wrap_datamodule(cfg: Any, method: Any, backbone: Any, datamodule: Any, epochs: int) -> Any:
    """``datamodule`` itself for methods with the image tower in their graph (or ``features.enabled: false``);
    otherwise a :class:`FeatureDataModule` over it."""
    feats = cfg.get("features") or {}
    if getattr(method, "needs_image_tower", True) or not feats.get("enabled", True):
        return datamodule
    return FeatureDataModule(
        datamodule, backbone, store_from_cfg(cfg), precision=str(cfg.trainer.precision), epochs=epochs,
        views_per_image=feats.get("views_per_image"), batch_size=int(feats.get("batch_size", 256)),
        num_workers=int(cfg.trainer.num_workers),
    )
