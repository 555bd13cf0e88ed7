"""Results are filed under the dataset's and backbone's own names: refuse runs that would borrow another's.

Two slips file results under the wrong name without any error: a dataset config that inherits another dataset
(``defaults: [pneumoniamnist, _self_]``) without its own ``name``, and ``backbone.source=...`` (or
``backbone.pretrained=...``) on the command line on the *default* backbone (nothing selected it, so this is
another model) while ``backbone.name`` stays the default's. A backbone chosen explicitly (``backbone=biomedclip``,
or by an experiment) may point its source at a local copy of the same weights (the documented offline route).
Inside a Hydra run (``promptbench train`` / ``sweep``) both are checked against what was selected and overridden.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from omegaconf import DictConfig, OmegaConf

from promptbench.config import CONFIG_DIR


@lru_cache(maxsize=1)
def default_backbone() -> str | None:
    """The backbone ``conf/train.yaml`` selects when nothing else does."""

    for entry in OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train.yaml")).get("defaults", []):
        if isinstance(entry, dict) and "backbone" in entry:
            return str(entry["backbone"])
    return None


def _hydra_context() -> tuple[dict[str, str], list[str]] | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return dict(hc.runtime.choices), list(hc.overrides.task)


def naming_problems(cfg: DictConfig, choices: dict[str, str], overrides: Sequence[str]) -> list[str]:
    """One actionable line per problem (empty when the cell's names are its own)."""
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    problems = []
    chosen = choices.get("dataset")
    name = str(cfg.dataset.name)
    if chosen and chosen != name and "dataset.name" not in keys:
        problems.append(f"conf/dataset/{chosen}.yaml has name '{name}' (inherited from its defaults?): results "
                        f"would be filed under '{name}'; add `name: {chosen}` to that file")
    changed = sorted(k for k in ("backbone.source", "backbone.pretrained") if k in keys)
    on_default = "backbone" not in keys and choices.get("backbone") in (None, default_backbone())
    if changed and on_default and "backbone.name" not in keys:
        backbone = str(cfg.backbone.name)
        problems.append(f"{' and '.join(changed)} overridden but backbone.name is still '{backbone}': results would "
                        f"be filed under it; add backbone.name=<this model's name> (backbone.name={backbone} if "
                        "these are the same weights)")
    return problems


def check_names(cfg: DictConfig) -> None:
    context = _hydra_context()
    if context is None:
        return
    problems = naming_problems(cfg, *context)
    if problems:
        raise ValueError(problems[0])
