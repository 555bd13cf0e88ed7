"""One experiment cell: config → backbone, data, method → Lightning fit/test → ``result.json``."""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from promptbench.backbones import build_backbone
from promptbench.core.rng import isolated_rng
from promptbench.data.audit import check_audit
from promptbench.data.preflight import check_once
from promptbench.data.realistic import protocol_method_cfg
from promptbench.engine.callbacks import FiniteLossGuard
from promptbench.engine.guards import Diverged, Interrupted, check_finite, received_signal
from promptbench.engine.limits import capped_budget, trainer_limits
from promptbench.engine.module import PromptModule
from promptbench.engine.naming import check_names
from promptbench.engine.results import (
    SCHEMA_VERSION,
    cell_dir,
    error_line,
    identity,
    now_iso,
    record_outcome,
    recorded_inputs,
    resolved_config_hash,
    result_path,
    versions,
)
from promptbench.engine.state import save_state
from promptbench.engine.trust import evaluate_trust
from promptbench.features import FeatureDataModule, wrap_datamodule
from promptbench.methods import build_method, check_method_config, get_method
from promptbench.tracking.loggers import build_loggers, finish_loggers
from promptbench.tracking.tags import run_tags

log = logging.getLogger("promptbench")


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if torch.is_tensor(v) and v.numel() == 1}


def _peak_memory() -> dict[str, float | None]:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"process_peak_rss_mb": round(rss_kb / 1024, 1), "cuda_peak_allocated_mb": cuda}


def _build_datamodule(cfg: DictConfig, backbone, run_dir: Path, method: Any = None):
    from promptbench.data import PromptDataModule

    pp = backbone.preprocessing
    method = method or check_method_config(cfg.method)  # typed: augment, drop_last (defaults from conf/fidelity)
    return PromptDataModule(
        cfg.dataset,
        protocol=str(cfg.protocol.name),
        shots=int(cfg.shots),
        seed=int(cfg.seed),
        batch_size=int(method.batch_size),
        eval_batch_size=int(cfg.trainer.eval_batch_size),
        num_workers=int(cfg.trainer.num_workers),
        image_size=int(cfg.backbone.get("image_size") or pp.image_size),
        mean=pp.mean,
        std=pp.std,
        interpolation=pp.interpolation,
        train_scale=tuple(method.augment.scale),
        train_flip=bool(method.augment.flip),
        drop_last=bool(method.drop_last),
        manifest_path=run_dir / "manifest.json",
        sampler=str(cfg.protocol.get("sampler") or "dassl"),
        subset_file=cfg.protocol.get("subset_file"),
        subset_seed=_subset_seed(cfg),
    )


def _subset_seed(cfg: DictConfig) -> int | None:
    """``protocol.subset_seed`` when set, else the method's ``subset_seed`` (None: the run's seed)."""
    value = cfg.protocol.get("subset_seed")
    return cfg.method.get("subset_seed") if value is None else value


def _trainer(cfg: DictConfig, epochs: int, loggers, method, max_steps: int | None = None) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        max_epochs=epochs,
        max_steps=max_steps if max_steps else -1,
        accelerator=str(t.accelerator),
        devices=t.devices,
        precision=t.precision,
        logger=loggers or False,
        enable_checkpointing=False,
        enable_progress_bar=bool(t.enable_progress_bar),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=max(1, int(t.get("val_every_n_epochs") or epochs or 1)),
        log_every_n_steps=int(t.get("log_every_n_steps", 10)),
        deterministic=bool(t.get("deterministic", False)),
        inference_mode=not method.needs_grad_at_test,
        gradient_clip_val=t.get("gradient_clip_val"),
        default_root_dir=None,
        callbacks=[FiniteLossGuard(_lr_hint(cfg))],
        **trainer_limits(cfg),  # trainer.limit_*_batches when set (conf/debug)
    )


