"""``promptbench table``: result files → ``long.csv``, ``summary.csv``, ``table.{md,tex,html}``, plots and the
comparison with published numbers, under ``outputs/tables/<name>/``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from promptbench.engine.results import read_result
from promptbench.metrics.reliability import method_reliability_plots
from promptbench.report.aggregate import Table, TableSpec, build_tables
from promptbench.report.collect import collect
from promptbench.report.expected import Expected, compare, load_expected
from promptbench.report.plots import plot_table
from promptbench.report.render import render_html, render_latex, render_markdown
from promptbench.report.report import ReportSection, render_report, stats_sections
from promptbench.report.stats import write_stats
from promptbench.sweep.grid import compose_cells, grid


@dataclass
class Built:
    out_dir: Path
    tables: list[Table]
    files: list[Path] = field(default_factory=list)
    comparison: pd.DataFrame | None = None
    stats: dict[str, pd.DataFrame] = field(default_factory=dict)  # tables.stats: "intervals", "paired"
    left_out: int = 0  # result files not counted: unusable, copies, or at no cell's path (named in warnings)


def grid_cells(experiment: str | None, overrides: Sequence[str]) -> tuple[pd.DataFrame, DictConfig]:
    """The experiment's grid (identity, and the config hash where a result exists, per cell, with the sweep's
    status of the result read and its ``finished`` time as ``seen``) and the first cell's config."""
    overrides_per_cell = experiment_grid(experiment, overrides)
    return cell_frame(overrides_per_cell), default_config(overrides_per_cell[0])


def experiment_grid(experiment: str | None, overrides: Sequence[str]) -> list[list[str]]:

    return grid(([f"experiment={experiment}"] if experiment else []) + list(overrides))


def cell_frame(overrides_per_cell: Sequence[Sequence[str]]) -> pd.DataFrame:
    """One row per cell: identity, expected config hash, the sweep's status (``done``, ``stale``, ...) and the
    ``finished`` time of the result that status is about (``seen``)."""

    cells = compose_cells(overrides_per_cell, check_methods=False)  # reads results: no method (nor torch) imported
    frame = pd.DataFrame([{**c.identity, "config_hash": c.config_hash, "cell_status": c.status,
                           "seen": (read_result(c.path) or {}).get("finished") if c.config_hash else None}
                          for c in cells])
    frame["method"] = [f"{m}+{v}" if v else m for m, v in zip(frame["method"], frame["variant"])]
    return frame


def default_config(overrides: Sequence[str]) -> DictConfig:

    cfg = compose_cells([list(overrides)], with_status=False, keep_config=True, check_methods=False)[0].cfg
    assert cfg is not None
    return cfg


