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
from promptbench.engine.loggers import build_loggers, finish_loggers
from promptbench.engine.module import PromptModule
from promptbench.engine.results import (
    SCHEMA_VERSION,
    cell_dir,
    config_hash,
    identity,
    now_iso,
    result_path,
    versions,
    write_json_atomic,
)
from promptbench.features import FeatureDataModule, wrap_datamodule
from promptbench.methods import build_method

log = logging.getLogger("promptbench")


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if torch.is_tensor(v) and v.numel() == 1}


def _peak_memory() -> dict[str, float | None]:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"process_peak_rss_mb": round(rss_kb / 1024, 1), "cuda_peak_allocated_mb": cuda}


def _build_datamodule(cfg: DictConfig, backbone, run_dir: Path):
    from promptbench.data import PromptDataModule

    pp = backbone.preprocessing
    aug = cfg.get("augment", {})
    return PromptDataModule(
        cfg.dataset,
        protocol=str(cfg.protocol.name),
        shots=int(cfg.shots),
        seed=int(cfg.seed),
        batch_size=int(cfg.method.batch_size),
        eval_batch_size=int(cfg.trainer.eval_batch_size),
        num_workers=int(cfg.trainer.num_workers),
        image_size=int(cfg.backbone.get("image_size") or pp.image_size),
        mean=pp.mean,
        std=pp.std,
        interpolation=pp.interpolation,
        train_scale=tuple(aug.get("scale", (0.08, 1.0))),
        train_flip=bool(aug.get("flip", False)),
        manifest_path=run_dir / "manifest.json",
    )


def _trainer(cfg: DictConfig, epochs: int, loggers, method) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        max_epochs=epochs,
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
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one cell and write its ``result.json``. Failures are recorded (status "failed") and re-raised."""
    run_dir = cell_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    started, t0 = now_iso(), time.perf_counter()
    base = {"schema": SCHEMA_VERSION, "identity": identity(cfg), "started": started,
            "hashes": {"config": config_hash(cfg)}, "config": OmegaConf.to_container(cfg, resolve=True)}
    try:
        result = _run(cfg, run_dir, base, t0)
    except BaseException as err:
        message = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        failed = {**base, "status": "failed", "error": message, "finished": now_iso(),
                  "timing": {"wall_s": round(time.perf_counter() - t0, 2)}, "versions": versions()}
        write_json_atomic(result_path(cfg), failed)
        raise
    return result


def _run(cfg: DictConfig, run_dir: Path, base: dict[str, Any], t0: float) -> dict[str, Any]:
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.trainer.get("threads"):
        torch.set_num_threads(int(cfg.trainer.threads))
    # TF32 matmuls on Ampere+ GPUs (opt-in; the reference codes run fp32, "highest" is torch's default)
    torch.set_float32_matmul_precision("high" if cfg.trainer.get("tf32") else "highest")
    backbone = build_backbone(cfg.backbone, cache=bool(cfg.get("reuse_backbone", True)))
    datamodule = _build_datamodule(cfg, backbone, run_dir)
    datamodule.setup("fit")
    method = build_method(cfg.method, backbone, datamodule.classnames, cfg.dataset)
    epochs = int(cfg.method.get("epochs") or 0) if method.trains else 0
    loggers = build_loggers(cfg.logger, run_dir, base["identity"], base["config"])
    trainer = _trainer(cfg, epochs, loggers, method)
    t_prepare = time.perf_counter()
    method.to(trainer.strategy.root_device)  # closed-form fits and caches run on the training device
    datamodule = wrap_datamodule(cfg, method, backbone, datamodule, epochs)  # feature batches if no tower needed
    method.prepare(datamodule)
    module = PromptModule(method, cfg.method.optim, epochs, datamodule.classnames, datamodule.eval_sets())
    metrics: dict[str, float] = {}
    try:
        if epochs > 0:
            trainer.fit(module, datamodule=datamodule)
            metrics.update(_scalars(trainer.callback_metrics))  # last-epoch train/ and val/ metrics
        t_test = time.perf_counter()
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update(_scalars(trainer.callback_metrics))
    finally:
        finish_loggers(loggers)
    total = sum(p.numel() for p in method.parameters())
    result = {
        **base,
        "status": "ok",
        "error": None,
        "finished": now_iso(),
        "metrics": dict(sorted(metrics.items())),
        "eval_sets": datamodule.eval_sets(),
        "params": {"trainable": method.num_trainable(), "total": total},
        "timing": {"wall_s": round(time.perf_counter() - t0, 2),
                   "train_s": round(t_test - t_prepare, 2), "test_s": round(time.perf_counter() - t_test, 2),
                   "epochs": epochs},
        "memory": _peak_memory(),
        "feature_cache": dict(datamodule.store.hits) if isinstance(datamodule, FeatureDataModule) else None,
        "hashes": {**base["hashes"], "split": datamodule.split_hash, "manifest": datamodule.manifest_hash,
                   "weights": backbone.weights_sha256},
        "versions": versions(),
        "hardware": {"accelerator": str(trainer.strategy.root_device), "cpu_count": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "platform": sys.platform},
    }
    write_json_atomic(result_path(cfg), result)
    log.debug("result written to %s", result_path(cfg))
    return result
