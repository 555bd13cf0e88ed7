"""Table builder on hand-made result.json files: cells, mean ± sample std, averages, HM vs AM, missing / failed
cells, the experiment grid, published-number comparison, and the ``table`` command."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from promptbench import cli
from promptbench.config import compose
from promptbench.engine.results import config_hash
from promptbench.report.aggregate import harmonic_mean
from promptbench.report.build import build
from promptbench.report.expected import available, load_expected
from promptbench.sweep.grid import grid

MODALITY = {"xa": "X-ray", "xb": "X-ray", "ct": "CT", "d1": "MRI", "d2": "CT", "covid": "X-ray",
            "ctkidney": "CT", "btmri": "MRI", "demo_btmri": "MRI", "demo_ctkidney": "CT"}


def write_result(root: Path, dataset: str, method: str, shots: int, seed: int, metrics: dict[str, float] | None,
                 protocol: str = "few_shot", backbone: str = "tiny_clip", config_hash: str = "h",
                 error: str | None = None) -> Path:
    """A result.json like run() writes (``metrics=None``: a failed run)."""
    path = (root / protocol / dataset / backbone / method / f"shots_{shots}" / f"seed_{seed}" / "result.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = {"protocol": protocol, "dataset": dataset, "modality": MODALITY.get(dataset, ""), "organ": "",
                "backbone": backbone, "method": method, "variant": "", "shots": shots, "seed": seed}
    payload: dict[str, Any] = {"schema": 1, "identity": identity, "hashes": {"config": config_hash}}
    if metrics is None:
        payload.update(status="failed", error=error or "RuntimeError: boom")
    else:
        payload.update(status="ok", error=None, metrics=metrics, timing={"wall_s": 1.0}, params={"trainable": 4})
    path.write_text(json.dumps(payload))
    return path


def md_rows(markdown: str, section: int = 0) -> list[list[str]]:
    """Body rows of the ``section``-th pipe table, with blank (repeated) labels filled from the row above."""
    tables, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    rows = tables[section][2:]
    for i, row in enumerate(rows):
        if i and row[0] == "":
            row[0] = rows[i - 1][0]
    return [tables[section][0], *rows]


def lookup(rows: list[list[str]], *labels: str) -> dict[str, str]:
    header = rows[0]
    for row in rows[1:]:
        if tuple(row[: len(labels)]) == labels:
            return dict(zip(header, row))
    raise AssertionError(f"no row {labels} in {[r[:len(labels)] for r in rows[1:]]}")


def pm(values: list[float]) -> str:
    """Hand-computed cell text: mean ± sample std (statistics.stdev is the n-1 estimator), in %."""
    return f"{statistics.mean(values) * 100:.2f} ± {statistics.stdev(values) * 100:.2f}"


# seeds 1, 2, 3 (None = failed, absent = no file)
FEW_SHOT = {
    ("coop", "xa", 1): [0.70, 0.74, 0.78],
    ("coop", "xb", 1): [0.50, 0.60, 0.55],
    ("coop", "ct", 1): [0.90, 0.90, 0.96],
    ("coop", "xa", 4): [0.80, 0.82, 0.84],
    ("coop", "xb", 4): [0.60, 0.62, 0.64],
    # ("coop", "ct", 4): missing entirely
    ("zeroshot", "xa", 1): [0.40, 0.40, 0.40],
    ("zeroshot", "xb", 1): [0.30, None, 0.34],
    ("zeroshot", "ct", 1): [0.25, 0.25, 0.25],
    ("zeroshot", "xa", 4): [None, None, None],
    ("zeroshot", "xb", 4): [0.30, 0.30, 0.30],
    ("zeroshot", "ct", 4): [0.25, 0.25, 0.25],
}


@pytest.fixture(scope="module")
def few_shot_tables(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fs")
    results = tmp / "results"
    for (method, dataset, shots), values in FEW_SHOT.items():
        for seed, value in enumerate(values, 1):
            write_result(results, dataset, method, shots, seed, None if value is None else {"test/acc": value})
    built = build(results=results, out_dir=tmp / "tables", overrides=[f"paths.output_dir={tmp}"])
    return built, (tmp / "tables" / "table.md").read_text()


def test_long_csv_has_one_row_per_result(few_shot_tables) -> None:
    built, _ = few_shot_tables
    long = pd.read_csv(built.out_dir / "long.csv")
    assert len(long) == sum(len(v) for v in FEW_SHOT.values()) == 33
    assert (long["status"] == "failed").sum() == 4
    row = long[(long["method"] == "coop") & (long["dataset"] == "ct") & (long["shots"] == 1) & (long["seed"] == 3)]
    assert row["test/acc"].item() == pytest.approx(0.96)
    assert set(long["modality"]) == {"X-ray", "CT"}


def test_cells_are_mean_and_sample_std_over_seeds(few_shot_tables) -> None:
    built, md = few_shot_tables
    rows = md_rows(md)
    assert rows[0][:4] == ["Dataset", "Method", "K=1", "K=4"]
    assert lookup(rows, "xa", "coop")["K=1"] == pm(FEW_SHOT[("coop", "xa", 1)]) == "74.00 ± 4.00"
    assert lookup(rows, "xb", "coop")["K=1"] == "55.00 ± 5.00"
    assert lookup(rows, "ct", "coop")["K=1"] == pm(FEW_SHOT[("coop", "ct", 1)]) == "92.00 ± 3.46"
    assert lookup(rows, "xa", "coop")["K=4"] == "82.00 ± 2.00"
    assert lookup(rows, "xa", "zeroshot")["K=1"] == "40.00 ± 0.00"
    summary = pd.read_csv(built.out_dir / "summary.csv")
    cell = summary[(summary["method"] == "coop") & (summary["dataset"] == "ct") & (summary["shots"] == 1)]
    assert cell["std"].item() == pytest.approx(statistics.stdev([0.90, 0.90, 0.96]))  # ddof=1, not ddof=0
    assert "sample standard deviation (ddof=1)" in md


def test_per_modality_and_overall_averages(few_shot_tables) -> None:
    _, md = few_shot_tables
    rows = md_rows(md)
    xa, xb, ct = (FEW_SHOT[("coop", d, 1)] for d in ("xa", "xb", "ct"))
    # X-ray: mean of the two dataset means; ± over seeds of the per-seed X-ray averages
    xray_per_seed = [(a + b) / 2 for a, b in zip(xa, xb)]
    assert lookup(rows, "X-ray (avg)", "coop")["K=1"] == pm(xray_per_seed) == "64.50 ± 3.91"
    assert lookup(rows, "CT (avg)", "coop")["K=1"] == pm(ct)
    overall = [(a + b + c) / 3 for a, b, c in zip(xa, xb, ct)]
    assert lookup(rows, "Average", "coop")["K=1"] == pm(overall) == "73.67 ± 3.28"
    # the overall average is over datasets, not over the modality averages (those would give 78.25)
    assert not lookup(rows, "Average", "coop")["K=1"].startswith("78.25")


def test_missing_and_failed_cells(few_shot_tables) -> None:
    built, md = few_shot_tables
    rows = md_rows(md)
    assert lookup(rows, "ct", "coop")["K=4"] == "–"                   # no result file at all
    assert lookup(rows, "CT (avg)", "coop")["K=4"] == "–"             # an average over a missing cell
    assert lookup(rows, "Average", "coop")["K=4"] == "–"
    per_seed = [(a + b) / 2 for a, b in zip(FEW_SHOT[("coop", "xa", 4)], FEW_SHOT[("coop", "xb", 4)])]
    assert lookup(rows, "X-ray (avg)", "coop")["K=4"] == pm(per_seed) == "72.00 ± 2.00"
    # one failed seed: averaged over the two others, marked (2/3), and listed
    assert lookup(rows, "xb", "zeroshot")["K=1"] == pm([0.30, 0.34]) + " (2/3)" == "32.00 ± 2.83 (2/3)"
    assert lookup(rows, "xa", "zeroshot")["K=4"] == "failed"          # every seed failed
    assert lookup(rows, "X-ray (avg)", "zeroshot")["K=1"] == "36.00 (2/3)"  # no std: seed 2 lacks xb
    failed = md_rows(md, section=1)
    assert failed[0] == ["method", "dataset", "shots", "seed", "error"]
    assert sorted((r[0], r[1], r[2], r[3]) for r in failed[1:]) == [
        ("zeroshot", "xa", "4", "1"), ("zeroshot", "xa", "4", "2"), ("zeroshot", "xa", "4", "3"),
        ("zeroshot", "xb", "1", "2")]
    assert "Missing: 1 cell(s)" in md
    table = built.tables[0]
    assert table.missing == 1 and len(table.failed) == 4


def test_latex_html_and_plots(few_shot_tables) -> None:
    built, _ = few_shot_tables
    tex = (built.out_dir / "table.tex").read_text()
    assert r"74.00 $\pm$ 4.00" in tex and r"\begin{tabular}" in tex
    html = (built.out_dir / "table.html").read_text()
    assert "74.00 ± 4.00" in html and "<table>" in html
    assert (built.out_dir / "acc_vs_shots.png").stat().st_size > 1000


def test_base_to_novel_harmonic_vs_arithmetic_mean(tmp_path: Path) -> None:
    values = {"d1": ([0.80, 0.90], [0.60, 0.70]), "d2": ([0.50, 0.50], [1.00, 0.90])}
    for dataset, (base, novel) in values.items():
        for seed, (b, n) in enumerate(zip(base, novel), 1):
            write_result(tmp_path / "results", dataset, "coop", 16, seed,
                         {"test_base/acc": b, "test_novel/acc": n}, protocol="base_to_novel")
    built = build(results=tmp_path / "results", out_dir=tmp_path / "t", overrides=[f"paths.output_dir={tmp_path}"])
    rows = md_rows((tmp_path / "t" / "table.md").read_text())
    assert rows[0] == ["Dataset", "Method", "Base", "Novel", "HM", "mean HM", "AM (B+N)/2 †"]
    d1 = lookup(rows, "d1", "coop")
    assert d1["Base"] == pm([0.80, 0.90]) == "85.00 ± 7.07"
    assert d1["HM"] == f"{2 * 85 * 65 / (85 + 65):.2f}" == "73.67"   # true harmonic mean of B=85, N=65
    assert d1["AM (B+N)/2 †"] == "75.00"                              # the papers' arithmetic "HM"
    assert lookup(rows, "d2", "coop")["HM"] == f"{harmonic_mean(50, 95):.2f}" == "65.52"
    avg = lookup(rows, "Average", "coop")
    assert avg["Base"] == pm([(0.80 + 0.50) / 2, (0.90 + 0.50) / 2]) == "67.50 ± 3.54"  # ± over per-seed averages
    assert avg["Novel"] == "80.00 ± 0.00"
    assert avg["HM"] == f"{2 * 67.5 * 80 / 147.5:.2f}" == "73.22"    # HM of the averaged B and N
    assert avg["mean HM"] == f"{(2 * 85 * 65 / 150 + 2 * 50 * 95 / 145) / 2:.2f}" == "69.59"
    assert avg["AM (B+N)/2 †"] == "73.75"
    assert lookup(rows, "d1", "coop")["mean HM"] == ""                 # only defined for averages
    assert "not a harmonic mean" in (tmp_path / "t" / "table.md").read_text()
    assert (built.out_dir / "base_novel.png").is_file()


def test_base_to_novel_average_std_over_seeds(tmp_path: Path) -> None:
    for dataset in ("d1", "d2"):
        for seed, b in enumerate([0.5, 0.7, 0.9], 1):
            write_result(tmp_path / "results", dataset, "coop", 16, seed, {"test_base/acc": b, "test_novel/acc": 0.5},
                         protocol="base_to_novel")
    build(results=tmp_path / "results", out_dir=tmp_path / "t", overrides=[f"paths.output_dir={tmp_path}"])
    rows = md_rows((tmp_path / "t" / "table.md").read_text())
    assert lookup(rows, "Average", "coop")["Base"] == pm([0.5, 0.7, 0.9]) == "70.00 ± 20.00"


def _grid_overrides(tmp: Path) -> list[str]:
    return ["method=zeroshot,biomed_dpt", "dataset=demo_btmri,demo_ctkidney", "shots=1", "seed=1,2",
            "backbone=tiny_clip", f"paths.output_dir={tmp}"]


def test_experiment_table_covers_exactly_the_grid(tmp_path: Path) -> None:
    overrides = _grid_overrides(tmp_path)
    cells = grid(["experiment=demo_seed_comparison", *overrides])
    assert len(cells) == 8
    hashes = {}
    for ovs in cells:
        cfg = compose(ovs)
        hashes[(str(cfg.method.name), str(cfg.dataset.name), int(cfg.seed))] = config_hash(cfg)
    res = tmp_path / "results"
    for dataset in ("demo_btmri", "demo_ctkidney"):
        for seed in (1, 2):
            write_result(res, dataset, "zeroshot", 1, seed, {"test/acc": 0.25 + 0.01 * seed},
                         config_hash=hashes[("zeroshot", dataset, seed)])
    write_result(res, "demo_btmri", "biomed_dpt", 1, 1, {"test/acc": 0.5}, config_hash="outdated")
    write_result(res, "demo_btmri", "coop", 1, 1, {"test/acc": 0.9})            # not in the grid
    write_result(res, "demo_btmri", "zeroshot", 4, 1, {"test/acc": 0.9})        # not in the grid
    assert cli.main(["table", "--experiment", "demo_seed_comparison", *overrides, "table.show_datasets=true"]) == 0
    out = tmp_path / "tables" / "demo_seed_comparison"
    long = pd.read_csv(out / "long.csv")
    assert len(long) == 5 and set(long["method"]) == {"zeroshot", "biomed_dpt"}
    md = (out / "table.md").read_text()
    rows = md_rows(md)
    assert rows[0] == ["Dataset", "Method", "K=1"]
    assert lookup(rows, "demo_btmri", "Zero-shot")["K=1"] == pm([0.26, 0.27])   # the table's method labels
    assert lookup(rows, "demo_btmri", "Biomed-DPT")["K=1"] == "50.00 (1/2)"
    assert lookup(rows, "demo_ctkidney", "Biomed-DPT")["K=1"] == "–"
    assert lookup(rows, "MRI (avg)", "Zero-shot")["K=1"] == pm([0.26, 0.27])
    assert "Stale results (1)" in md and "biomed_dpt/shots_1/seed_1" in md
    assert "Missing: 1 cell(s)" in md


def test_expected_files_load_with_sources() -> None:
    assert {"few_shot", "base_to_novel", "seed_comparison"} <= set(available())
    few = load_expected("few_shot").entries
    assert few[(few.source == "biomedcoop_readme") & (few.method == "biomedcoop") & (few.shots == 16)
               ]["value"].item() == 72.42
    assert few[(few.source == "biomeddpt_readme") & (few.method == "biomed_dpt") & (few.shots == 1)
               ]["value"].item() == 59.03
    b2n = load_expected("base_to_novel").entries
    assert b2n[(b2n.source == "biomeddpt_readme") & (b2n.method == "biomed_dpt") & (b2n.metric == "am")
               ]["value"].item() == 77.02
    head = load_expected("seed_comparison")
    assert head.sources["summary_vpt_comparison"]["label"] == "secondary summary, unverified"
    e = head.entries
    assert e[(e.method == "vpt_deep") & (e.metric == "acc")]["value"].item() == pytest.approx(76.9)  # 0.769


def test_expected_comparison_beside_ours(tmp_path: Path) -> None:
    res = tmp_path / "results"
    acc = {("biomed_dpt", "covid"): [0.80, 0.84], ("biomed_dpt", "ctkidney"): [0.70, 0.72],
           ("biomed_dpt", "btmri"): [0.60, 0.64], ("coop", "covid"): [0.70, 0.70],
           ("coop", "ctkidney"): [0.60, 0.60], ("coop", "btmri"): [0.50, 0.50]}
    for (method, dataset), values in acc.items():
        for seed, v in enumerate(values, 1):
            write_result(res, dataset, method, 16, seed, {"test/acc": v}, backbone="biomedclip")
    overrides = ["method=biomed_dpt,coop", "dataset=covid,ctkidney,btmri", "seed=1,2", f"paths.output_dir={tmp_path}"]
    built = build(experiment="seed_comparison", overrides=overrides)   # expected: the experiment's default
    comp = built.comparison.set_index(["source", "method", "dataset", "metric"])
    ours_avg = statistics.mean([statistics.mean(acc[("biomed_dpt", d)]) for d in ("covid", "ctkidney", "btmri")])
    row = comp.loc[("summary_vpt_comparison", "biomed_dpt", "Average", "acc")]
    assert row["ours"] == pytest.approx(ours_avg * 100) and row["theirs"] == pytest.approx(82.3)
    assert row["diff"] == pytest.approx(ours_avg * 100 - 82.3)
    xray = comp.loc[("summary_biomeddpt_modality", "biomed_dpt", "X-ray", "acc")]
    assert xray["ours"] == pytest.approx(82.0) and xray["diff"] == pytest.approx(82.0 - 82.3)
    gain = comp.loc[("summary_biomeddpt_modality", "biomed_dpt", "CT", "gain_vs:coop")]
    assert gain["ours"] == pytest.approx(71.0 - 60.0) and gain["theirs"] == pytest.approx(5.7)
    zs = comp.loc[("summary_vpt_comparison", "coop", "Average", "acc")] if ("summary_vpt_comparison", "coop",
                                                                           "Average", "acc") in comp.index else None
    assert zs is None                                           # the summary has no CoOp number
    assert ("summary_vpt_comparison", "vpt_deep", "Average", "acc") not in comp.index   # not in our grid
    md = (built.out_dir / "table.md").read_text()
    assert "secondary summary, unverified" in md and "Δ (ours − theirs)" in md
    line = f"| summary_vpt_comparison | biomed_dpt | Average | K=16 | acc | {ours_avg * 100:.2f} | 82.30 | "
    assert line + f"{ours_avg * 100 - 82.3:+.2f} |" in md
    assert (built.out_dir / "comparison.csv").is_file()


def test_table_command_writes_every_output(tmp_path: Path) -> None:
    res = tmp_path / "results"
    for seed in (1, 2):
        write_result(res, "xa", "coop", 16, seed, {"test/acc": 0.5 + 0.1 * seed})
    out = tmp_path / "out"
    assert cli.main(["table", "--results", str(res), "--out", str(out), f"paths.output_dir={tmp_path}"]) == 0
    for name in ("long.csv", "summary.csv", "table.md", "table.tex", "table.html", "acc_bars.png"):
        assert (out / name).is_file(), name
    assert cli.main(["table", "--results", str(res), "--out", str(out), "--expected", "no_such_file"]) == 2


def test_show_datasets_false_keeps_only_group_rows(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for (method, dataset, shots), values in FEW_SHOT.items():
        for seed, value in enumerate(values, 1):
            write_result(results, dataset, method, shots, seed, None if value is None else {"test/acc": value})
    build(results=results, out_dir=tmp_path / "tables", overrides=[f"paths.output_dir={tmp_path}",
                                                                    "+table.show_datasets=false"])
    rows = md_rows((tmp_path / "tables" / "table.md").read_text())
    labels = {r[0] for r in rows[1:] if r[0]}
    assert labels == {"X-ray (avg)", "CT (avg)", "Average"}
    xa, xb = FEW_SHOT[("coop", "xa", 1)], FEW_SHOT[("coop", "xb", 1)]
    assert lookup(rows, "X-ray (avg)", "coop")["K=1"] == pm([(a + b) / 2 for a, b in zip(xa, xb)])
