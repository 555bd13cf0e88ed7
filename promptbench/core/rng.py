"""Where random numbers come from: a cell draws only from generators its own config seeds.

* ``engine/run.py`` seeds torch, numpy and ``random`` (``lightning.seed_everything(cfg.seed)``) after everything
  shared or process-cached is obtained (backbone, data) and right before the method is built; method
  initialisation, dropout and TPT's view generator (seeded from ``torch.initial_seed()``) draw from that state.
* Objects cached in the process for later cells are built under :func:`isolated_rng`: the backbone under a fixed
  seed (:data:`BUILD_SEED`, so a random-init backbone is a function of its config), frozen features without
  touching the caller's generators, so computing an entry and reading it from the cache leave the same state.
* Few-shot subsets, training views and batch order use their own generators keyed by the run seed
  (``data/fewshot.py``, ``data/transforms.py``, ``data.datasets.EpochSampler``); every DataLoader gets its own
  generator (its worker base seed), never the global one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from promptbench.core.hashing import stable_seed

__all__ = ["BUILD_SEED", "isolated_rng", "loader_generator"]

#: the seed a backbone is built under (its random initialisation before any weights load)
BUILD_SEED = 0


@contextmanager
def isolated_rng(seed: int | None = None) -> Iterator[None]:
    """Run the body on forked global generators (torch CPU and initialised CUDA devices, numpy, ``random``): the
    caller's streams are neither advanced nor read by it. ``seed``: the body starts from that seed instead of a
    copy of the caller's state."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            if seed is not None:
                random.seed(seed)
                np.random.seed(seed)
                # the CPU generator (torch.manual_seed would queue a lazy seeding of CUDA, outside the fork)
                torch.default_generator.manual_seed(seed)
                for device in devices:
                    torch.cuda.default_generators[device].manual_seed(seed)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def loader_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from ``key`` for a DataLoader: its iterators draw the workers' base seed from it
    instead of the global generator (one draw per ``iter(loader)``)."""

    return torch.Generator().manual_seed(stable_seed("loader", *key))

