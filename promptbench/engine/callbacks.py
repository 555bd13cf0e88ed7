"""Lightning callbacks of a cell's trainer (kept apart from :mod:`promptbench.engine.guards`, which every
command imports and which must not import torch or Lightning)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from promptbench.engine.guards import Diverged


def _loss_of(outputs: Any) -> torch.Tensor | None:
    if torch.is_tensor(outputs):
        return outputs
    if isinstance(outputs, Mapping) and torch.is_tensor(outputs.get("loss")):
        return outputs["loss"]
    return None


class FiniteLossGuard(L.Callback):
    """Stops training with :class:`Diverged` at the first non-finite training loss."""

    def __init__(self, hint: str = "") -> None:
        self.hint = hint

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = _loss_of(outputs)
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            value = float(loss.detach().float().reshape(-1)[0])
            raise Diverged(f"training loss is {value} at epoch {trainer.current_epoch} step {trainer.global_step}"
                           + (f" ({self.hint})" if self.hint else ""))
