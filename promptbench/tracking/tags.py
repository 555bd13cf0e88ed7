"""A run's free labels: the top-level ``tags`` key (``tags=[ablation,run2]``).

Tags are metadata: ``result.json`` records them (``tags``) and every logger gets them (W&B run tags, a TensorBoard
text entry and HParams column, the CSV logger's ``hparams.yaml``), but they are not part of a cell's identity or
config hash (``tags`` is in :data:`promptbench.engine.results.NON_SEMANTIC_KEYS`), so retagging a finished cell
never makes it stale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import ListConfig, OmegaConf


def run_tags(cfg: Any) -> list[str]:
    """``cfg.tags`` as a list of distinct non-empty strings (one string is one tag; None: no tags)."""
    value = cfg.get("tags") if isinstance(cfg, Mapping) or hasattr(cfg, "get") else None
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return []
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Sequence) or any(isinstance(t, (bool, Mapping, list, tuple)) for t in value):
        raise ValueError(f"tags={value!r} is not a list of strings (e.g. tags=[ablation,run2])")
    return list(dict.fromkeys(str(t).strip() for t in value if str(t).strip()))


def tag_loggers(loggers: Sequence[Logger], tags: Sequence[str], identity: Mapping[str, Any]) -> None:
    """Give the CSV and TensorBoard loggers the run's tags (W&B gets them as run tags when it is created)."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):  # hparams.yaml beside metrics.csv
            logger.log_hyperparams({"identity": dict(identity), "tags": list(tags)})
        elif isinstance(logger, TensorBoardLogger) and tags:
            logger.experiment.add_text("tags", ", ".join(tags), global_step=0)
