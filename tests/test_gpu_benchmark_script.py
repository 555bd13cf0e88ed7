"""scripts/gpu_benchmark.sh and the benchmark.py parts it runs (issue 25, item 4): the script parses, its wheel list
agrees with benchmark.py's and the lock, the grid projection's arithmetic, the report's targets, and (slow) the
steps subcommand and the whole CPU dry run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_benchmark.sh"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


def _benchmark(monkeypatch: pytest.MonkeyPatch, data: Path):
    spec = importlib.util.spec_from_file_location("pb_benchmark_script", REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", data)
    monkeypatch.setattr(module, "REPORT", data / "benchmarks.md")
    return module


@needs_bash
def test_script_parses_and_refuses_unknown_arguments() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr


def test_wheel_lists_agree_and_are_pinned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bench = _benchmark(monkeypatch, tmp_path)
    text = SCRIPT.read_text()
    assert re.search(r'^WHEELS="([^"]+)"', text, re.M).group(1).split() == bench.WHEELS
    assert re.search(r'^SDIST_WHEELS="([^"]+)"', text, re.M).group(1).split() == bench.SDIST_WHEELS
    pins = bench._pins(bench.WHEELS + bench.SDIST_WHEELS)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^ ]*", p) for p in pins), pins
    assert "carry=[\".whl\"]" in bench.DEVICE_RUN and len(bench.DEVICE_RUN) < 2000


def _entry(method: str, **kw) -> dict:
    base = {"method": method, "dataset": "d", "cells": [[1, 1], [16, 1]], "epochs": 10, "batch": 32,
            "drop_last": True, "iters_per_shot": None, "max_shots": None, "n_views": None, "tta_steps": None,
            "trains": True, "tower": False, "grad_at_test": False, "classes": 4, "test": 100, "train": 1000}
    return {**base, **kw}


def test_projection_arithmetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bench = _benchmark(monkeypatch, tmp_path)
    steps = {"coop": {"wall_ms": 10.0, "batch": 32, "classes": 2},
             "vpt_shallow": {"wall_ms": 100.0, "batch": 32, "classes": 4}}
    plan = {"entries": [
        _entry("coop"),                                            # measured; text step scales with classes (x2)
        _entry("vpt_shallow", tower=True, batch=8),                 # measured at batch 32: scaled to 8 (x1/4)
        _entry("clip_lora", tower=True, iters_per_shot=5, max_shots=4),  # proxy vpt_shallow; 5 x min(K, 4) steps
        _entry("tpt", trains=False, tower=True, grad_at_test=True, n_views=8, tta_steps=1, cells=[[1, 1]]),
    ]}
    out = bench.project_grid(plan, steps, ms_per_image=1.0, overhead_s=2.0, gain=2.0)
    rows = {r["method"]: r for r in out["rows"]}
    # coop: K=1 -> 4 images < batch: 1 step/epoch; K=16 -> 64 images // 32 = 2 steps/epoch; 10 epochs; 20 ms/step
    assert rows["coop"]["steps"] == 10 + 20 and rows["coop"]["train_s"] == pytest.approx(30 * 0.020, abs=0.1)
    # vpt: batch 8: K=1 -> 4 images (1 step of 4: 100 * 4/32 ms), K=16 -> 64 // 8 = 8 steps of 25 ms; 10 epochs
    assert rows["vpt_shallow"]["steps"] == 10 + 80
    assert rows["vpt_shallow"]["train_s"] == pytest.approx((10 * 12.5 + 80 * 25) / 1000, abs=0.1)
    # eval through the tower: test 100 + val min(K, 4) x 4 per cell, 1 ms per image
    assert rows["vpt_shallow"]["eval_s"] == pytest.approx((100 + 4) / 1000 + (100 + 16) / 1000, abs=0.1)
    assert rows["clip_lora"]["steps"] == 5 * 1 + 5 * 4 and rows["clip_lora"]["source"] == "proxy vpt_shallow"
    # TPT: 100 test images x (8 views x 1 ms + 1 tta step of coop's 20 ms)
    assert rows["tpt"]["eval_s"] == pytest.approx(100 * (8 + 20) / 1000, abs=0.1)
    # coop's training views go to the feature store once per (dataset, K, seed): 10 epochs x n_train, + val, test
    assert out["shared_features_s"] == pytest.approx((10 * 4 + 10 * 64 + 4 + 16 + 100) / 1000, abs=0.1)
    assert out["cells"] == 7 and out["overhead_h"] == pytest.approx(7 * 2 / 3600, abs=1e-3)
    assert out["projected_h"] == pytest.approx(out["one_worker_h"] / 2, abs=1e-3)
    assert out["missing"] == []


def test_report_shows_targets_and_whether_met(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bench = _benchmark(monkeypatch, tmp_path)
    meta = {"when": "now", "device": "NVIDIA H200", "torch": "2.11", "dataset": "demo_btmri", "warmup": 1,
            "repeat": 1, "rounds": 1}
    rows = [{"method": "coop", "precision": "bf16-mixed", "wall_ms": 2.0, "busy_ms": 1.5, "busy_frac": 0.75,
             "status": "ok"},
            {"method": "coop", "precision": "32-true", "wall_ms": 1.0, "busy_ms": 0.4, "busy_frac": 0.4,
             "status": "ok"}]
    (tmp_path / "steps_cuda_x.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    (tmp_path / "limits_cuda_x.json").write_text(json.dumps({"meta": {}, "rows": [
        {"precision": "bf16-mixed", "coop_cell_s": 4.2, "coop_warm_cell_s": 2.0, "epochs": 100}]}))
    text = "\n".join(bench.gpu_sections())
    assert "### Targets (cuda_x)" in text and bench.DEVICE_RUN in text and "Not measured on a GPU yet" not in text
    assert "| CoOp cell, 16 shots, 100 epochs, bf16-mixed (engine, cold store) <= 5 s | 4.2 s" in text
    assert re.search(r"\| coop: bf16-mixed at least as fast as 32-true \(wall ms/step\) \| [^|]+ \| no \|", text)
    assert re.search(r"GPU busy >= 50% of a text step \(CoOp, bf16-mixed\) \| 75% [^|]+ \| yes \|", text)
    assert re.search(r"GPU busy >= 50% of a text step \(CoOp, 32-true\) \| 40% [^|]+ \| no \|", text)


@pytest.mark.slow
def test_steps_subcommand_times_one_step_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PB_BENCH_DATA": str(tmp_path),
           "PB_BENCH_REPORT": str(tmp_path / "benchmarks.md")}
    done = subprocess.run([sys.executable, "scripts/benchmark.py", "steps", "--methods", "coop", "--precision",
                           "32-true", "--warmup", "1", "--repeat", "1", "--rounds", "1", "--forward-batch", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "steps_cpu_medclip_tiny.json").read_text())["rows"]
    assert [(r["method"], r["status"]) for r in rows] == [("encode_image", "ok"), ("coop", "ok")]
    assert rows[1]["wall_ms"] > 0 and rows[1]["busy_ms"] is None  # no CUDA: no GPU-busy time
    assert "### One training step per method (cpu_medclip_tiny)" in (tmp_path / "benchmarks.md").read_text()


@pytest.mark.slow
@needs_bash
def test_dry_run_completes_every_part(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT), "--dry"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    summary = done.stdout.split("== done after", 1)[1].splitlines()[0]
    for part in ("steps=0", "more=0", "limits=0", "share=0", "project=0", "report=0"):
        assert part in summary, summary
    out = next(tmp_path.glob("pb_gpu_dry.*/out"))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["benchmarks.md", "gpu_benchmark.log", "limits_cpu_medclip_tiny.json",
                     "projection_cpu_medclip_tiny.json", "share_cpu_medclip_tiny.json", "steps_cpu_medclip_tiny.json"]
