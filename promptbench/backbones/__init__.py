"""Backbones: sources that load CLIP-style models (``sources``, ``loaders/``) and tower adapters over them
(``towers``, ``adapters/``). Names are imported lazily, so ``promptbench.backbones.weights`` and
``promptbench.backbones.sources`` stay light (no torch) for status checks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"

if TYPE_CHECKING:
    from promptbench.backbones.backbone import Backbone, BackboneInfo, Preprocessing
    from promptbench.backbones.sources import BackboneLoadError
    from promptbench.backbones.towers import TextTower, VisionTower

_LAZY = {
    "Backbone": "promptbench.backbones.backbone",
    "BackboneInfo": "promptbench.backbones.backbone",
    "Preprocessing": "promptbench.backbones.backbone",
    "BackboneLoadError": "promptbench.backbones.sources",
    "TextTower": "promptbench.backbones.towers",
    "VisionTower": "promptbench.backbones.towers",
}
_CACHE: dict[str, Backbone] = {}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'promptbench.backbones' has no attribute {name!r}")


def build_backbone(cfg: Any, *, cache: bool = False) -> Backbone:
    """Build the backbone described by a ``conf/backbone/*.yaml`` node.

    With ``cache=True`` one frozen instance per config is reused within the process (sweeps run many
    cells on the same backbone; methods never modify it).
    """
    from promptbench.backbones import sources
    from promptbench.backbones.backbone import Backbone, BackboneInfo

    key = repr(sorted((k, str(v)) for k, v in dict(cfg).items()))
    if cache and key in _CACHE:
        return _CACHE[key]
    loaded = sources.load(cfg)
    info = BackboneInfo(name=str(cfg["name"]), source=str(cfg["source"]),
                        weights_path=str(loaded.weights_path) if loaded.weights_path else None)
    backbone = Backbone(loaded, info, context_length=cfg.get("context_length"))
    if cache:
        _CACHE[key] = backbone
    return backbone


__all__ = ["Backbone", "BackboneInfo", "BackboneLoadError", "Preprocessing", "TextTower", "VisionTower",
           "build_backbone", "MODEL_CONFIG_DIR"]
