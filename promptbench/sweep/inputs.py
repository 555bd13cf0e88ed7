"""Before a sweep launches: does every pending cell's backbone (weights) and dataset exist?

A grid whose weights or data are missing would otherwise launch every cell only for each to fail the same way.
Each distinct (backbone, dataset) input is checked once, without building a model: the backbone's source says what
it lacks (:func:`promptbench.backbones.sources.check`: a local folder of a recognised format with its weights, an
``hf-hub:`` repo in the Hugging Face cache when offline, a ``backbone.pretrained`` file that exists), and the
dataset reader must find its split files and images (:func:`promptbench.data.readers.read_dataset`, which lists
files only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from promptbench.config.overrides import _is_group, parse_overrides
from promptbench.data.readers import read_dataset
from promptbench.sweep.grid import compose_cells

#: value-override prefixes that change where a cell's inputs are (kept when composing the inputs of a cell)
INPUT_PREFIXES = ("backbone.", "dataset.", "paths.")
#: config groups that choose a cell's inputs (the others, e.g. method or protocol, do not: a grid of 18 methods x 3
#: datasets has 3 distinct inputs to compose and check, not 54)
INPUT_GROUPS = ("backbone", "dataset", "paths", "experiment", "local")


@dataclass
class Missing:
    """One missing input and the cells that need it."""

    what: str  # "backbone biomedclip" / "dataset btmri"
    problem: str  # one line: where it was looked for and how to fix it
    cells: list[str] = field(default_factory=list)


def check_backbone(backbone: DictConfig) -> str | None:
    """One-line problem with a backbone's files, or None when they look present: asked of the backbone's source
    (:func:`promptbench.backbones.sources.check`), which alone knows what it needs on disk."""
    from promptbench.backbones import sources

    return sources.check(backbone)


def check_dataset(dataset: DictConfig) -> str | None:
    """One-line problem with a dataset's files, or None when the reader finds them."""

    try:
        read_dataset(dataset)
    except (FileNotFoundError, ValueError) as err:
        return str(err).splitlines()[0]
    return None


def _input_overrides(overrides: Sequence[str], is_group: Any) -> tuple[str, ...]:

    keep = []
    for o in parse_overrides(overrides):
        if o.is_hydra_override():
            continue
        key = o.key_or_group.lstrip("+~")
        if (is_group(o) and key.split("/")[0].split("@")[0] in INPUT_GROUPS) or key.startswith(INPUT_PREFIXES):
            keep.append(o.input_line)
    return tuple(keep)


def missing_inputs(cells: Sequence[Any]) -> list[Missing]:
    """Check the inputs of ``cells`` (:class:`promptbench.sweep.Cell`), each distinct one once."""

    by_inputs: dict[tuple[str, ...], list[str]] = {}
    for cell in cells:
        by_inputs.setdefault(_input_overrides(cell.overrides, _is_group), []).append(cell.label)
    keys = list(by_inputs)
    composed = compose_cells([list(k) for k in keys], with_status=False, keep_config=True)
    found: dict[tuple[str, str], Missing] = {}
    checked: dict[str, str | None] = {}
    for key, cell in zip(keys, composed):
        cfg = cell.cfg
        for kind, node, check in (("backbone", cfg.backbone, check_backbone), ("dataset", cfg.dataset, check_dataset)):
            sig = f"{kind}:" + OmegaConf.to_yaml(node, resolve=True)
            if sig not in checked:
                checked[sig] = check(node)
            if checked[sig] is not None:
                item = found.setdefault((kind, checked[sig]), Missing(f"{kind} {node.get('name')}", checked[sig]))
                item.cells.extend(by_inputs[key])
    return list(found.values())


def report(missing: Sequence[Missing], total: int) -> str:
    """The message printed once before a sweep refuses to launch."""
    n_cells = len({c for m in missing for c in m.cells})
    lines = [f"sweep: {n_cells} of {total} pending cells cannot run; missing inputs (nothing launched):"]
    for m in missing:
        lines.append(f"  {m.what} ({len(m.cells)} cells): {m.problem}")
    lines.append("fix the paths above, narrow the grid (e.g. dataset=...), or pass --no-check to launch anyway")
    return "\n".join(lines)


def preflight(pending: Sequence[Any]) -> str | None:
    """The report for ``pending`` cells, or None when every input is present."""
    missing = missing_inputs(pending)
    return report(missing, len(pending)) if missing else None
