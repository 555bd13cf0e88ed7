"""Paper-default optimisation (Dassl/CoOp family): SGD + cosine, one constant warm-up epoch, per epoch."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def build_optimizer(params: Iterable[nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    params = list(params)
    name = str(cfg.get("name", "sgd")).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.get("momentum", 0.9),
                               weight_decay=cfg.get("weight_decay", 5e-4))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.get("weight_decay", 0.01))
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.get("weight_decay", 0.0))
    raise ValueError(f"unknown optimizer '{name}' (sgd, adamw, adam)")


def warmup_cosine_factor(epoch: int, *, max_epochs: int, base_lr: float, warmup_epochs: int,
                         warmup_lr: float) -> float:
    """LR multiplier at ``epoch``: constant ``warmup_lr`` for the warm-up epochs, then cosine from
    ``base_lr`` (at epoch e the cosine has advanced e steps of ``max_epochs``, as Dassl's
    ConstantWarmupScheduler wrapping CosineAnnealingLR does)."""
    if epoch < warmup_epochs:
        return warmup_lr / base_lr
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch, max_epochs) / max_epochs))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, max_epochs: int):
    kind = str(cfg.get("scheduler", "cosine"))
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    if kind != "cosine":
        raise ValueError(f"unknown scheduler '{kind}' (cosine, constant)")
    kwargs = dict(max_epochs=max(max_epochs, 1), base_lr=float(cfg.lr),
                  warmup_epochs=int(cfg.get("warmup_epochs", 1)), warmup_lr=float(cfg.get("warmup_lr", 1e-5)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: warmup_cosine_factor(e, **kwargs))
