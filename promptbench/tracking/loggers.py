"""Experiment loggers: CSV (default), TensorBoard, Weights & Biases (offline unless logged in).

What each logger gets for one cell (see docs/report.md, "Dashboards"):

- W&B: one run per cell with a deterministic id (:func:`wandb_run_id`: cell identity + config hash), so a rerun
  of the same cell resumes that run instead of creating another; offline, an older offline folder of the same
  run in the cell's folder is replaced. Tags: method, dataset, modality, protocol, backbone, shots, and the
  experiment's ``logger.tags``. Per-epoch curves (``train/*``, ``val/*``, ``train/lr``) use ``epoch`` as x-axis.
  The summary holds the identity, metrics, parameter counts, timing, memory, hashes and status; a failed cell
  finishes its run with exit code 1 (shown as "failed"). Quiet unless ``logger.verbose=true``.
- TensorBoard: ``<cell>/tensorboard/version_<n>`` (a rerun writes a new version), scalars per epoch (the step
  axis is the epoch), and HParams (identity + method settings) with the final metrics under ``hparams/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from promptbench.tracking.tags import run_tags, tag_loggers

#: metric globs plotted against ``epoch`` (the module logs them once per epoch)
EPOCH_METRICS = ("train/*", "val/*")


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        return bool(wandb.api.api_key)
    except Exception:  # noqa: BLE001 - any failure means "not logged in"
        return False


def wandb_mode(cfg: Any) -> str:
    """``logger.wandb_mode``, else ``$WANDB_MODE``, else online when logged in and offline otherwise."""
    mode = cfg.get("wandb_mode") if cfg is not None else None
    mode = mode or os.environ.get("WANDB_MODE")
    return str(mode) if mode else ("online" if _wandb_logged_in() else "offline")


def wandb_settings(verbose: bool) -> Any:
    """Quiet by default: no banner, no sync hints, no run summary printed per cell."""
    import wandb

    if verbose:
        return wandb.Settings()
    return wandb.Settings(silent=True, quiet=True, show_info=False, show_warnings=False, console="off")


def wandb_run_id(identity: Mapping[str, Any], config_hash: str) -> str:
    """Deterministic W&B run id of a cell: the same cell with the same config always maps to the same run."""
    key = "/".join(f"{k}={identity[k]}" for k in sorted(identity)) + f"/config={config_hash}"
    return "pb-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def cell_tags(identity: Mapping[str, Any], extra: Any = ()) -> list[str]:
    """Method, dataset, modality, protocol, backbone, shots, then the experiment's own tags (W&B: ≤ 64 chars)."""
    method = str(identity["method"]) + (f"+{identity['variant']}" if identity.get("variant") else "")
    tags = [method, str(identity["dataset"]), str(identity.get("modality") or ""), str(identity["protocol"]),
            str(identity["backbone"]), f"{identity['shots']}-shot", *map(str, extra or [])]
    return [t[:64] for t in dict.fromkeys(t for t in tags if t)]