def _lr_hint(cfg: DictConfig) -> str:
    lr = OmegaConf.select(cfg, "method.optim.lr")
    return f"method.optim.lr={lr}" if lr is not None else ""


def _outcome(err: BaseException) -> str:
    """The status a run that raised ``err`` is recorded with."""
    if isinstance(err, (Interrupted, KeyboardInterrupt)) or received_signal() is not None:
        return "interrupted"  # also Lightning's SIGTERMException raised after our handler saw the signal
    if isinstance(err, Diverged):
        return "diverged"
    return "failed"


def backbone_for(cfg: DictConfig):
    """The process-wide cached backbone, or a private copy for methods declaring ``modifies_backbone``."""
    cached = build_backbone(cfg.backbone, cache=bool(cfg.get("reuse_backbone", True)))
    if get_method(str(cfg.method.name)).modifies_backbone:
        import copy

        return copy.deepcopy(cached)
    return cached


def _budget(method, datamodule, shots: int) -> tuple[int, int | None]:
    """(epochs, max_steps) from the method's own budget; a step budget is run as enough epochs, cut at the step."""
    if not method.trains:
        return 0, None
    per_epoch = max(1, len(datamodule.train_dataloader()))
    budget = method.training_budget(steps_per_epoch=per_epoch, shots=shots)
    if budget.steps:
        return -(-int(budget.steps) // per_epoch), int(budget.steps)
    return int(budget.epochs), None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one cell and record it: every attempt goes to ``attempts.jsonl``; ``result.json`` gets the result, or a
    failure (status ``failed``, ``diverged`` or ``interrupted``) only when it holds no good result. Errors are
    re-raised after recording."""
    check_names(cfg)  # before anything is filed under a borrowed dataset/backbone name
    run_dir = cell_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    started, t0 = now_iso(), time.perf_counter()
    resolved, hashed = resolved_config_hash(cfg)  # one resolution for both (equal to config_hash(cfg): tested)
    base = {"schema": SCHEMA_VERSION, "identity": identity(cfg), "tags": run_tags(cfg), "started": started,
            "hashes": {"config": hashed}, "config": resolved}
    try:
        result = _run(cfg, run_dir, base, t0)
    except BaseException as err:
        failed = {**base, "status": _outcome(err), "error": error_line(err), "finished": now_iso(),
                  "timing": {"wall_s": round(time.perf_counter() - t0, 2)}, "versions": versions()}
        record_outcome(result_path(cfg), failed)
        raise
    return result


def _seed(cfg: DictConfig) -> None:
    """torch (CPU, CUDA), numpy and ``random`` from the cell's seed; dataloader workers follow (``workers=True``)."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)


def _run(cfg: DictConfig, run_dir: Path, base: dict[str, Any], t0: float) -> dict[str, Any]:
    typed = check_method_config(cfg.method)  # unknown keys / mistyped values of the method: one line, before any build
    _seed(cfg)
    if cfg.trainer.get("threads"):
        torch.set_num_threads(int(cfg.trainer.threads))
    # TF32 matmuls on Ampere+ GPUs (opt-in; the reference codes run fp32, "highest" is torch's default)
    torch.set_float32_matmul_precision("high" if cfg.trainer.get("tf32") else "highest")
    backbone = backbone_for(cfg)
    datamodule = _build_datamodule(cfg, backbone, run_dir, typed)
    datamodule.setup("fit")

    base["hashes"]["data"] = check_once(datamodule.splits, shots=0 if str(cfg.protocol.name) == "full"
                                        else int(cfg.shots))
    base["hashes"].update(recorded_inputs(backbone, datamodule.splits, datamodule.manifest))
    audit = check_audit(cfg, datamodule.split_hash)  # a saved leakage audit of this split: warn or refuse
    method_cfg, protocol_notes = protocol_method_cfg(cfg)  # realistic: fixed values instead of validation search
    # Seeded again here, after everything shared or process-cached (backbone, data, checks) is obtained: the
    # method's initialisation, dropout and test-time views draw from a state that depends on the cell only, not
    # on what earlier cells of this process built or drew (promptbench/core/rng.py).
    _seed(cfg)
    method = build_method(method_cfg, backbone, datamodule.classnames, cfg.dataset)
    epochs, max_steps = capped_budget(cfg, *_budget(method, datamodule, int(cfg.shots)))  # trainer.max_epochs
    with isolated_rng():  # dashboards (wandb ids, ...) never draw from the cell's streams
        loggers = build_loggers(cfg.logger, run_dir, base["identity"], base["config"], base["hashes"]["config"])
    try:
        result = _fit_test(cfg, run_dir, base, t0, backbone, datamodule, method, epochs, loggers, max_steps)
        result.update(protocol_notes=protocol_notes, audit=audit)
    except BaseException as err:  # the dashboards show the cell as failed, then run() records and re-raises
        finish_loggers(loggers, {**base, "status": _outcome(err), "error": error_line(err)[:500],
                                 "timing": {"wall_s": round(time.perf_counter() - t0, 2)}})
        raise
    finish_loggers(loggers, result)
    record_outcome(result_path(cfg), result)
    log.debug("result written to %s", result_path(cfg))
    return result


def _fit_test(cfg: DictConfig, run_dir: Path, base: dict[str, Any], t0: float, backbone, datamodule, method,
              epochs: int, loggers, max_steps: int | None = None) -> dict[str, Any]:
    trainer = _trainer(cfg, epochs, loggers, method, max_steps)
    t_prepare = time.perf_counter()
    method.to(trainer.strategy.root_device)  # closed-form fits and caches run on the training device
    datamodule = wrap_datamodule(cfg, method, backbone, datamodule, epochs)  # feature batches if no tower needed
    method.prepare(datamodule)
    module = PromptModule(method, cfg.method.optim, epochs, datamodule.classnames, datamodule.eval_sets())
    metrics: dict[str, float] = {}
    if epochs > 0:
        trainer.fit(module, datamodule=datamodule)
        metrics.update(_scalars(trainer.callback_metrics))  # last-epoch train/ and val/ metrics
    t_test = time.perf_counter()
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics.update(_scalars(trainer.callback_metrics))
    check_finite(metrics, _lr_hint(cfg))  # NaN/inf loss or metric: the run diverged
    trust_metrics, trust = evaluate_trust(cfg, module, datamodule, trainer, run_dir)  # calibration, conformal
    metrics.update(trust_metrics)
    # the method's own trained state (not the frozen backbone) beside result.json; None for zero-shot
    state = save_state(run_dir, method, backbone, datamodule.classnames)
    total = sum(p.numel() for p in method.parameters())
    result = {
        **base,
        "status": "ok",
        "error": None,
        "finished": now_iso(),
        "metrics": dict(sorted(metrics.items())),
        "eval_sets": datamodule.eval_sets(),
        "trust": trust,
        "params": {"trainable": method.num_trainable(), "total": total},
        "state": state,
        "fit_info": method.fit_info() or None,  # e.g. linear_probe's chosen C (Method.fit_info)
        "timing": {"wall_s": round(time.perf_counter() - t0, 2),
                   "train_s": round(t_test - t_prepare, 2), "test_s": round(time.perf_counter() - t_test, 2),
                   "epochs": epochs, "steps": int(trainer.global_step)},
        "memory": _peak_memory(),
        "feature_cache": dict(datamodule.store.hits) if isinstance(datamodule, FeatureDataModule) else None,
        "hashes": {**base["hashes"], "split": datamodule.split_hash, "manifest": datamodule.manifest_hash,
                   "weights": backbone.weights_sha256},  # inputs (weights, data, subset): recorded_inputs
        "versions": versions(),
        "hardware": {"accelerator": str(trainer.strategy.root_device), "cpu_count": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "platform": sys.platform},
    }
    return result
