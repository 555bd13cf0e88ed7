"""Config-group options: what ``method=``, ``dataset=``, ``hydra/launcher=``... accept, a one-line did-you-mean
error for a misspelt option (before Hydra's multi-line one), and the group listing of ``train --help``.

Options come from every config folder in search order (``$PROMPTBENCH_CONFIG_PATH``, a command-line
``hydra.searchpath``, the shipped ``conf/``), Hydra's ConfigStore and, for ``hydra/*`` groups, Hydra's own
``pkg://hydra.conf``. Names starting with ``_`` (``method/_base``) are accepted but never offered, and groups
listed in :data:`HIDDEN_GROUPS` are left out of ``--help``.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from promptbench.config.overrides import parse_overrides
from promptbench.config.paths import config_dirs
from promptbench.core.registry import unknown

#: groups that are implementation details: chosen by the defaults list, never on the command line
HIDDEN_GROUPS = ("tuned",)
#: option values that mean "no config of this group"
NULL_CHOICES = ("null",)


def _folder(entry: str) -> Path | None:
    """The folder of one search-path entry (``file://DIR``, ``pkg://module.path`` or a plain folder)."""
    entry = entry.strip().strip("'\"")
    if entry.startswith("pkg://"):
        try:
            return Path(str(importlib.resources.files(entry[len("pkg://"):].replace("/", "."))))
        except (ModuleNotFoundError, TypeError, ValueError):
            return None
    path = Path(entry[len("file://"):] if entry.startswith("file://") else entry).expanduser()
    return path if path.is_dir() else None


def search_dirs(overrides: Sequence[str] = ()) -> list[Path]:
    """Config folders in search order: ``$PROMPTBENCH_CONFIG_PATH``, then a ``hydra.searchpath=[...]`` among
    ``overrides``, then the primary (shipped) folder."""
    *extra, primary = config_dirs()
    given: list[Path] = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            given += [f for f in map(_folder, value.strip("[]").split(",")) if f is not None]
    return list(dict.fromkeys([*extra, *given, primary]))


def _store_options(group: str) -> set[str]:
    """Options of ``group`` registered in Hydra's ConfigStore (plugins' launchers and sweepers, schemas)."""
    from hydra.core.config_store import ConfigStore

    node: Any = ConfigStore.instance().repo
    for part in group.split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return set()
    return {k.removesuffix(".yaml") for k in node if k.endswith(".yaml")}


def group_options(group: str, dirs: Iterable[Path] | None = None, hidden: bool = False) -> list[str]:
    """Sorted options of a config group (``method``, ``hydra/launcher``); ``hidden`` keeps ``_``-names."""
    group = group.strip("/")
    dirs = list(search_dirs() if dirs is None else dirs)
    if group.split("/")[0] == "hydra":
        from hydra.core.plugins import Plugins

        Plugins.instance()  # plugins register their launcher and sweeper configs when discovered
        dirs.append(Path(str(importlib.resources.files("hydra.conf"))))
    found = set(_store_options(group))
    for folder in dirs:
        base = folder / group
        if base.is_dir():
            found.update(p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.yaml"))
    return sorted(o for o in found if hidden or not any(part.startswith("_") for part in o.split("/")))


def is_group(key: str, dirs: Iterable[Path] | None = None) -> bool:
    """True when ``key`` (``method``, ``hydra/launcher``) names a config group rather than a config value."""
    key = key.strip("/")
    if "/" in key:
        return True
    return any((d / key).is_dir() for d in (search_dirs() if dirs is None else dirs)) or bool(_store_options(key))


def _values(override: Any) -> list[str]:
    """The option names an override asks for (one, or each of a choice / simple sweep); [] for glob, range..."""
    from hydra.core.override_parser.types import ChoiceSweep

    if override.is_delete():
        return []
    value = override.value()
    if isinstance(value, ChoiceSweep):
        items = value.list
    elif override.is_sweep_override():
        return []
    else:
        items = [value]
    return [str(v) for v in items if isinstance(v, (str, int, float)) and not isinstance(v, bool)]


def choice_error(overrides: Sequence[str]) -> str | None:
    """One line for the first override choosing an unknown option of a config group (``method=cop``, also inside
    a sweep ``method=coop,cop``): ``unknown method 'cop'; did you mean coop, cocoop? (available: ...)``; None
    when every group choice exists (or an override does not parse: Hydra reports that)."""
    dirs = search_dirs(overrides)
    for line in overrides:
        if "=" not in line or line.startswith("-"):
            continue
        try:
            (override,) = parse_overrides([line])
        except Exception:  # noqa: BLE001 - a malformed override: Hydra's own message names it
            continue
        group = override.key_or_group.strip("/")
        if group == "hydra" or group.startswith("hydra.") or not is_group(group, dirs):
            continue
        known: list[str] | None = None
        for value in _values(override):
            if value in NULL_CHOICES:
                continue
            known = group_options(group, dirs, hidden=True) if known is None else known
            if value not in known:
                return str(unknown(group, value, group_options(group, dirs)))
    return None


def grid_choice_error(cells: Iterable[Sequence[str]]) -> str | None:
    """:func:`choice_error` over a grid's cells (an experiment's ``hydra.sweeper.params`` included), each
    distinct override checked once."""
    seen = list(dict.fromkeys(o for cell in cells for o in cell))
    return choice_error(seen)


def help_groups(root: Any = None) -> str:
    """``group: option, ...`` lines of every non-Hydra config group for ``train --help``, without ``_``-options
    and :data:`HIDDEN_GROUPS` (``root``: the composed config, whose ``hydra.searchpath`` is searched too)."""
    search = OmegaConf.select(root, "hydra.searchpath", default=None) if root is not None else None
    dirs = search_dirs([f"hydra.searchpath=[{','.join(map(str, search))}]"] if search else [])
    groups = sorted({p.name for d in dirs if d.is_dir() for p in d.iterdir() if p.is_dir()}
                    - {"hydra", *HIDDEN_GROUPS})
    lines = []
    for group in groups:
        options = group_options(group, dirs)
        if options:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register_resolvers() -> None:
    """``${pb_help_groups:}`` (used by ``conf/hydra/help/promptbench.yaml``)."""
    if not OmegaConf.has_resolver("pb_help_groups"):
        OmegaConf.register_new_resolver("pb_help_groups", lambda *, _root_: help_groups(_root_))
