"""The realistic few-shot protocol (``protocol=realistic``; after SS-Text, MICCAI 2025, and CLAP, CVPR 2024).

* Support set: ``K x C`` images drawn uniformly without replacement from the whole training split, so class
  counts follow the training split's class prior (imbalanced; a class may get no image at all). ``K <= 0``: the
  whole training split.
* No validation set: nothing can be tuned or selected on held-out labelled data.
* Methods that would select hyper-parameters on the validation shots use fixed values instead
  (:data:`VALIDATION_FALLBACKS`), applied to the method config before the method is built and recorded in the
  result under ``protocol_notes``.
* Balanced accuracy (``test/balanced_acc``, the macro recall) is in every result beside accuracy; build the table
  with ``promptbench table --metric balanced_acc`` to rank by it.

Deterministic: the draw depends only on the training records and (dataset, shots, seed), like
:func:`promptbench.data.fewshot.sample_few_shot`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, open_dict

from promptbench.data.records import Record, stable_seed

__all__ = ["PROTOCOL", "sample_realistic", "realistic_summary", "VALIDATION_FALLBACKS", "apply_validation_fallbacks"]

PROTOCOL = "realistic"

#: method name -> (config keys set when the method would search on validation data, what the result says)
VALIDATION_FALLBACKS: dict[str, tuple[dict[str, Any], str]] = {
    "linear_probe": ({"c": 1.0}, "no validation set: C fixed at 1.0 (the scikit-learn default) instead of the "
                                 "validation search over c_grid"),
    "tip_adapter": ({"search": False}, "no validation set: alpha = init_alpha and beta = init_beta (1.0, 1.0, "
                                       "Tip-Adapter's initial values) instead of the validation grid search"),
    "tip_adapter_f": ({"search": False}, "no validation set: alpha = init_alpha and beta = init_beta (1.0, 1.0) "
                                         "after fine-tuning instead of the validation grid search"),
    "lp_plus_plus": ({"select": "last"}, "no validation set: the last iterate is kept instead of the "
                                         "best-validation one"),
}


def sample_realistic(records: Sequence[Record], shots: int, num_classes: int, *, dataset: str,
                     seed: int) -> list[Record]:
    """``shots * num_classes`` records drawn uniformly from ``records`` (all of them when there are fewer, or when
    ``shots <= 0``); sorted by (label, key)."""
    pool = sorted(records, key=lambda r: r.key)
    size = int(shots) * int(num_classes)
    if shots <= 0 or size >= len(pool):
        return sorted(pool, key=lambda r: (r.label, r.key))
    rng = random.Random(stable_seed("realistic", dataset, "train", int(shots), int(seed)))
    return sorted(rng.sample(pool, size), key=lambda r: (r.label, r.key))


def realistic_summary(train: Sequence[Record], pool: Sequence[Record], classnames: Sequence[str],
                      shots: int) -> dict[str, Any]:
    """What goes into the manifest's ``realistic`` block: support size, per-class counts, missing classes, prior."""
    counts, prior = Counter(r.label for r in train), Counter(r.label for r in pool)
    total = max(1, len(pool))
    return {
        "support_size": len(train),
        "requested_size": int(shots) * len(classnames) if shots > 0 else len(pool),
        "per_class": {str(c): counts.get(c, 0) for c in range(len(classnames))},
        "missing_classes": [classnames[c] for c in range(len(classnames)) if counts.get(c, 0) == 0],
        "train_prior": {str(c): round(prior.get(c, 0) / total, 4) for c in range(len(classnames))},
        "validation": None,
    }


def apply_validation_fallbacks(method_cfg: DictConfig) -> list[str]:
    """Set the fixed values of :data:`VALIDATION_FALLBACKS` on ``method_cfg`` (in place) where the config would
    otherwise select on validation data; returns the notes for the result (empty when nothing changed)."""
    name = str(method_cfg.get("name"))
    if name not in VALIDATION_FALLBACKS:
        return []
    values, note = VALIDATION_FALLBACKS[name]
    if name == "linear_probe" and (method_cfg.get("init", "none") != "none" or method_cfg.get("c") is not None):
        return []
    if name.startswith("tip_adapter") and not method_cfg.get("search", True):
        return []
    if name == "lp_plus_plus" and str(method_cfg.get("select", "best_val")) != "best_val":
        return []
    with open_dict(method_cfg):
        for key, value in values.items():
            method_cfg[key] = value
    return [f"{name}: {note}"]


def protocol_method_cfg(cfg: DictConfig) -> tuple[DictConfig, list[str]]:
    """The method config to build under ``cfg.protocol`` (a copy with the validation fallbacks for ``realistic``;
    ``cfg.method`` itself otherwise) and the notes for the result's ``protocol_notes``."""
    if str(cfg.protocol.name) != PROTOCOL:
        return cfg.method, []
    method_cfg = cfg.method.copy()
    return method_cfg, apply_validation_fallbacks(method_cfg)
