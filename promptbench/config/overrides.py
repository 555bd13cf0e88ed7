"""Override parsing with Hydra's grammar (cached), group-vs-value, and a Hydra compose context on ``conf/``."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from promptbench.config.paths import CONFIG_DIR


def quiet_launcher_schema_warning() -> None:
    """conf/hydra/launcher/{basic,joblib}.yaml deliberately shadow the plugins' configs of the same name (they
    carry every field themselves); Hydra warns about the automatic schema match each time. Silence that."""
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema.*")


# --------------------------------------------------------------------------------------------- the grid
@contextlib.contextmanager
def _hydra() -> Iterator[None]:
    """A Hydra compose context on ``conf/`` (clearing a finished app's global state first)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    quiet_launcher_schema_warning()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        yield


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    """Hydra override objects of ``overrides`` (each string parsed once per process)."""
    return [_parse_one(line) for line in overrides]


@functools.lru_cache(maxsize=4096)
def _parse_one(line: str) -> Any:
    """One override, parsed by Hydra's grammar (cached: a grid repeats the same few hundred strings)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([line])[0]


def _is_group(override: Any) -> bool:
    """True for a config-group choice (``method=coop``, ``hydra/launcher=joblib``), false for a value."""
    key = override.key_or_group
    return "/" in key or (CONFIG_DIR / key).is_dir()


def _is_search_path(override: Any) -> bool:
    return override.key_or_group.lstrip("+") == "hydra.searchpath"

