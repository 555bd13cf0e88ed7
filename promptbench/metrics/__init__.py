"""Trust metrics computed from a cell's logits: calibration (:mod:`.calibration`) and conformal sets
(:mod:`.conformal`); reliability diagrams from recorded bins (:mod:`.reliability`, no torch). The package imports its
torch-using modules on first use, so the table builder reads recorded metrics without torch."""

from __future__ import annotations

import importlib
from typing import Any

_LOCATIONS = {"calibration_metrics": "calibration", "reliability_bins": "calibration",
              "conformal_metrics": "conformal"}

__all__ = ["calibration_metrics", "reliability_bins", "conformal_metrics"]


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        return getattr(importlib.import_module(f"{__name__}.{_LOCATIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
