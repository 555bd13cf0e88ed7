"""Seed-paired statistics from hand-made result files, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from promptbench.report.build import build
from promptbench.report.collect import collect
from promptbench.report.stats import (
    bounded_t_interval,
    display_frames,
    metric_range,
    paired_comparison,
    seed_intervals,
    stats_frames,
)
from tests.test_tables import write_result

# method - reference differences per seed: 0.10, 0.20, 0.30 (mean 0.2, sample sd 0.1, sem 0.1/sqrt(3))
REF = {1: 0.40, 2: 0.50, 3: 0.45}
COOP = {1: 0.50, 2: 0.70, 3: 0.75}


def _results(root):
    for seed in (1, 2, 3):
        write_result(root, "ct", "zeroshot", 4, seed, {"test/acc": REF[seed], "test/ece": 0.1})
        write_result(root, "ct", "coop", 4, seed, {"test/acc": COOP[seed], "test/ece": 0.2})
        write_result(root, "ct", "tipx", 4, seed, {"test/acc": REF[seed]})  # identical to the reference
        write_result(root, "ct", "const", 4, seed, {"test/acc": REF[seed] + 0.1})  # same gain on every seed
    write_result(root, "ct", "coop", 16, 1, {"test/acc": 0.9})  # no reference at K=16: no comparison row


def test_paired_comparison_matches_hand_computation(tmp_path):
    _results(tmp_path)
    paired = paired_comparison(collect(tmp_path), reference="zeroshot")
    row = paired[(paired["method"] == "coop") & (paired["shots"] == 4)].iloc[0]
    # By hand: t = 0.2 / (0.1 / sqrt 3) = 2 sqrt 3; for 2 degrees of freedom the t CDF is 1/2 + t / (2 sqrt(2 + t^2)),
    # so the two-sided p = 1 - t / sqrt(2 + t^2) = 1 - 2 sqrt 3 / sqrt 14; t_{0.975, 2} = 4.302653 (printed tables).
    t = 2 * math.sqrt(3)
    assert row["n_pairs"] == 3 and row["seeds"] == "1,2,3"
    assert row["mean_diff"] == pytest.approx(0.2)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert row["ci_low"] == pytest.approx(0.2 - half, abs=1e-6)
    assert row["ci_high"] == pytest.approx(0.2 + half, abs=1e-6)
    assert row["p_ttest"] == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-9)
    assert row["p_wilcoxon"] == pytest.approx(0.25)  # exact: all 3 signs positive, 2 * (1/8)
    # Holm over the 2 tests of the table (coop K=4, tipx K=4 with p = 1): the smallest p is doubled
    assert row["p_holm"] == pytest.approx(2 * row["p_ttest"])
    assert not row["significant"]
    same = paired[paired["method"] == "tipx"].iloc[0]
    assert same["mean_diff"] == 0 and same["p_ttest"] == 1.0
    assert not ((paired["method"] == "coop") & (paired["shots"] == 16)).any()
    const = paired[paired["method"] == "const"].iloc[0]  # no variance: no t-test, no mark
    assert const["mean_diff"] == pytest.approx(0.1) and math.isnan(const["p_ttest"]) and not const["significant"]


def test_seed_interval_is_the_t_interval(tmp_path):
    _results(tmp_path)
    iv = seed_intervals(collect(tmp_path), "acc")
    row = iv[(iv["method"] == "zeroshot")].iloc[0]
    sem = pd.Series(list(REF.values())).std() / math.sqrt(3)
    assert row["mean"] == pytest.approx(0.45) and row["n"] == 3
    assert row["ci_high"] - row["mean"] == pytest.approx(4.302653 * sem, rel=1e-6)
    single = iv[(iv["method"] == "coop") & (iv["shots"] == 16)].iloc[0]
    assert single["n"] == 1 and math.isnan(single["ci_low"])
    ece = seed_intervals(collect(tmp_path), "ece")
    assert set(ece["metric"]) == {"ece"} and set(ece["method"]) == {"zeroshot", "coop"}


def test_table_writes_stats_beside_main_table(tmp_path):
    _results(tmp_path / "results")
    for seed in (1, 2, 3):  # a clearly better method: significant after Holm
        write_result(tmp_path / "results", "ct", "big", 4, seed, {"test/acc": REF[seed] + 0.3 + 0.001 * seed})
    built = build(results=tmp_path / "results", out_dir=tmp_path / "tables", overrides=[
        f"paths.output_dir={tmp_path}"], plots=False)
    for name in ("stats.md", "stats.html", "stats_intervals.csv", "stats_paired.csv"):
        assert (tmp_path / "tables" / name).is_file()
    md = (tmp_path / "tables" / "stats.md").read_text()
    assert "95% t-interval over seeds" in md and "Holm" in md
    big = built.stats["paired"].set_index("method").loc["big"]
    assert bool(big["significant"]) and " *" in md


def _seed_values() -> list[list[float]]:
    """Seed values of a [0, 1] metric: random, at and next to the bounds, constant, and the demo's cases."""
    rng = np.random.default_rng(0)
    cases = [[1.0, 1.0, 0.98], [0.0, 0.0, 0.3], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.5],
             [0.0, 1.0, 1.0, 0.0], [0.93, 0.99, 1.0], [0.02, 0.05, 0.9], [0.5, 0.5, 0.5, 0.5]]
    for n in (3, 4, 5, 10):
        cases += [list(rng.uniform(0, 1, n)) for _ in range(50)]
        cases += [list(np.clip(rng.normal(0.97, 0.05, n), 0, 1)) for _ in range(50)]   # near (and at) 1
        cases += [list(rng.choice([0.0, 1.0, rng.uniform()], n)) for _ in range(50)]
    return cases


