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

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from promptbench.report import plots
from promptbench.report.build import build
from promptbench.report.marks import best_mask, cell_number
from promptbench.report.results_meta import dataset_display_names, display_name, method_display_names

REPO = Path(__file__).resolve().parents[1]

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


def test_every_registered_method_and_dataset_has_a_display_name_and_family() -> None:
    """Contract over the registry: a method without a display name (``clap`` had none) is printed as its id."""
    from promptbench.methods import load_all
    from promptbench.methods.base import FAMILIES

    names, methods = method_display_names(), load_all()
    assert {"clap", "clip_lora", "clip_svd"} <= set(methods)
    for name, cls in methods.items():
        assert names.get(name) and names[name] != name, f"{name}: no display_name in conf/method/{name}.yaml"
        assert cls.config_class().display_name == names[name], name           # the dataclass default agrees
        assert cls.family in FAMILIES and cls.family != "other", f"{name}: Method.family {cls.family!r}"
    assert names["clap"] == "CLAP"
    datasets = dataset_display_names()
    for path in sorted((REPO / "conf" / "dataset").glob("[!_]*.yaml")):
        assert datasets.get(path.stem) and datasets[path.stem] != path.stem, f"{path.name}: no display_name"


def test_method_styles_are_distinct_for_25_methods() -> None:
    styles = plots.method_styles(range(25))
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == 25
    assert len({(s["color"], s["hatch"]) for s in styles.values()}) == 25
    assert len({(s["color"], s["marker"]) for s in plots.method_styles(range(51)).values()}) == 51
    assert {s["color"] for s in styles.values()} <= set(plots.OKABE_ITO)
    assert plots.method_styles(METHODS)["zeroshot"] == {**styles[0]}        # the first (reference) is black, solid
    assert styles[0]["color"] == plots.BLACK and styles[0]["linestyle"] == "-"


def test_chance_style_is_one_no_method_can_take(report, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    chance = plots.CHANCE_STYLE
    for style in plots.method_styles(range(100)).values():
        assert (style["color"], style["linestyle"], style["marker"]) != (chance["color"], chance["linestyle"],
                                                                        chance["marker"])
        assert style["linestyle"] != chance["linestyle"] and style["marker"] not in (None, "None", "")
        assert style["color"] != chance["color"] and not (style["color"] == plots.BLACK and style["linestyle"] != "-")
    figures = _capture(monkeypatch)
    _, built = report
    plots.plot_table(built.tables[0], tmp_path, formats=("png",))
    lines = [line for ax in figures[0].axes for line in ax.get_lines()]
    marked = [line for line in lines if line.get_label() == "chance"]
    assert marked and all(line.get_linestyle() == ":" and line.get_marker() in (None, "None")
                          and line.get_color() == chance["color"] for line in marked)
    others = [c.lines[0] for ax in figures[0].axes for c in ax.containers]   # each method's data line
    assert len(others) == 4 * 6 and all(line.get_linestyle() != ":" and line.get_marker() not in (None, "None")
                                        for line in others)


def _capture(monkeypatch: pytest.MonkeyPatch) -> list:
    figures: list = []
    real_save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, stem, formats=plots.FORMATS: (
        figures.append(fig), real_save(fig, stem, formats))[1])
    return figures


def _rows(fig) -> list[int]:
    """Visible panels per row, top to bottom."""
    tops: dict[float, int] = {}
    for ax in fig.axes:
        if ax.get_visible():
            y = round(ax.get_position().y1, 3)
            tops[y] = tops.get(y, 0) + 1
    return [tops[y] for y in sorted(tops, reverse=True)]


@pytest.mark.parametrize(("width", "columns", "inches", "rows"), [
    ("single", 2, 3.5, [2, 2]), ("double", None, 7.2, [4]), (5.0, 3, 5.0, [3, 1]), ("single", None, 3.5, [2, 2])])
def test_figure_width_and_panels_per_row_follow_the_config(report, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           width, columns, inches, rows) -> None:
    import dataclasses

    from promptbench.report.aggregate import FigureSpec

    _, built = report
    table = built.tables[0]
    table = dataclasses.replace(table, spec=dataclasses.replace(table.spec, figure=FigureSpec(width, columns)))
    figures = _capture(monkeypatch)
    files = plots.plot_table(table, tmp_path, formats=("png",))
    fig = figures[0]
    assert fig.get_figwidth() == pytest.approx(inches) and _rows(fig) == rows
    assert Image.open(files[0]).size[0] == pytest.approx(inches * plots.DPI, abs=1)   # saved at exactly that width
    assert fig.get_supylabel() == "Accuracy (%)"
    assert {ax.get_xlabel() for ax in fig.axes if ax.get_visible()} <= {"Shots per class (K)", ""}
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_visible()][-1] == "Shots per class (K)"
    for ax in fig.axes:                                               # fonts 7-9 pt at print size
        for text in (ax.title, ax.xaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()):
            assert 7 <= text.get_fontsize() <= 9
    for text in fig.legends[0].get_texts():
        assert 7 <= text.get_fontsize() <= 9


