"""Optimisers and LR schedules from config dicts (Dassl / CoOp family by default).

Default schedule = Dassl's ``build_lr_scheduler`` with ``LR_SCHEDULER=cosine``, ``WARMUP_TYPE=constant``,
``WARMUP_EPOCH=1``, ``WARMUP_CONS_LR=1e-5`` and ``WARMUP_RECOUNT=True`` (``dassl/optim/lr_scheduler.py``,
``dassl/config/defaults.py``): ``warmup_epochs`` units at ``warmup_lr``, then a cosine over ``t_max`` units that
*restarts* after the warm-up, so unit u >= w runs at ``lr * 0.5 * (1 + cos(pi * (u - w) / t_max))``. It is built
from torch's ``ConstantLR`` + ``CosineAnnealingLR`` joined by ``SequentialLR`` (which restarts its successor at the
milestone, as Dassl's recount does). ``t_max`` defaults to the whole run (Dassl: ``MAX_EPOCH``, warm-up included);
past ``t_max`` the cosine is periodic (torch's, and the reference's, ``CosineAnnealingLR``).

Config keys (``method.optim``): ``name`` (sgd | adamw | adam), ``lr``, ``momentum``, ``weight_decay``, ``eps``,
``scheduler`` (cosine | constant), ``warmup_epochs``, ``warmup_lr``, ``cosine_restart`` (true: Dassl recount;
false: the cosine counts from unit 0 through the warm-up, promptbench before issue 12), ``interval`` (epoch | step:
the unit the schedule advances by; warm-up and ``t_max`` are counted in that unit), ``t_max`` (null = the run).

Both builders take plain config mappings so that methods owning their optimisation can reuse them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as sched

INTERVALS = ("epoch", "step")


def build_optimizer(params: Iterable[nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, wd 5e-4 by default), AdamW or Adam over ``params`` from ``cfg`` (``name``, ``lr``, ...)."""
    params = list(params)
    name = str(cfg.get("name", "sgd")).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg.get("momentum", 0.9),
                               weight_decay=cfg.get("weight_decay", 5e-4))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.01),
                                 eps=cfg.get("eps", 1e-8))
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0),
                                eps=cfg.get("eps", 1e-8))
    raise ValueError(f"method.optim.name: unknown optimizer '{name}' (sgd, adamw, adam)")


def scheduler_interval(cfg: Any) -> str:
    """``epoch`` or ``step``: how often the scheduler advances (``method.optim.interval``)."""
    interval = str(cfg.get("interval", "epoch"))
    if interval not in INTERVALS:
        raise ValueError(f"method.optim.interval must be one of {INTERVALS}, got '{interval}'")
    return interval


def warmup_cosine_factor(unit: int, *, t_max: int, base_lr: float, warmup: int, warmup_lr: float,
                         restart: bool = True) -> float:
    """LR multiplier of unit ``unit`` (closed form of :func:`build_scheduler`'s cosine schedule)."""
    if unit < warmup:
        return warmup_lr / base_lr
    u = unit - warmup if restart else unit
    return 0.5 * (1.0 + math.cos(math.pi * u / t_max))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, max_epochs: int, steps_per_epoch: int = 1):
    """The LR scheduler of ``cfg`` for a run of ``max_epochs`` epochs of ``steps_per_epoch`` optimiser steps.

    Step it once per unit of :func:`scheduler_interval` (Lightning does, given that interval)."""
    kind = str(cfg.get("scheduler", "cosine"))
    if kind == "constant":
        return sched.LambdaLR(optimizer, lambda _: 1.0)
    if kind != "cosine":
        raise ValueError(f"method.optim.scheduler: unknown scheduler '{kind}' (cosine, constant)")
    per_unit = max(int(steps_per_epoch), 1) if scheduler_interval(cfg) == "step" else 1
    t_max = int(cfg.get("t_max") or max(int(max_epochs), 1) * per_unit)
    warmup = int(cfg.get("warmup_epochs", 1) or 0)
    base_lr, warmup_lr = float(cfg["lr"]), float(cfg.get("warmup_lr", 1e-5))
    restart = bool(cfg.get("cosine_restart", True))
    if warmup <= 0:
        return sched.CosineAnnealingLR(optimizer, T_max=t_max)
    factor = warmup_lr / base_lr
    if restart and 0.0 < factor <= 1.0:
        constant = sched.ConstantLR(optimizer, factor=factor, total_iters=warmup)
        cosine = sched.CosineAnnealingLR(optimizer, T_max=t_max)
        return sched.SequentialLR(optimizer, [constant, cosine], milestones=[warmup])
    kwargs = dict(t_max=t_max, base_lr=base_lr, warmup=warmup, warmup_lr=warmup_lr, restart=restart)
    return sched.LambdaLR(optimizer, lambda u: warmup_cosine_factor(u, **kwargs))
