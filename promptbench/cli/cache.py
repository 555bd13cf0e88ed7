"""``promptbench cache [list|clear] [overrides...]``: inspect or empty the frozen-feature store.

The folder is the one a run with the same overrides uses: ``paths.cache_dir`` (default ``$PROMPTBENCH_CACHE``, else
``<paths.output_dir>/cache``) plus ``/features``; an explicit ``paths.cache_dir=DIR`` wins over the variable, and
``paths.output_dir=runs/demo`` selects another default.
"""

from __future__ import annotations

import sys
from collections import Counter

USAGE = "usage: promptbench cache [list|clear] [paths.cache_dir=DIR | paths.output_dir=DIR]"


def main(argv: list[str]) -> int:
    from promptbench.config import compose
    from promptbench.config.overrides import quiet_launcher_schema_warning
    from promptbench.features import FeatureStore, cache_dir

    quiet_launcher_schema_warning()

    action, overrides = "list", list(argv)
    if overrides and "=" not in overrides[0]:
        action = overrides.pop(0)
    if action in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if action not in ("list", "clear"):
        print(f"unknown cache action '{action}'.\n{USAGE}", file=sys.stderr)
        return 2
    root = cache_dir(compose(overrides))
    store = FeatureStore(root)
    if action == "clear":
        n = store.clear()
        print(f"removed {n} feature entries from {root}")
        return 0
    entries = store.entries()
    if not entries:
        print(f"feature cache {root}: empty")
        return 0
    groups: Counter = Counter()
    sizes: Counter = Counter()
    for e in entries:
        group = (str(e.get("dataset", "?")), str(e.get("backbone", "?")), str(e.get("tower", "?")),
                 str(e.get("precision", "?")), str(e.get("kind", "?")))
        groups[group] += 1
        sizes[group] += int(e.get("bytes", 0))
    print(f"feature cache {root}: {len(entries)} entries, {sum(sizes.values()) / 2**20:.1f} MiB")
    print(f"{'dataset':<22} {'backbone':<16} {'weights':<13} {'precision':<11} {'kind':<11} {'entries':>7} "
          f"{'MiB':>8}")
    for group in sorted(groups):
        dataset, tower, weights, precision, kind = group
        print(f"{dataset:<22} {tower:<16} {weights:<13} {precision:<11} {kind:<11} {groups[group]:>7} "
              f"{sizes[group] / 2**20:>8.2f}")
    if unchecked := sum(not e["checked"] for e in entries):
        print(f"{unchecked} entries have no checksum (written by an older promptbench): each is recomputed on first "
              f"use, or run `promptbench cache clear`")
    return 0
