"""Calibration and conformal metrics of one cell, from the logits :class:`PromptModule` kept during ``test``.

Config (``trust:`` in ``conf/train.yaml``; every key optional):

* ``calibration_bins`` (15): equal-width bins of the ECE and of the reliability diagram.
* ``reliability_diagram`` (false): also write ``reliability_<eval set>.png`` beside ``result.json``.
* ``conformal.alpha`` (0.1), ``conformal.scores`` ([lac, aps]).
* ``conformal.calibration``: where the conformal threshold is calibrated (never on the images it is scored on):
  ``holdout`` (default; as FCA): a seeded random ``holdout_fraction`` of the test set calibrates, the rest is the
  evaluation part of the conformal metrics (accuracy, ECE, NLL and Brier always use the whole test set); the
  split depends only on (dataset, eval set, seed), so every method of a cell shares it.
  ``val``: the few-shot validation shots (one extra forward pass); eval sets whose label space differs from the
  training one (``test_novel``) and protocols without a validation set fall back to ``holdout``, noted in the
  result's ``trust.conformal.<set>.source``/``note``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from promptbench.data.records import stable_seed
from promptbench.metrics.calibration import N_BINS, calibration_metrics, plot_reliability, reliability_bins
from promptbench.metrics.conformal import SCORES, conformal_metrics, split_holdout

log = logging.getLogger("promptbench")

DEFAULTS: dict[str, Any] = {
    "calibration_bins": N_BINS,
    "reliability_diagram": False,
    "conformal": {"alpha": 0.1, "scores": list(SCORES), "calibration": "holdout", "holdout_fraction": 0.5},
}
CALIBRATION_SOURCES = ("holdout", "val")


def trust_options(cfg: DictConfig | dict | None) -> dict[str, Any]:
    """``cfg.trust`` merged over :data:`DEFAULTS`, validated (one-line errors naming the key)."""
    node = cfg.get("trust") if cfg is not None else None
    user = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    opts = {**DEFAULTS, **{k: v for k, v in user.items() if k != "conformal"}}
    opts["conformal"] = {**DEFAULTS["conformal"], **(user.get("conformal") or {})}
    conf = opts["conformal"]
    if conf["calibration"] not in CALIBRATION_SOURCES:
        raise ValueError(f"trust.conformal.calibration must be one of {CALIBRATION_SOURCES}, got "
                         f"{conf['calibration']!r}")
    if not 0 < float(conf["alpha"]) < 1:
        raise ValueError(f"trust.conformal.alpha must be in (0, 1), got {conf['alpha']!r}")
    if not 0 < float(conf["holdout_fraction"]) < 1:
        raise ValueError(f"trust.conformal.holdout_fraction must be in (0, 1), got {conf['holdout_fraction']!r}")
    bad = [s for s in conf["scores"] if s not in SCORES]
    if bad:
        raise ValueError(f"trust.conformal.scores: unknown score(s) {bad}; choose from {list(SCORES)}")
    return opts


@torch.no_grad()
def predict_logits(module: Any, loader: Any, classnames: list[str], trainer: Any = None) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """Logits and labels of ``loader`` under ``classnames`` with the module as it is after testing."""
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    plugin = getattr(getattr(trainer, "strategy", None), "precision_plugin", None)
    context = plugin.forward_context if plugin is not None else contextlib.nullcontext
    module.eval()
    module._use_classes(list(classnames))
    logits, labels = [], []
    for batch in loader:
        with context():
            logits.append(module._logits(batch["image"].to(device)).float().cpu())
        labels.append(batch["label"])
    if not logits:
        return torch.zeros(0, len(classnames)), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def evaluate_trust(cfg: DictConfig, module: Any, datamodule: Any, trainer: Any = None,
                   run_dir: Path | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """(flat metrics ``<set>/ece`` ... ``<set>/aps_covgap``, details for ``result.json["trust"]``)."""
    opts = trust_options(cfg)
    conf = opts["conformal"]
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {"calibration_bins": int(opts["calibration_bins"]), "conformal_alpha": conf["alpha"],
                               "conformal_calibration": conf["calibration"], "reliability": {}, "conformal": {}}
    train_names = list(datamodule.classnames)
    val_cache: tuple[torch.Tensor, torch.Tensor] | None = None
    for name, (logit_list, label_list) in module.test_outputs.items():
        logits, labels = torch.cat(logit_list), torch.cat(label_list)
        for key, value in calibration_metrics(logits, labels, int(opts["calibration_bins"])).items():
            metrics[f"{name}/{key}"] = value
        bins = reliability_bins(logits, labels, int(opts["calibration_bins"]))
        details["reliability"][name] = bins
        if opts["reliability_diagram"] and run_dir is not None:
            plot_reliability(bins, Path(run_dir) / f"reliability_{name}.png", title=f"{cfg.method.name} {name}")

        source, note = conf["calibration"], None
        eval_names = datamodule.eval_sets()[name]
        if source == "val" and len(datamodule.val_records) == 0:
            source, note = "holdout", "no validation set in this protocol; calibrated on a held-out test part"
        elif source == "val" and eval_names != train_names:
            source, note = "holdout", "label space differs from the validation shots'; calibrated on a test part"
        if source == "val":
            if val_cache is None:
                val_cache = predict_logits(module, datamodule.val_dataloader(), train_names, trainer)
            cal_logits, cal_labels = val_cache
            ev_logits, ev_labels = logits, labels
        else:
            seed = stable_seed("conformal", datamodule.dataset_name, name, int(cfg.seed))
            cal_idx, ev_idx = split_holdout(len(labels), float(conf["holdout_fraction"]), seed)
            cal_logits, cal_labels, ev_logits, ev_labels = logits[cal_idx], labels[cal_idx], logits[ev_idx], \
                labels[ev_idx]
        result = conformal_metrics(cal_logits, cal_labels, ev_logits, ev_labels, float(conf["alpha"]),
                                   list(conf["scores"]))
        for score in conf["scores"]:
            for key in ("coverage", "set_size", "covgap"):
                if f"{score}_{key}" in result:
                    metrics[f"{name}/{score}_{key}"] = float(result[f"{score}_{key}"])
        details["conformal"][name] = {"source": source, **({"note": note} if note else {}), **result}
    return metrics, details
