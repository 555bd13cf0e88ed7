"""Run limits for quick checks (``conf/debug/*.yaml``): an epoch cap and Lightning's per-stage batch limits.

None of these keys is in the shipped defaults (``conf/trainer/default.yaml``), so a real cell's config, and with
it its config hash, is unchanged; a config that sets them is a different config (its hash differs). A run with
``debug_run: true`` is marked as such in ``result.json`` (its ``config``), and table builders never count it
(:func:`is_debug_result`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

#: ``trainer.<key>`` passed to ``lightning.Trainer`` when set (an int: batches; a float in (0, 1]: a fraction)
BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")


def trainer_limits(cfg: Any) -> dict[str, int | float]:
    """Lightning ``limit_*_batches`` arguments from ``trainer.limit_*`` (only those set)."""
    out: dict[str, int | float] = {}
    for key in BATCH_LIMITS:
        value = OmegaConf.select(cfg, f"trainer.{key}", default=None)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
                    isinstance(value, float) and value > 1):
                raise ValueError(f"trainer.{key}={value!r} must be a number of batches (int >= 1) or a fraction "
                                 "in (0, 1]")
            out[key] = value
    return out


def capped_budget(cfg: Any, epochs: int, max_steps: int | None) -> tuple[int, int | None]:
    """``(epochs, max_steps)`` with ``trainer.max_epochs`` as a cap (a step budget ends with it too)."""
    cap = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if cap is None or epochs <= 0:
        return epochs, max_steps
    return min(epochs, max(1, int(cap))), max_steps


def is_debug_result(result: Mapping[str, Any]) -> bool:
    """Whether a ``result.json`` comes from a debug run (``debug_run: true`` in its config)."""
    config = result.get("config")
    return isinstance(config, Mapping) and bool(config.get("debug_run"))