def test_figure_options_come_from_the_table_config(tmp_path: Path) -> None:
    for seed in (1, 2):
        for method in ("zeroshot", "coop"):
            for shots in (1, 4):
                write(tmp_path / "results", "xa", method, shots, seed, {"test/acc": 0.5 + 0.01 * seed})
    built = build(results=tmp_path / "results", out_dir=tmp_path / "t", overrides=[
        f"paths.output_dir={tmp_path}", "+table.figure.width=single", "+table.figure.columns=1"], plots=False)
    figure = built.tables[0].spec.figure
    assert figure.inches == 3.5 and figure.columns == 1 and figure.split_by == "none"
    with pytest.raises(ValueError, match="table.figure.split_by"):
        build(results=tmp_path / "results", out_dir=tmp_path / "t", overrides=[
            f"paths.output_dir={tmp_path}", "+table.figure.split_by=family"], plots=False)


def test_methods_at_one_shots_value_are_dodged(report, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for n in range(2, 20):
        factors = plots.dodge_factors(n)
        assert len(set(factors.round(9))) == n and np.all(np.diff(factors) > 0)
        assert np.log2(factors).mean() == pytest.approx(0, abs=1e-12)           # centred on the true K
        assert np.log2(factors[-1] / factors[0]) <= plots.DODGE_SPAN + 1e-12   # well inside one doubling of K
    assert list(plots.dodge_factors(1)) == [1.0]
    figures = _capture(monkeypatch)
    _, built = report
    plots.plot_table(built.tables[0], tmp_path, formats=("png",))
    ax = figures[0].axes[0]
    for i, k in ((0, 1), (-1, 16)):  # the x of every method's point at K (shots 1 and 16)
        xs = [c.lines[0].get_xdata()[i] for c in ax.containers]
        assert len(xs) == 6 and len(set(np.round(xs, 9))) == 6 and min(xs) < k < max(xs)


def test_split_by_group_draws_one_figure_per_family_with_the_reference(report, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from promptbench.report.aggregate import FigureSpec

    _, built = report
    table = built.tables[0]
    table = dataclasses.replace(table, spec=dataclasses.replace(table.spec, figure=FigureSpec(split_by="group")))
    figures = _capture(monkeypatch)
    files = plots.plot_table(table, tmp_path, formats=("png",))
    assert [f.name for f in files] == ["acc_vs_shots_baseline.png", "acc_vs_shots_adapter.png"]
    legends = [[t.get_text() for t in fig.legends[0].get_texts()] for fig in figures]
    assert legends[0] == ["Zero-shot", "Linear probe", "LP++", "chance"]
    assert legends[1] == ["Zero-shot", "CLIP-Adapter", "Tip-Adapter", "Tip-Adapter-F", "chance"]
    assert [fig.get_suptitle() for fig in figures] == ["Zero-shot and linear probes", "Feature adapters"]
    zs = [next(c.lines[0] for c in fig.axes[0].containers if c.get_label() == "Zero-shot") for fig in figures]
    assert {(line.get_color(), line.get_linestyle()) for line in zs} == {(plots.BLACK, "-")}
    assert plots.method_groups(["zeroshot", "coop"]) == [("text", ["zeroshot", "coop"])]
    from promptbench.report.report import _caption

    assert _caption(Path("acc_vs_shots_adapter.svg")).startswith("Feature adapters. Accuracy vs shots")
    one = plots.plot_table(dataclasses.replace(table, summary=table.summary[table.summary["method"].isin(
        ["zeroshot", "tip_adapter"])]), tmp_path / "one", formats=("png",))
    assert [f.name for f in one] == ["acc_vs_shots.png"]                    # one family: no split


def test_panel_titles_are_display_names(report, monkeypatch: pytest.MonkeyPatch) -> None:
    _, built = report
    table = built.tables[0]
    monkeypatch.setattr(plots, "dataset_display_names", lambda: {"ct": "CTKidney", "xa": "KneeXray"})
    titles = [t for _, t in plots.panels(table.summary, table)]
    assert titles == ["CT: CTKidney", "MRI: mr", "X-ray: KneeXray", "Average"]


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
    assert titles == ["CT: ct", "MRI: mr", "X-ray: xa", "Average"]          # no duplicated one-dataset panels
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
