"""The console: library chatter off so progress lines and results stay readable."""

from __future__ import annotations

import logging


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

