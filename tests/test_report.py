"""The HTML report, figures and LaTeX on hand-made result files: display names, best marks, sortable and
self-contained HTML, one panel per one-dataset modality, chance lines, PDF/SVG/300-dpi PNG, distinct method styles,
base/novel error bars, the stats hook and the W&B summary run. (The headless-browser check is in
test_report_browser.py, marked slow.)"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from promptbench.report import plots
from promptbench.report.build import build
from promptbench.report.marks import best_mask, cell_number
from promptbench.report.results_meta import display_name, method_display_names

METHODS = ["zeroshot", "clip_adapter", "tip_adapter", "tip_adapter_f", "linear_probe", "lp_plus_plus", "coop",
           "cocoop", "kgcoop", "prograd", "maple", "vpt_shallow", "vpt_deep", "medical_vpt", "tpt", "biomedcoop",
           "biomed_dpt"]
DATASETS = {"xa": ("X-ray", 2), "ct": ("CT", 4), "mr": ("MRI", 5)}  # modality, number of classes


def write(root: Path, dataset: str, method: str, shots: int, seed: int, metrics: dict, protocol: str = "few_shot",
          classes: dict | None = None) -> None:
    path = root / protocol / dataset / "tiny_clip" / method / f"shots_{shots}" / f"seed_{seed}" / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    modality, n = DATASETS[dataset]
    identity = {"protocol": protocol, "dataset": dataset, "modality": modality, "organ": "", "backbone": "tiny_clip",
                "method": method, "variant": "", "shots": shots, "seed": seed}
    path.write_text(json.dumps({"schema": 1, "identity": identity, "hashes": {"config": "h"}, "status": "ok",
                                "error": None, "metrics": metrics,
                                "eval_sets": classes or {"test": [f"c{i}" for i in range(n)]}}))


def acc(i: int, dataset: str, shots: int, seed: int) -> float:
    """Distinct, deterministic accuracies: method i is better with more shots; 'ct' is won by tip_adapter_f."""
    value = 0.4 + 0.02 * i + 0.05 * (shots == 16) + 0.01 * seed
    return 0.99 if (dataset == "ct" and METHODS[i] == "tip_adapter_f" and shots == 16) else round(value, 4)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("report")
    for i, method in enumerate(METHODS[:6]):
        for dataset in DATASETS:
            for shots in (1, 16):
                for seed in (1, 2):
                    write(tmp / "results", dataset, method, shots, seed, {"test/acc": acc(i, dataset, shots, seed)})
    built = build(results=tmp / "results", out_dir=tmp / "tables", overrides=[f"paths.output_dir={tmp}"])
    return tmp, built


def test_display_names_come_from_the_method_configs() -> None:
    names = method_display_names()
    assert set(METHODS) <= set(names)                                   # every shipped method has one
    assert display_name("tip_adapter_f") == "Tip-Adapter-F" and display_name("coop+ctx8") == "CoOp+ctx8"
    assert display_name("not_a_method") == "not_a_method"


def test_method_styles_are_distinct_for_17_methods() -> None:
    styles = plots.method_styles(METHODS)
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == 17
    assert len({(s["color"], s["marker"]) for s in styles.values()}) == 17
    assert len({(s["color"], s["hatch"]) for s in styles.values()}) == 17
    assert {s["color"] for s in styles.values()} <= set(plots.OKABE_ITO)


def test_best_mask_per_dataset_block_with_ties_and_missing() -> None:
    frame = pd.DataFrame({"Dataset": ["a", "a", "a", "b", "b"], "Method": ["x", "y", "z", "x", "y"],
                          "K=1": ["70.00 ± 1.00", "72.00 ± 3.00", "–", "50.00", "50.00"],
                          "K=4": ["80.00", "failed", "79.00 (1/3)", "–", "60.00"]})
    mask = best_mask(frame, 2)
    assert mask["K=1"].tolist() == [False, True, False, True, True]      # per dataset; a tie marks both
    assert mask["K=4"].tolist() == [True, False, False, False, False]    # one number in block b: no mark
    assert not mask[["Dataset", "Method"]].to_numpy().any()
    assert cell_number("72.41 ± 1.23 (2/3)") == 72.41


def test_report_is_self_contained_sortable_and_marks_the_best(report) -> None:
    tmp, built = report
    page = (built.out_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)       # nothing fetched from elsewhere
    assert "<script src" not in page and "<link" not in page
    assert str(tmp) not in page and "/tmp" not in page                    # no absolute path anywhere
    assert "result file(s) from ../results" in page
    assert 'class="sortable"' in page and "addEventListener('click'" in page
    assert "Tip-Adapter-F" in page and ">tip_adapter_f<" not in page        # display names
    row = re.search(r"<tr><td class=\"label\">ct</td><td class=\"label\">Tip-Adapter-F</td>(.*?)</tr>", page)
    assert row and '<td class="best">99.00' in row.group(1)               # the winner of 'ct' at K=16
    assert page.count("data:image/svg+xml;base64,") == 1                  # acc vs shots (bars: one K only)
    for stem in ("acc_vs_shots",):
        assert f'href="{stem}.pdf"' in page and f'href="{stem}.png"' in page


def test_figures_are_vector_and_300_dpi_png_with_one_panel_per_modality(report) -> None:
    _, built = report
    for suffix in (".pdf", ".svg", ".png"):
        assert (built.out_dir / f"acc_vs_shots{suffix}").stat().st_size > 1000
    assert (built.out_dir / "acc_vs_shots.pdf").read_bytes().startswith(b"%PDF")
    dpi = Image.open(built.out_dir / "acc_vs_shots.png").info["dpi"]
    assert round(dpi[0]) == 300
    table = built.tables[0]
    titles = [t for _, t in plots.panels(table.summary, table)]
    assert titles == ["ct (CT)", "mr (MRI)", "xa (X-ray)", "Average"]       # no duplicated one-dataset panels
    chance = plots.chance_levels(table)
    assert chance["xa"] == 0.5 and chance["ct"] == 0.25 and chance["Average"] == pytest.approx((0.5 + 0.25 + 0.2) / 3)


def test_latex_has_booktabs_label_and_bold_best(report) -> None:
    _, built = report
    tex = (built.out_dir / "table.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\label{tab:all-few-shot}" in tex
    assert r"\textbf{99.00 $\pm$ 0.00}" in tex and "Tip-Adapter-F" in tex


def test_base_novel_bars_have_error_bars_and_chance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for method, base in (("coop", 0.8), ("kgcoop", 0.7)):
        for dataset in ("xa", "ct"):
            for seed in (1, 2, 3):
                write(tmp_path / "results", dataset, method, 16, seed,
                      {"test_base/acc": base + 0.01 * seed, "test_novel/acc": 0.5 - 0.02 * seed},
                      protocol="base_to_novel", classes={"test_base": ["a", "b"], "test_novel": ["c", "d", "e"]})
    figures = []
    real_save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, stem, formats=plots.FORMATS: (
        figures.append(fig), real_save(fig, stem, formats))[1])
    built = build(results=tmp_path / "results", out_dir=tmp_path / "t", overrides=[f"paths.output_dir={tmp_path}"])
    assert (built.out_dir / "base_novel.pdf").is_file() and len(figures) == 1
    ax = figures[0].axes[0]
    bars = [c for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None]
    assert len(bars) == 2                                                  # base and novel, each with error bars
    seg = bars[0].errorbar.lines[2][0].get_segments()
    assert seg[0][1][1] - seg[0][0][1] == pytest.approx(2 * 100 * pd.Series([0.81, 0.82, 0.83]).std(), rel=1e-6)
    lines = {round(line.get_ydata()[0], 3) for line in ax.lines if line.get_label().startswith("chance")}
    assert lines == {50.0, round(100 / 3, 3)}                              # 1/2 base, 1/3 novel classes


def test_stats_sections_plug_into_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from promptbench.report.report import ReportSection

    fake = types.ModuleType("promptbench.report.stats")
    fake.report_sections = lambda tables, out_dir, **context: [ReportSection(
        "Paired tests", frame=pd.DataFrame({"Method": ["coop"], "p": ["0.03"]}), notes=[f"{len(tables)} table"])]
    monkeypatch.setitem(sys.modules, "promptbench.report.stats", fake)
    write(tmp_path / "results", "xa", "coop", 1, 1, {"test/acc": 0.5})
    built = build(results=tmp_path / "results", out_dir=tmp_path / "t", overrides=[f"paths.output_dir={tmp_path}"],
                  plots=False, sections=[ReportSection("Extra", html="<p id=x>extra</p>")])
    page = (built.out_dir / "report.html").read_text()
    assert "<h2>Extra</h2>" in page and "<p id=x>extra</p>" in page
    assert "<h2>Paired tests</h2>" in page and "<td class=\"\">0.03</td>" in page and "1 table" in page


def test_table_wandb_logs_one_summary_run(report, monkeypatch: pytest.MonkeyPatch) -> None:
    from promptbench.report.wandb_run import log_table_run, table_run_id
    from tests.test_loggers import complete_records

    tmp, built = report
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_id = table_run_id(built.tables[0].name, built.tables[0].title)
    older = built.out_dir / "wandb" / f"offline-run-20200101_000000-{run_id}"   # an earlier build's run
    older.mkdir(parents=True)
    assert log_table_run(built, None, "all") == run_id
    runs = sorted((built.out_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0] != older                             # the rebuild replaced it
    keys = set()
    for record in complete_records(next(runs[0].glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            keys |= {i.key or i.nested_key[0] for i in record.history.item}
    assert {"tables/main/summary", "tables/main/display", "figures/acc_vs_shots", "report"} <= keys