def test_bounded_intervals_stay_inside_the_metric_range_for_any_seed_values():
    for values in _seed_values():
        low, high, clipped = bounded_t_interval(values, 0.95, (0.0, 1.0))
        mean = float(np.mean(values))
        assert 0.0 <= low <= mean <= high <= 1.0, values
        plain = sps.t.interval(0.95, len(values) - 1, loc=mean, scale=sps.sem(values)) if np.ptp(values) else (mean,
                                                                                                          mean)
        assert low == pytest.approx(max(0.0, plain[0])) and high == pytest.approx(min(1.0, plain[1]))
        assert clipped == {(False, False): "", (True, False): "low", (False, True): "high",
                           (True, True): "both"}[(plain[0] < 0, plain[1] > 1)]
    assert metric_range("lac_coverage") == (0, 1) and metric_range("ece") == (0, 1)
    assert metric_range("lac_set_size") == (0, math.inf) and metric_range("base_nll") == (0, math.inf)
    low, high, _ = bounded_t_interval([1.0, 1.1, 5.0], 0.95, metric_range("lac_set_size"))
    assert low == 0.0 and high > 5.0                                   # only the lower bound exists


def test_intervals_are_left_out_below_three_seeds(tmp_path):
    for seed, (acc, cov) in enumerate([(0.5, 0.99), (0.6, 1.0), (0.55, 0.9)], start=1):
        write_result(tmp_path, "ct", "coop", 4, seed, {"test/acc": acc, "test/lac_coverage": cov})
        if seed <= 2:
            write_result(tmp_path, "ct", "coop", 16, seed, {"test/acc": acc, "test/lac_coverage": cov})
    long = collect(tmp_path)
    assert bounded_t_interval([0.5, 0.6], 0.95) == (pytest.approx(float("nan"), nan_ok=True),
                                                    pytest.approx(float("nan"), nan_ok=True), "")
    cov = seed_intervals(long, "lac_coverage").set_index("shots")
    assert cov.loc[4, "ci_high"] == 1.0 and cov.loc[4, "clipped"] == "high"   # the t-interval reaches 1.07
    assert cov.loc[4, "ci_low"] > 0.8
    assert cov.loc[16, "n"] == 2 and math.isnan(cov.loc[16, "ci_low"]) and "< 3" in cov.loc[16, "interval"]
    iv, _ = display_frames(pd.concat([seed_intervals(long, "acc"), seed_intervals(long, "lac_coverage")]),
                           paired_comparison(long), "acc")
    row = iv[iv["Metric"] == "lac_coverage"].iloc[0]
    assert row["K=4"].endswith("‡]") and "100.0‡" in row["K=4"]          # cut at the bound, marked
    assert row["K=16"] == "99.5 (n=2)"                                    # no interval from two seeds
    assert set(iv["Method"]) == {"CoOp"}                                  # display names


def test_report_intervals_on_the_demo_values_stay_in_range(tmp_path):
    """The issue's cases: coverage t-interval [90.5, 106.4] and ECE [-64.5, 103.9] over 3 seeds."""
    for seed, (cov, ece) in enumerate([(0.95, 0.05), (1.0, 0.02), (1.0, 0.92)], start=1):
        write_result(tmp_path, "ct", "coop", 4, seed, {"test/acc": 0.5, "test/lac_coverage": cov, "test/ece": ece})
    frames = stats_frames(collect(tmp_path))
    iv = frames["intervals"]
    assert ((iv["ci_low"] >= 0) & (iv["ci_high"] <= 1)).all()
    assert set(iv.loc[iv["clipped"] != "", "metric"]) == {"lac_coverage", "ece"}
