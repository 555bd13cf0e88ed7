"""Regenerate README.md's measured tables and numbers from result files, so they cannot go stale.

Every generated block in README.md sits between marker comments::

    <!-- pb:demo_k16 -->
    | Method | X-ray (avg) | ...
    <!-- /pb:demo_k16 -->

and this script replaces what is between them with what the code produces now:

    python scripts/readme_tables.py                 # rewrite README.md from outputs/ (after `make demo`)
    python scripts/readme_tables.py --check         # exit 1 when README.md differs (nothing written)
    python scripts/readme_tables.py --output-dir /other/outputs --readme README.md

Blocks (see BLOCKS): the demo's 16-shot modality table and the demo seed-comparison table (``promptbench table``
on ``<output-dir>/results``: the first pipe table of its table.md), the demo zero-shot accuracies (from the same
results), and the method benchmark tables (``<output-dir>/bench/methods_<backbone>_<device>.md`` from
``make bench``). A block whose source is missing is left as it is and reported.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- pb:(?P<name>[\w.-]+) -->)(?P<body>.*?)(<!-- /pb:(?P=name) -->)", re.S)


class SourceMissing(Exception):
    """The result files or benchmark file a block is made from do not exist."""


def first_pipe_table(markdown: str) -> str:
    """The first Markdown pipe table (consecutive lines starting with '|') of ``markdown``."""
    lines, block = markdown.splitlines(), []
    for line in lines:
        if line.startswith("|"):
            block.append(line.rstrip())
        elif block:
            break
    if not block:
        raise SourceMissing("no table in the generated Markdown")
    return "\n".join(block)


def table_block(args: Sequence[str]) -> Callable[[Path], str]:
    """A block made by ``promptbench table <args>`` on ``<output_dir>/results`` (its first table)."""

    def make(output_dir: Path) -> str:
        from promptbench.report.build import main as table_main

        results = output_dir / "results"
        if not results.is_dir():
            raise SourceMissing(f"no results folder {results}")
        with tempfile.TemporaryDirectory() as tmp:
            rc = table_main(["--results", str(results), "--out", tmp, "--no-plots", *args,
                             f"paths.output_dir={output_dir}"])
            table = Path(tmp) / "table.md"
            if rc != 0 or not table.is_file():
                raise SourceMissing(f"promptbench table {' '.join(args)} produced no table")
            return "\n" + first_pipe_table(table.read_text()) + "\n"

    return make


def zeroshot_block(datasets: Sequence[tuple[str, str]], shots: int = 16) -> Callable[[Path], str]:
    """``**MRI (BTMRI) 59.5 %** (chance 25 %), ...``: zero-shot test accuracy (mean over seeds) per demo dataset."""

    def make(output_dir: Path) -> str:
        from promptbench.config import compose
        from promptbench.report.collect import collect

        results = output_dir / "results"
        if not results.is_dir():
            raise SourceMissing(f"no results folder {results}")
        long = collect(results)
        if long.empty or "test/acc" not in long:
            raise SourceMissing(f"no results in {results}")
        parts = []
        for dataset, label in datasets:
            rows = long[(long["method"] == "zeroshot") & (long["dataset"] == dataset) & (long["shots"] == shots)
                        & (long["status"] == "ok") & (long["backbone"] == "medclip_tiny")]
            if rows.empty:
                raise SourceMissing(f"no zero-shot result for {dataset}")
            n_classes = len(compose([f"dataset={dataset}"]).dataset.classnames)
            acc = 100 * float(pd.to_numeric(rows["test/acc"]).mean())
            parts.append(f"**{label} {acc:.1f} %** (chance {100 / n_classes:.0f} %)")
        return ", ".join(parts)

    return make


def file_table_block(relative: str) -> Callable[[Path], str]:
    """The first table of a Markdown file under the output folder (e.g. ``bench/methods_medclip_tiny_cpu.md``)."""

    def make(output_dir: Path) -> str:
        path = output_dir / relative
        if not path.is_file():
            raise SourceMissing(f"no file {path}")
        return "\n" + first_pipe_table(path.read_text()) + "\n"

    return make


def demo_timing_block(relative: str = "tables/demo/timing.json") -> Callable[[Path], str]:
    """``**9.1 min** for 486 cells on 2 CPU cores``: the wall time ``promptbench demo`` recorded beside its tables."""

    def make(output_dir: Path) -> str:
        import json

        path = output_dir / relative
        if not path.is_file():
            raise SourceMissing(f"no file {path}")
        t = json.loads(path.read_text())
        return (f"**{t['minutes']:.1f} min** for {t['cells']} cells on {t['cpu_count']} CPU cores "
                f"({t['finished'][:10]})")

    return make


def before_after_block(before_csv: Path, datasets: Sequence[str], shots: int = 16) -> Callable[[Path], str]:
    """Per method: the mean over datasets and seeds of test accuracy at ``shots``, before (a committed result file
    of an earlier commit) and now (``<output_dir>/results``), and the difference."""

    def make(output_dir: Path) -> str:
        from promptbench.report.collect import collect
        from promptbench.report.results_meta import display_name

        if not before_csv.is_file():
            raise SourceMissing(f"no file {before_csv}")
        results = output_dir / "results"
        if not results.is_dir():
            raise SourceMissing(f"no results folder {results}")

        def means(frame: pd.DataFrame) -> pd.Series:
            rows = frame[(frame["status"] == "ok") & (frame["shots"] == shots) & frame["dataset"].isin(datasets)
                         & (frame.get("variant", pd.Series("", index=frame.index)).fillna("") == "")]
            per_dataset = rows.groupby(["method", "dataset"])["test/acc"].mean()
            return 100 * per_dataset.groupby("method").mean()

        now_long = collect(results)
        if "backbone" in now_long:
            now_long = now_long[now_long["backbone"] == "medclip_tiny"]
        before, now = means(pd.read_csv(before_csv)), means(now_long)

        def cell(v: float | None) -> str:
            return "–" if v is None or pd.isna(v) else f"{v:.2f}"

        lines = ["| Method | before | now | Δ |", "|:---|---:|---:|---:|"]
        for method in [*before.index, *[m for m in now.index if m not in before.index]]:
            b, n = before.get(method), now.get(method)
            delta = "–" if b is None or n is None or pd.isna(b) or pd.isna(n) else f"{n - b:+.2f}"
            lines.append(f"| {display_name(method)} | {cell(b)} | {cell(n)} | {delta} |")
        return "\n" + "\n".join(lines) + "\n"

    return make


@dataclass
class Outcome:
    name: str
    changed: bool
    note: str = ""


#: marker name -> how its content is made from the output folder
BLOCKS: dict[str, Callable[[Path], str]] = {
    "demo_zeroshot": zeroshot_block([("demo_btmri", "MRI (BTMRI)"), ("demo_ctkidney", "CT (CTKidney)"),
                                     ("demo_kneexray", "X-ray (KneeXray)")]),
    "demo_k16": table_block(["--experiment", "demo", "--name", "demo_k16", "shots=16", "table.rows=[method]",
                             "table.columns=[dataset]"]),
    "demo_seed_comparison": table_block(["--experiment", "demo_seed_comparison"]),
    "demo_timing": demo_timing_block(),
    "demo_k16_before_after": before_after_block(REPO / "docs" / "bench_data" / "demo_before_f8f5b8f.csv",
                                                ["demo_btmri", "demo_ctkidney", "demo_kneexray"]),
    "bench_medclip_tiny_cpu": file_table_block("bench/methods_medclip_tiny_cpu.md"),
    "bench_biomedclip_arch_cpu": file_table_block("bench/methods_biomedclip_arch_cpu.md"),
}


def regenerate(text: str, output_dir: Path, blocks: dict[str, Callable[[Path], str]] | None = None
               ) -> tuple[str, list[Outcome]]:
    """``text`` with every known marker block replaced; unknown markers and missing sources are kept as they are."""
    blocks = BLOCKS if blocks is None else blocks
    outcomes: list[Outcome] = []

    def replace(match: re.Match[str]) -> str:
        name, body = match["name"], match["body"]
        if name not in blocks:
            outcomes.append(Outcome(name, False, "unknown block (kept)"))
            return match[0]
        try:
            new = blocks[name](output_dir)
        except SourceMissing as err:
            outcomes.append(Outcome(name, False, f"kept: {err}"))
            return match[0]
        outcomes.append(Outcome(name, new != body))
        return f"{match[1]}{new}{match[4]}"

    return MARKER.sub(replace, text), outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs",
                        help="folder holding results/ and bench/ (paths.output_dir)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs; write nothing")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new, outcomes = regenerate(text, args.output_dir)
    if not outcomes:
        print(f"{args.readme}: no <!-- pb:NAME --> blocks", file=sys.stderr)
        return 2
    for o in outcomes:
        print(f"{o.name}: {'changed' if o.changed else 'unchanged'}{f' ({o.note})' if o.note else ''}")
    if args.check:
        return 1 if new != text else 0
    if new != text:
        args.readme.write_text(new)
        print(f"wrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
