"""The config layer: paths of the shipped configs, OmegaConf resolvers, composition outside Hydra's main, the
schema's ranges (:mod:`promptbench.config.schema`), override parsing (:mod:`promptbench.config.overrides`) and
display names (:mod:`promptbench.config.names`). Imports nothing above :mod:`promptbench.core`."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from promptbench.config import choices, resolvers
from promptbench.config.paths import (
    CONFIG_DIR,
    PACKAGE_DIR,
    REPO_ROOT,
    SEARCH_PATH_ENV,
    SHIPPED,
    SOURCE_ROOT,
    config_dirs,
    repo_root,
    shipped_dir,
    user_search_path,
    with_search_path,
)


def register_resolvers() -> None:
    """The ``pb_*`` resolvers of the shipped configs (``pb_methods`` needs the method registry: the sweep layer
    registers it)."""
    table = {
        "pb_repo_root": lambda: str(repo_root()),
        "pb_package": lambda: str(PACKAGE_DIR),
        "pb_shipped": lambda name: str(shipped_dir(name)),
        "pb_if": resolvers._pb_if,
        "pb_job_name": resolvers.job_name,
        "pb_sweep_batch": resolvers.sweep_batch,
    }
    for name, fn in table.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    choices.register_resolvers()  # ${pb_help_groups:} of train --help


register_resolvers()


def register_schema() -> None:
    from promptbench.config.schema import register

    register()


register_schema()


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose a config like ``promptbench train`` would (for tests, notebooks and the sweep driver); a ``train``
    config is checked against the schema's ranges (:func:`promptbench.config.schema.validate`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from promptbench.config.schema import validate

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=with_search_path(overrides))
    if config_name == "train":  # ranges and allowed values of the typed keys (promptbench.config.schema), one line
        validate(cfg)
    return cfg


__all__ = ["CONFIG_DIR", "PACKAGE_DIR", "REPO_ROOT", "SEARCH_PATH_ENV", "SHIPPED", "SOURCE_ROOT", "compose",
           "config_dirs", "register_resolvers", "repo_root", "shipped_dir", "user_search_path", "with_search_path"]
