"""Backbones: loading open_clip models and adapting their towers to one interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptbench.backbones.backbone import Backbone, BackboneInfo, Preprocessing
from promptbench.backbones.loading import BackboneLoadError, load_open_clip
from promptbench.backbones.towers import TextTower, VisionTower

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"

_CACHE: dict[str, Backbone] = {}


def build_backbone(cfg: Any, *, cache: bool = False) -> Backbone:
    """Build the backbone described by a ``conf/backbone/*.yaml`` node.

    With ``cache=True`` one frozen instance per config is reused within the process (sweeps run many
    cells on the same backbone; methods never modify it).
    """
    source = str(cfg["source"])
    key = repr(sorted((k, str(v)) for k, v in dict(cfg).items()))
    if cache and key in _CACHE:
        return _CACHE[key]
    loaded = load_open_clip(
        source,
        cfg.get("pretrained"),
        load_weights=bool(cfg.get("load_weights", True)),
        weights_only=bool(cfg.get("weights_only", True)),
        cache_dir=cfg.get("cache_dir"),
    )
    info = BackboneInfo(name=str(cfg["name"]), source=source,
                        weights_path=str(loaded.weights_path) if loaded.weights_path else None)
    backbone = Backbone(loaded, info, context_length=cfg.get("context_length"))
    if cache:
        _CACHE[key] = backbone
    return backbone


__all__ = [
    "Backbone",
    "BackboneInfo",
    "BackboneLoadError",
    "Preprocessing",
    "TextTower",
    "VisionTower",
    "build_backbone",
    "MODEL_CONFIG_DIR",
]