class CellWandbLogger(WandbLogger):
    """Lightning's W&B logger with ``epoch`` as x-axis of the per-epoch metrics."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)  # wandb warns about the key even when it is None

    @property
    def experiment(self):  # type: ignore[override]
        fresh = self._experiment is None
        run = super().experiment
        if fresh and run is not None and callable(getattr(run, "define_metric", None)):
            run.define_metric("epoch")
            for glob in EPOCH_METRICS:
                run.define_metric(glob, step_metric="epoch")
        return run


class EpochTensorBoardLogger(TensorBoardLogger):
    """TensorBoard scalars with the epoch (not the optimiser step) as step, so methods with different batch sizes
    line up; metrics without an epoch (e.g. HParams' final metrics) keep the step they are given."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "epoch" in metrics:
            step = int(metrics["epoch"])
            metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        super().log_metrics(metrics, step)


def _replace_offline_runs(save_dir: Path, run_id: str) -> None:
    """Offline: drop older offline folders of this run in the cell's folder (the rerun replaces them)."""
    for old in (save_dir / "wandb").glob(f"offline-run-*-{run_id}"):
        shutil.rmtree(old, ignore_errors=True)


def build_loggers(cfg: Any, run_dir: Path, identity: dict[str, Any], run_cfg: dict[str, Any],
                  config_hash: str | None = None) -> list[Logger]:
    kinds = cfg.get("kinds") or []
    tags = run_tags(run_cfg)  # the run's tags=[...] (tracking/tags.py)
    out: list[Logger] = []
    for kind in kinds:
        if kind == "csv":
            out.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
        elif kind == "tensorboard":
            out.append(EpochTensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=None,
                                              default_hp_metric=False))
        elif kind == "wandb":
            mode = wandb_mode(cfg)
            method = str(identity["method"]) + (f"+{identity['variant']}" if identity.get("variant") else "")
            group = "/".join([str(identity["protocol"]), str(identity["dataset"]), str(identity["backbone"]), method,
                              str(identity["shots"])])  # the cell without its seed
            run_id = wandb_run_id(identity, config_hash or "")
            if mode == "offline":
                _replace_offline_runs(run_dir, run_id)
            out.append(CellWandbLogger(
                project=cfg.get("project", "promptbench"), entity=cfg.get("entity"), group=group,
                name=f"{group}/seed{identity['seed']}", mode=mode,
                tags=cell_tags(identity, [*(cfg.get("tags") or []), *tags]),  # the logger's tags and the run's
                save_dir=str(run_dir), id=run_id, job_type="train", config=run_cfg, reinit="finish_previous",
                settings=wandb_settings(bool(cfg.get("verbose", False))),
            ))
        else:
            raise ValueError(f"unknown logger '{kind}' (csv, tensorboard, wandb)")
    tag_loggers(out, tags, identity)
    return out


def _flat(prefix: str, node: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            _flat(f"{prefix}/{key}" if prefix else str(key), value, out)
    else:
        out[prefix] = node
    return out


def run_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """Flat summary of a (finished or failed) cell: ``status``, ``error``, ``identity/*``, the metrics under their
    own names, ``params/*``, ``timing/*``, ``memory/*``, ``hashes/*``, ``config_hash``."""
    out: dict[str, Any] = {"status": result.get("status"), "error": result.get("error")}
    for section in ("identity", "params", "timing", "memory", "hashes"):
        _flat(section, result.get(section) or {}, out)
    out.update(result.get("metrics") or {})
    out["config_hash"] = (result.get("hashes") or {}).get("config")
    return out


def _hparams(result: Mapping[str, Any]) -> dict[str, Any]:
    """TensorBoard HParams: the identity and the method's settings (scalars and strings only)."""
    params = _flat("", {"identity": result.get("identity") or {},
                        "method": (result.get("config") or {}).get("method") or {}}, {})
    params["tags"] = ", ".join(result.get("tags") or [])  # the run's tags=[...]
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}


def finish_loggers(loggers: list[Logger], result: Mapping[str, Any] | None = None) -> None:
    """Close every logger with the cell's outcome (``result``: the result.json content, ``status`` ok or failed).
    W&B runs are always finished (exit code 1 when failed) so multirun jobs do not bleed into each other."""
    result = result or {"status": "ok"}
    ok = result.get("status") == "ok"
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and ok:
            final = {f"hparams/{k}": float(v) for k, v in (result.get("metrics") or {}).items()
                     if k.startswith("test")}
            if final:
                logger.log_hyperparams(_hparams(result), final)
        logger.finalize("success" if ok else "failed")
        if isinstance(logger, WandbLogger):
            import wandb

            run = logger.experiment  # created now if nothing was logged yet: a failed cell still shows up
            if run is not None and wandb.run is not None:
                run.summary.update(run_summary(result))
                wandb.finish(exit_code=0 if ok else 1)


