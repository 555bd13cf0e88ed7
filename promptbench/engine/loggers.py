"""Experiment loggers: CSV (default), TensorBoard, Weights & Biases (offline unless logged in)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        return bool(wandb.api.api_key)
    except Exception:  # noqa: BLE001 - any failure means "not logged in"
        return False


def build_loggers(cfg: Any, run_dir: Path, identity: dict[str, Any], run_cfg: dict[str, Any]) -> list[Logger]:
    kinds = cfg.get("kinds") or []
    out: list[Logger] = []
    for kind in kinds:
        if kind == "csv":
            out.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
        elif kind == "tensorboard":
            out.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
        elif kind == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            mode = cfg.get("wandb_mode") or os.environ.get("WANDB_MODE")
            if not mode:
                mode = "online" if _wandb_logged_in() else "offline"
            method = str(identity["method"]) + (f"+{identity['variant']}" if identity.get("variant") else "")
            group = "/".join([str(identity["protocol"]), str(identity["dataset"]), str(identity["backbone"]), method,
                              str(identity["shots"])])  # the cell without its seed
            # modality and protocol, then the experiment's own (conf/experiment/*.yaml sets logger.tags)
            tags = [str(identity["modality"]), str(identity["protocol"]), *map(str, cfg.get("tags") or [])]
            tags = list(dict.fromkeys(t for t in tags if t))
            out.append(WandbLogger(
                project=cfg.get("project", "promptbench"), entity=cfg.get("entity"), group=group,
                name=f"{group}/seed{identity['seed']}", tags=tags, mode=mode, save_dir=str(run_dir),
                job_type="train", config=run_cfg, reinit="finish_previous",
            ))
        else:
            raise ValueError(f"unknown logger '{kind}' (csv, tensorboard, wandb)")
    return out


def finish_loggers(loggers: list[Logger]) -> None:
    """Close every logger; W&B runs are always finished so multirun jobs do not bleed into each other."""
    for logger in loggers:
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()
