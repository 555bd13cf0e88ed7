"""The grid of a sweep (as Hydra's BasicSweeper builds it) and its cells, composed once per set of group choices."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from promptbench.config.overrides import _hydra, _is_group, _is_search_path, parse_overrides
from promptbench.config.paths import with_search_path
from promptbench.config.schema import validate
from promptbench.core.console import progress
from promptbench.engine.results import cell_dir, config_hash, identity, read_attempts, read_result, result_path
from promptbench.sweep.claims import auto_variant, lock_holder, variant_keys
from promptbench.sweep.status import Cell, _current, result_status

if not OmegaConf.has_resolver("pb_methods"):  # presets' method lists: listed order + every other registered method
    from promptbench.methods.registry import preset_methods

    OmegaConf.register_new_resolver("pb_methods", preset_methods)


def grid(overrides: Sequence[str]) -> list[list[str]]:
    """Every cell's override list, in launch order, as Hydra's BasicSweeper builds it.

    The experiment's ``hydra.sweeper.params`` come first and command-line overrides after, so a command-line
    sweep or value replaces the experiment's list for that key. A command-line ``hydra.searchpath`` is part of
    what composes every cell, so it ends each cell's list (:func:`compose_cells` composes with it).
    """
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parse_overrides(overrides)
    task = [o for o in parsed if not o.is_hydra_override()]
    if any(o.key_or_group == "experiment" and o.is_sweep_override() for o in task):
        raise ValueError("sweep one experiment at a time (experiment=<name>)")
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with _hydra():
        cfg = compose(config_name="train", overrides=with_search_path(fixed), return_hydra_config=True)
    if problem := launcher_problem(cfg.hydra.get("launcher")):  # before anything is submitted
        raise ValueError(problem)
    params = cfg.hydra.sweeper.get("params") or {}
    merged = parse_overrides([f"{k}={v}" for k, v in params.items()]) + task
    search = [o.input_line for o in parsed if _is_search_path(o)]
    return [[*cell, *search] for cell in BasicSweeper.split_arguments(merged, None)[0]]


def launcher_problem(launcher: Any) -> str | None:
    """One line when a SLURM launcher's settings would lose cells, else None: the time-limit warning
    (``signal_delay_s`` before ``timeout_min``) must come in the job's second half, or it arrives while the task is
    still starting (before submitit's handler exists: the task dies and nothing is recorded, issue 26)."""
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    if "submitit" not in target.lower() or "slurm" not in target.lower():
        return None
    delay, limit = launcher.get("signal_delay_s"), launcher.get("timeout_min")
    if isinstance(delay, int) and isinstance(limit, int) and limit > 0 and delay * 2 > limit * 60:
        return (f"hydra.launcher.signal_delay_s={delay} is more than half of hydra.launcher.timeout_min={limit} "
                f"({limit * 60} s): SLURM's warning would reach the task while it starts; set signal_delay_s <= "
                f"{limit * 30} or raise timeout_min to at least {-(-delay * 2 // 60)}")
    return None


def cell_label(cfg: DictConfig) -> str:
    """``<protocol>/<dataset>/<backbone>/<method>/shots_<K>/seed_<S>`` (the cell's folder under results/)."""
    path = cell_dir(cfg)
    return "/".join(path.parts[-6:])


class _Compositions:
    """Composed configs and config hashes, keyed by what determines them (the config-group choices with the
    search path; plus the value overrides and swept keys for a hash). Shared across :func:`compose_cells` calls
    only inside :func:`compositions_reused`, so a long-lived process never sees config files as they were."""

    def __init__(self) -> None:
        self.configs: dict[tuple[str, ...], DictConfig] = {}  # pristine: never modified
        self.hashes: dict[tuple[Any, ...], str] = {}


_SHARED: _Compositions | None = None


#: value overrides that never change a config hash (non-semantic keys nothing else interpolates): a sweep's
#: ``skip_done=true`` and a table's layout share the hashes of the bare grid
_HASH_NEUTRAL = ("skip_done", "continue_on_error", "table", "tags")


def _hash_neutral(key: str) -> bool:
    return key.split(".", 1)[0] in _HASH_NEUTRAL


@contextlib.contextmanager
def compositions_reused() -> Iterator[None]:
    """Within this block every :func:`compose_cells` call reuses the compositions and config hashes of earlier
    ones (a sweep's status before and after launching, then its tables: one composition per group choice)."""
    global _SHARED
    outer = _SHARED
    _SHARED = outer or _Compositions()
    try:
        yield
    finally:
        _SHARED = outer


def _check_method(cfg: DictConfig) -> None:
    """The method's typed keys (:func:`promptbench.methods.check_method_config`): one line for a mistyped value."""
    from promptbench.methods import check_method_config  # imports the methods (torch) only when composing a grid

    check_method_config(cfg.method)


def compose_cells(cells: Sequence[Sequence[str]], with_status: bool = True, keep_config: bool = False,
                  check_methods: bool = True) -> list[Cell]:
    """Compose each cell: one Hydra composition per distinct set of config-group choices, then the cell's value
    overrides applied with Hydra's own override semantics; read its status. Config hashes are computed only
    where a result exists (or with ``keep_config``), which keeps a dry run of a few thousand cells quick.
    ``check_methods=False`` (the table builder, which only reads results) skips the methods' typed-key checks,
    which import every method and torch; ranges (``config.schema``) are still checked."""
    from hydra import compose
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.types import OverrideType


    memo = _SHARED or _Compositions()
    inputs: dict[str, Any] = {}  # today's weights / data hashes, once per backbone and dataset in this call
    work: dict[tuple[str, ...], DictConfig] = {}  # this call's copy per group choice, edited in place
    keys: dict[tuple[str, ...], list[str]] = {}   # value keys set on that copy (reused only for the same keys)
    checked_methods: set[tuple[Any, ...]] = set()  # method nodes already type-checked in this call
    out: list[Cell] = []
    swept = variant_keys(cells)
    with _hydra():
        for overrides in progress(cells, len(cells), "composing and checking the grid", unit="cell"):
            every = parse_overrides(overrides)
            parsed = [o for o in every if not o.is_hydra_override()]
            search = [o.input_line for o in every if _is_search_path(o)]  # config folders given on the command line
            groups = tuple(with_search_path([*(o.input_line for o in parsed if _is_group(o)), *search]))
            values = [o for o in parsed if not _is_group(o)]
            if groups not in memo.configs:
                memo.configs[groups] = compose(config_name="train", overrides=list(groups))
            if groups not in work:
                work[groups] = copy.deepcopy(memo.configs[groups])
                keys[groups] = [o.key_or_group for o in values]
            in_place = (not keep_config and not swept and keys[groups] == [o.key_or_group for o in values]
                        and all(o.type == OverrideType.CHANGE for o in values))
            cfg = work[groups] if in_place else copy.deepcopy(memo.configs[groups])
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
            auto_variant(cfg, swept)
            cell = Cell(list(overrides), cell_label(cfg), result_path(cfg), identity(cfg),
                        cfg=None if in_place else cfg)
            validate(cfg)  # ranges and allowed values (config.schema): a bad grid is refused before launching
            method_key = (groups, tuple(o.input_line for o in values if o.key_or_group.lstrip("+~").startswith(
                ("method.", "fidelity"))))
            if check_methods and method_key not in checked_methods:  # typed method keys, once per node
                checked_methods.add(method_key)
                _check_method(cfg)
            result = read_result(cell.path) if with_status or keep_config else None
            if result or keep_config:
                hash_key = (groups, tuple(o.input_line for o in values if not _hash_neutral(o.key_or_group)),
                            tuple(swept))
                if hash_key not in memo.hashes:
                    memo.hashes[hash_key] = config_hash(cfg)
                cell.config_hash = memo.hashes[hash_key]
            if with_status:
                attempts = read_attempts(cell.path.parent) if result else []
                cell.status, cell.detail = result_status(result, cell.config_hash, None, attempts[-1] if attempts
                                                         else None, _current(cfg, result, inputs), cell.identity)
                holder = lock_holder(cell.path.parent) if cell.status != "done" else None
                if holder:
                    cell.status, cell.detail = "running", holder
            out.append(cell)
    return out