def build(results: Path | None = None, out_dir: Path | None = None, experiment: str | None = None,
          overrides: Sequence[str] = (), expected: str | None = None, name: str | None = None,
          metric: str | None = None, plots: bool = True, sections: Sequence[ReportSection] = (),
          wandb: bool = False, reference: str = "zeroshot") -> Built:
    """Build every output. With ``experiment`` the table covers exactly that experiment's grid (the same
    composition as ``promptbench sweep experiment=<name> <overrides>``), laid out by its ``table:`` block; missing
    cells show as '–'. Without it, every result found is tabulated, one table per protocol.
    ``expected``: a ``conf/expected`` name (default: the experiment's ``table.expected``; ``none`` to skip).
    ``sections``: extra report sections (``stats.report_sections`` adds its own); ``wandb``: log the tables and
    figures to one W&B summary run of the sweep.
    ``reference``: the method every other one is compared with in ``stats.*`` (seed-paired statistics)."""
    grid_overrides = experiment_grid(experiment, overrides) if experiment else None
    cfg = default_config(grid_overrides[0] if grid_overrides else overrides)
    output_dir = Path(str(cfg.paths.output_dir))
    results = Path(results) if results else output_dir / "results"
    # results first, then each cell's status: every result read exists when its status is read, so a cell that
    # a running sweep finishes meanwhile is judged on that result (not compared with a hash never computed)
    long = collect(results)
    if grid_overrides:
        node = OmegaConf.to_container(cfg.table, resolve=True) if cfg.get("table") is not None else None
        spec = TableSpec.from_config(node, name=name or experiment, cells=cell_frame(grid_overrides))
    else:
        spec = TableSpec.from_config(cfg.get("table"), name=name or "all")  # a `+table.<key>=` override applies
    if name:
        spec.name = name
    if metric:
        spec.metric = metric
    out_dir = Path(out_dir) if out_dir else output_dir / "tables" / spec.name
    _check_metric(long, spec.metric)
    tables = build_tables(long, spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    built = Built(out_dir, tables, left_out=int(long.attrs.get("left_out", 0)))

    expected_name = expected if expected is not None else spec.expected
    exp: Expected | None = None
    if expected_name and str(expected_name).lower() != "none":
        exp = load_expected(str(expected_name))
        built.comparison = compare(tables, exp)
        built.comparison.to_csv(out_dir / "comparison.csv", index=False)
        built.files.append(out_dir / "comparison.csv")

    used = pd.concat([t.long for t in tables], ignore_index=True) if tables else long
    used.to_csv(out_dir / "long.csv", index=False)
    summary = pd.concat([t.summary for t in tables], ignore_index=True) if tables else pd.DataFrame()
    summary.to_csv(out_dir / "summary.csv", index=False)
    source = os.path.relpath(results, out_dir)  # relative to the report: no absolute path in headings
    header = f"{spec.name}: {len(used)} result file(s) from {source}"
    (out_dir / "table.md").write_text(render_markdown(tables, header, built.comparison, exp))
    (out_dir / "table.tex").write_text(render_latex(tables, built.comparison, exp))
    (out_dir / "table.html").write_text(render_html(tables, header, built.comparison, exp))
    built.files += [out_dir / f for f in ("long.csv", "summary.csv", "table.md", "table.tex", "table.html")]
    built.stats, stats_files = write_stats(used, out_dir, reference, spec.metric, title=f"{spec.name}: seed statistics")
    built.files += stats_files
    figures: list[Path] = []
    if plots:
        for table in tables:
            prefix = f"{table.protocol}_" if len(tables) > 1 else ""
            figures += plot_table(table, out_dir, prefix)
        built.files += method_reliability_plots(used, out_dir)  # one pooled reliability diagram per method
    built.files += figures
    extra = [*sections, *stats_sections(tables, out_dir, stats=built.stats, reference=reference)]
    command = "promptbench table" + (f" --experiment {experiment}" if experiment else "") + "".join(
        f" {o}" for o in overrides if not o.lstrip("+").startswith("paths."))  # paths: machine-specific
    (out_dir / "report.html").write_text(render_report(tables, spec.title or spec.name, out_dir, figures,
                                                       built.comparison, exp, extra, source, command,
                                                       heading=f"promptbench report: {spec.name}"))
    built.files.append(out_dir / "report.html")
    if wandb:
        from promptbench.report.wandb_run import log_table_run

        log_table_run(built, cfg.get("logger"), spec.name, experiment)
    return built


def _check_metric(long: pd.DataFrame, metric: str) -> None:
    """``--metric`` must name a metric some result has (``test/<m>`` or ``test_base/<m>``), else one line."""
    names = {c.split("/", 1)[1] for c in long.columns if c.startswith(("test/", "test_base/", "test_novel/"))}
    if names and metric not in names:
        raise ValueError(f"--metric {metric}: no result has it (available: {', '.join(sorted(names))})")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="promptbench table",
        description="Results → long CSV, mean ± std tables (Markdown, LaTeX, HTML) and plots. Extra arguments are "
                    "Hydra overrides applied to the experiment, as for `promptbench sweep` "
                    "(e.g. backbone=tiny_clip, table.include_busi=true, paths.output_dir=...).")
    parser.add_argument("--results", type=Path, help="folder searched for result.json (default: "
                        "<paths.output_dir>/results)")
    parser.add_argument("--experiment", help="restrict to this experiment's grid and use its table layout")
    parser.add_argument("--expected", help="conf/expected/<name>.yaml to show beside ours ('none': skip)")
    parser.add_argument("--out", type=Path, help="output folder (default: <paths.output_dir>/tables/<name>)")
    parser.add_argument("--name", help="table name (default: the experiment, or 'all')")
    parser.add_argument("--metric", help="acc (default), macro_f1 or balanced_acc")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--wandb", action="store_true", help="also log the tables and figures to one W&B summary "
                        "run of the sweep (offline unless logged in; upload with `promptbench sync`)")
    parser.add_argument("--reference", default="zeroshot", help="method the seed-paired comparison (stats.*) "
                        "compares every other method with (default: zeroshot)")
    args, overrides = parser.parse_known_args(list(argv))
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        built = build(args.results, args.out, args.experiment, overrides, args.expected, args.name, args.metric,
                      plots=not args.no_plots, wandb=args.wandb, reference=args.reference)
    except (FileNotFoundError, ValueError) as err:
        print(f"table: {err}", file=sys.stderr)
        return 2
    if not built.tables:
        print(f"no usable result.json found for this table (results folder: {args.results or 'outputs/results'})")
    for table in built.tables:
        ok = int((table.long["status"] == "ok").sum()) if len(table.long) else 0
        print(f"{table.title}: {ok} ok, {len(table.failed)} failed, {table.missing} missing cell(s)")
    if built.left_out:
        print(f"{built.left_out} result file(s) left out: unusable, copies, or not at their cell's path "
              "(each named in a warning above)")
    print(f"wrote {len(built.files)} files to {built.out_dir}")
    return 0
