"""Config plumbing: where ``conf/`` (and the shipped demo data and weights) live, OmegaConf resolvers, user config
folders, and composition outside Hydra's main.

Shipped folders are found through :mod:`importlib.resources`: an installed wheel carries them inside the package
(``promptbench/conf``, ``promptbench/demo_data``, ``promptbench/assets``; see ``setup.py``); a source checkout
keeps them beside the package (``conf/``, ``data/demo/``, ``assets/``).

Settings:
- ``PROMPTBENCH_CONF=<dir>``: use another primary config folder instead of the shipped one.
- ``PROMPTBENCH_CONFIG_PATH=<dir>[:<dir>...]``: extra config folders searched before the shipped one (same layout:
  ``method/*.yaml``, ``local/default.yaml``...), as Hydra's ``hydra.searchpath`` (which works too).
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
#: the repository in a source checkout (pyproject.toml and conf/ beside the package), else None
SOURCE_ROOT: Path | None = (PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file()
                            and (PACKAGE_DIR.parent / "conf").is_dir() else None)
#: shipped folder -> (path inside the installed package, path in a source checkout)
SHIPPED = {"conf": ("conf", "conf"), "demo": ("demo_data", "data/demo"), "assets": ("assets", "assets")}
SEARCH_PATH_ENV = "PROMPTBENCH_CONFIG_PATH"


def shipped_dir(name: str) -> Path:
    """Folder of a shipped resource (``conf``, ``demo`` or ``assets``): inside the package when installed from a
    wheel, else beside it in the source checkout."""
    in_package, in_source = SHIPPED[name]
    resource = importlib.resources.files("promptbench").joinpath(in_package)
    if resource.is_dir():
        return Path(str(resource))
    if SOURCE_ROOT is not None:
        return SOURCE_ROOT / in_source
    return PACKAGE_DIR / in_package  # missing: the error names the expected place


def repo_root() -> Path:
    """Base of the default ``data/``, ``weights/`` and ``outputs/`` folders: the source checkout, or the current
    working directory for an installed package."""
    return SOURCE_ROOT if SOURCE_ROOT is not None else Path.cwd()


REPO_ROOT = repo_root()
CONFIG_DIR = Path(os.environ.get("PROMPTBENCH_CONF") or shipped_dir("conf")).resolve()


def user_search_path() -> list[str]:
    """Extra config folders from ``$PROMPTBENCH_CONFIG_PATH`` as Hydra search-path entries (``file://...``)."""
    folders = [f for f in os.environ.get(SEARCH_PATH_ENV, "").split(os.pathsep) if f.strip()]
    return [f"file://{Path(f).expanduser().resolve()}" for f in folders]


def config_dirs() -> list[Path]:
    """Every config folder, in search order: ``$PROMPTBENCH_CONFIG_PATH`` entries, then the shipped one."""
    return [Path(entry[len("file://"):]) for entry in user_search_path()] + [CONFIG_DIR]


def with_search_path(overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus a ``hydra.searchpath`` override for ``$PROMPTBENCH_CONFIG_PATH`` (merged with one the
    user gave)."""
    extra = user_search_path()
    if not extra:
        return list(overrides)
    out, given = [], []
    for o in overrides:
        if o.split("=", 1)[0].lstrip("+") == "hydra.searchpath":
            given = [s.strip().strip("'\"") for s in o.split("=", 1)[1].strip("[]").split(",") if s.strip()]
        else:
            out.append(o)
    return [*out, f"hydra.searchpath=[{','.join(given + extra)}]"]


def register_resolvers() -> None:
    resolvers = {
        "pb_repo_root": lambda: str(repo_root()),
        "pb_package": lambda: str(PACKAGE_DIR),
        "pb_shipped": lambda name: str(shipped_dir(name)),
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    from promptbench.config_choices import register_resolvers as help_resolvers
    from promptbench.launchers import register_resolvers as launcher_resolvers

    launcher_resolvers()
    help_resolvers()  # ${pb_help_groups:} of train --help


register_resolvers()


def register_schema() -> None:
    from promptbench.schema import register

    register()


register_schema()


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose a config like ``promptbench train`` would (for tests, notebooks and the sweep driver); a ``train``
    config is checked against the schema's ranges (:func:`promptbench.schema.validate`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=with_search_path(overrides))
    if config_name == "train":  # ranges and allowed values of the typed keys (promptbench.schema), one line
        from promptbench.schema import validate

        validate(cfg)
    return cfg
