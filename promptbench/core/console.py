"""The console: library chatter off so progress lines and results stay readable."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def quiet_libraries() -> None:
    """Keep the console for progress and results: library INFO chatter and known-intentional warnings off."""
    import warnings

    for name in ("root", "lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero", "open_clip", "timm", "transformers"):
        logging.getLogger(None if name == "root" else name).setLevel(logging.WARNING)
    logging.getLogger("promptbench").setLevel(logging.INFO)
    for pattern in (".*module\\(s\\) in eval mode.*", ".*smaller than the logging interval.*", ".*LeafSpec.*",
                    ".*does not have many workers.*", ".*litlogger.*", ".*No pretrained weights loaded.*"):
        warnings.filterwarnings("ignore", message=pattern)



#: work of at least this many units shows a progress bar (on a terminal, in the command's own process)
PROGRESS_MIN = 200


def progress(iterable: Iterable[T], size: int, desc: str, *, unit: str = "it", total: int | None = None
             ) -> Iterable[T]:
    """``iterable`` behind a tqdm bar on stderr when ``size`` (the units of work) reaches :data:`PROGRESS_MIN`,
    stderr is a terminal (tqdm's ``disable=None``) and this is not a worker process (their bars would interleave
    with the sweep's ``[k/N]`` lines); else ``iterable`` itself. The bar is removed when done."""
    if size < PROGRESS_MIN or multiprocessing.parent_process() is not None:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None, leave=False, dynamic_ncols=True)
