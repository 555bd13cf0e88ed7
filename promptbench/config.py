"""Config plumbing: where ``conf/`` lives, OmegaConf resolvers, and composition outside Hydra's main."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(os.environ.get("PROMPTBENCH_CONF", REPO_ROOT / "conf")).resolve()


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pb_repo_root"):
        OmegaConf.register_new_resolver("pb_repo_root", lambda: str(REPO_ROOT))


register_resolvers()


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose a config like ``promptbench train`` would (for tests, notebooks and the sweep driver)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
