"""Base-to-novel averages come in three kinds (HM of the averaged B and N, mean of per-dataset HMs, (B+N)/2);
``conf/expected/base_to_novel.yaml`` says which kind each published number is, and the comparison with ours uses
the same kind."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from promptbench.report.aggregate import harmonic_mean
from promptbench.report.build import build
from promptbench.report.expected import load_expected
from tests.test_tables import write_result


def _published(source: str, method: str) -> dict[str, float]:
    e = load_expected("base_to_novel").entries
    rows = e[(e.source == source) & (e.method == method) & (e.dataset == "Average")]
    return dict(zip(rows.metric, rows.value))


def test_recorded_kinds_fit_the_published_numbers():
    coop = _published("biomedcoop_readme", "coop")
    assert set(coop) == {"base", "novel", "mean_hm"}                       # the baseline rows' "HM"
    assert round(harmonic_mean(coop["base"], coop["novel"]), 2) == 69.00   # HM of the averages ...
    assert coop["mean_hm"] == 67.23                                        # ... is not what the README lists
    for method in ("zeroshot", "cocoop", "kgcoop", "prograd"):             # same for every baseline row
        row = _published("biomedcoop_readme", method)
        assert abs(harmonic_mean(row["base"], row["novel"]) - row["mean_hm"]) > 0.5, method
    own = _published("biomedcoop_readme", "biomedcoop")
    assert set(own) == {"base", "novel", "hm"}                             # BiomedCoOp's own row
    assert harmonic_mean(own["base"], own["novel"]) == pytest.approx(own["hm"], abs=0.01)
    dpt = _published("biomeddpt_readme", "biomed_dpt")
    assert (dpt["base"] + dpt["novel"]) / 2 == pytest.approx(dpt["am"], abs=0.01)


def test_comparison_uses_the_kind_of_each_published_number(tmp_path: Path):
    # two datasets with very different B/N balance, so the three kinds differ clearly
    values = {("coop", "btmri"): (0.90, 0.30), ("coop", "ctkidney"): (0.50, 0.70),
              ("biomedcoop", "btmri"): (0.80, 0.60), ("biomedcoop", "ctkidney"): (0.60, 0.90)}
    for (method, dataset), (b, n) in values.items():
        write_result(tmp_path / "results", dataset, method, 16, 1, {"test_base/acc": b, "test_novel/acc": n},
                     protocol="base_to_novel", backbone="biomedclip")
    built = build(results=tmp_path / "results", out_dir=tmp_path / "t", expected="base_to_novel",
                  overrides=[f"paths.output_dir={tmp_path}"])
    comp = built.comparison
    comp = comp[(comp.source == "biomedcoop_readme") & (comp.dataset == "Average")].set_index(["method", "metric"])

    def kinds(method: str) -> tuple[float, float, float]:
        pairs = [values[(method, d)] for d in ("btmri", "ctkidney")]
        b, n = statistics.mean(p[0] for p in pairs) * 100, statistics.mean(p[1] for p in pairs) * 100
        return harmonic_mean(b, n), statistics.mean(harmonic_mean(x * 100, y * 100) for x, y in pairs), (b + n) / 2

    coop_hm, coop_mean_hm, _ = kinds("coop")
    assert abs(coop_hm - coop_mean_hm) > 3                                  # the kinds really differ here
    assert ("coop", "hm") not in comp.index
    assert comp.loc[("coop", "mean_hm"), "ours"] == pytest.approx(coop_mean_hm)
    assert comp.loc[("coop", "mean_hm"), "theirs"] == 67.23
    own_hm, own_mean_hm, _ = kinds("biomedcoop")
    assert ("biomedcoop", "mean_hm") not in comp.index
    assert comp.loc[("biomedcoop", "hm"), "ours"] == pytest.approx(own_hm)
    assert comp.loc[("biomedcoop", "hm"), "ours"] != pytest.approx(own_mean_hm)
    md = (built.out_dir / "table.md").read_text()
    assert "mean HM" in md and "HM = 2·B·N/(B+N)" in md and "not a harmonic mean" in md
