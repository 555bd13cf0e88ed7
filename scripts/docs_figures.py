"""Regenerate the figures under docs/img from a finished demo (``make demo``), with the code as it is now.

    python scripts/docs_figures.py                          # from outputs/results
    python scripts/docs_figures.py --output-dir /other/out  # a demo's paths.output_dir (results/ inside)

Builds ``promptbench table --experiment demo`` (accuracy vs shots, one figure per method family:
``table.figure.split_by=group`` in conf/experiment/demo.yaml) and the 16-shot table laid out as in the README
(``shots=16 table.rows=[method] table.columns=[dataset]``: grouped bars) in a temporary folder and copies into
docs/img: every ``acc_vs_shots_<family>.pdf``, ``acc_bars_<family>.pdf`` and the PNG the README shows
(:data:`README_FIGURE`). ``docs/img/report.png`` is a browser screenshot of the report (docs/report.md has the
command); this script does not touch it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMG = REPO / "docs" / "img"
#: the figure README.md shows (PNG, 300 dpi at the figure's printed width)
README_FIGURE = "acc_vs_shots_text.png"
TABLES = {"acc_vs_shots": ["--experiment", "demo", "--name", "demo"],
          "acc_bars": ["--experiment", "demo", "--name", "demo_k16", "shots=16", "table.rows=[method]",
                       "table.columns=[dataset]"]}


def main(argv: Sequence[str] | None = None) -> int:
    from promptbench.report.build import main as table_main

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs",
                        help="the demo's paths.output_dir (holding results/)")
    args = parser.parse_args(argv)
    results = args.output_dir / "results"
    if not results.is_dir():
        print(f"no results folder {results}: run `make demo` first", file=sys.stderr)
        return 2
    IMG.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for stem, table_args in TABLES.items():
            out = Path(tmp) / stem
            rc = table_main(["--results", str(results), "--out", str(out), "--expected", "none", *table_args,
                             f"paths.output_dir={args.output_dir}"])
            if rc != 0:
                return rc
            for old in IMG.glob(f"{stem}*.pdf"):
                old.unlink()
            files = sorted(out.glob(f"{stem}*.pdf")) + sorted(out.glob(README_FIGURE))
            for path in files:
                shutil.copyfile(path, IMG / path.name)
                written.append(IMG / path.name)
    for path in written:
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
