"""Calibration metrics, split-conformal sets and their place in every result.json."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from promptbench.metrics.calibration import calibration_metrics, reliability_bins
from promptbench.metrics.conformal import conformal_metrics, prediction_sets, scores, split_holdout, threshold


def _manual_top_label_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Guo et al.'s ECE written out with numpy (bins (i/n, (i+1)/n], weighted |accuracy - confidence|)."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for i in range(n_bins):
        lo, hi = i / n_bins, (i + 1) / n_bins
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs((pred[m] == labels[m]).mean() - conf[m].mean())
    return float(total)


def test_calibration_metrics_match_hand_computation():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 4, generator=gen) * 2
    labels = torch.randint(0, 4, (300,), generator=gen)
    got = calibration_metrics(logits, labels)
    probs = logits.softmax(1).numpy()
    y = labels.numpy()
    assert got["ece"] == pytest.approx(_manual_top_label_ece(probs, y), abs=1e-5)
    assert got["nll"] == pytest.approx(float(-np.log(probs[np.arange(300), y]).mean()), rel=1e-5)
    onehot = np.eye(4)[y]
    assert got["brier"] == pytest.approx(float(((probs - onehot) ** 2).sum(1).mean()), rel=1e-5)
    assert 0 <= got["classwise_ece"] <= 1
    bins = reliability_bins(logits, labels)
    assert sum(bins["count"]) == 300 and len(bins["accuracy"]) == 15


def test_calibrated_model_has_small_ece_overconfident_large():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(20000, 3, generator=gen)
    labels = torch.multinomial(logits.softmax(1), 1, generator=gen).squeeze(1)  # labels drawn from the model
    assert calibration_metrics(logits, labels)["ece"] < 0.02
    assert calibration_metrics(logits * 10, labels)["ece"] > 0.15


def test_threshold_is_infinite_with_too_few_calibration_images():
    assert threshold(torch.rand(5), alpha=0.1) == math.inf  # ceil(6 * 0.9) / 5 > 1
    sets = prediction_sets(torch.full((2, 3), 1 / 3), math.inf, "lac")
    assert sets.all()


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_split_conformal_coverage_within_finite_sample_bound(score):
    """Exchangeable synthetic case: Dirichlet class probabilities, labels drawn from a *different* (miscalibrated)
    model, so coverage comes from the conformal step alone. Over 150 independent calibration/evaluation draws the
    mean coverage must lie in [1 - alpha, 1 - alpha + 1/(n+1)] up to Monte Carlo error (3 standard errors)."""
    alpha, n_cal, n_eval, trials = 0.1, 200, 400, 150
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)  # the Dirichlet draws use the global generator
    coverages, sizes = [], []
    for _ in range(trials):
        true_p = torch.distributions.Dirichlet(torch.ones(5)).sample((n_cal + n_eval,))
        labels = torch.multinomial(true_p, 1, generator=gen).squeeze(1)
        logits = torch.log(true_p) * 3  # over-confident model
        m = conformal_metrics(logits[:n_cal], labels[:n_cal], logits[n_cal:], labels[n_cal:], alpha, [score])
        coverages.append(m[f"{score}_coverage"])
        sizes.append(m[f"{score}_set_size"])
    mean, se = float(np.mean(coverages)), float(np.std(coverages) / np.sqrt(trials))
    assert 1 - alpha - 3 * se <= mean <= 1 - alpha + 1 / (n_cal + 1) + 3 * se, (mean, se)
    assert 1 < np.mean(sizes) < 5


def test_aps_score_is_mass_ranked_at_or_above_label():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    assert scores(probs, torch.tensor([1]), "aps").item() == pytest.approx(0.8)
    assert scores(probs, torch.tensor([0]), "lac").item() == pytest.approx(0.5)
    sets = prediction_sets(probs, 0.8, "aps")
    assert sets.tolist() == [[True, True, False]]


def test_holdout_split_is_seeded_and_disjoint():
    cal, ev = split_holdout(100, 0.5, seed=3)
    cal2, _ = split_holdout(100, 0.5, seed=3)
    assert torch.equal(cal, cal2) and len(cal) == 50 and not set(cal.tolist()) & set(ev.tolist())
    assert len(set(cal.tolist()) | set(ev.tolist())) == 100


def test_every_result_has_calibration_and_conformal_metrics(tmp_path):
    from promptbench.config import compose
    from promptbench.engine.run import run

    cfg = compose(["backbone=tiny_clip", "method=zeroshot", "dataset=demo_ctkidney", "shots=1", "logger=none",
                   "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path}",
                   "trust.reliability_diagram=true", "trust.conformal.calibration=val"])
    result = run(cfg)
    m = result["metrics"]
    for key in ("ece", "classwise_ece", "nll", "brier", "lac_coverage", "lac_set_size", "lac_covgap",
                "aps_coverage", "aps_set_size", "aps_covgap"):
        assert f"test/{key}" in m and math.isfinite(m[f"test/{key}"])
    conf = result["trust"]["conformal"]["test"]
    assert conf["source"] == "val" and conf["n_cal"] == 4 and conf["n_eval"] == 200  # 1 val shot x 4 classes
    assert conf["lac_coverage"] == 1.0 and conf["lac_set_size"] == 4.0  # n = 4 is too few: every set is all
    assert sum(result["trust"]["reliability"]["test"]["count"]) == 200
    cell = tmp_path / "results/few_shot/demo_ctkidney/tiny_clip/zeroshot/shots_1/seed_1"
    assert (cell / "reliability_test.png").is_file()


def test_pooled_reliability_is_count_weighted(tmp_path):
    import json

    import pandas as pd

    from promptbench.metrics.calibration import method_reliability_plots, pooled_reliability

    a = {"count": [2, 0], "confidence": [0.2, 0.0], "accuracy": [0.5, 0.0]}
    b = {"count": [6, 4], "confidence": [0.4, 0.9], "accuracy": [0.0, 1.0]}
    paths = []
    for name, bins in (("a", a), ("b", b)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"trust": {"reliability": {"test": bins}}}))
        paths.append(str(path))
    pooled = pooled_reliability(paths)
    assert pooled["count"] == [8, 4]
    assert pooled["confidence"] == pytest.approx([(2 * 0.2 + 6 * 0.4) / 8, 0.9])
    assert pooled["accuracy"] == pytest.approx([0.125, 1.0])
    long = pd.DataFrame({"method": ["m", "m"], "status": ["ok", "ok"], "path": paths})
    assert [p.name for p in method_reliability_plots(long, tmp_path)] == ["m.png"]
