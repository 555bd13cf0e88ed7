"""End to end: the CLI runs a 16-shot CoOp cell on real BTMRI images and writes a valid result.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptbench.config import compose
from promptbench.engine.results import config_hash, result_path
from promptbench.engine.run import run

FAST = ["backbone=tiny_clip", "method=coop", "dataset=demo_btmri", "method.epochs=2",
        "logger=none", "trainer.enable_progress_bar=false"]


def _cfg(tmp_path: Path, *extra: str):
    return compose([*FAST, f"paths.output_dir={tmp_path}", *extra])


def test_cli_train_writes_valid_result(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "promptbench.cli", "train", *FAST, "shots=16", "seed=1",
           f"paths.output_dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = tmp_path / "results/few_shot/demo_btmri/tiny_clip/coop/shots_16/seed_1/result.json"
    assert path.is_file() and "done:" in proc.stdout
    result = json.loads(path.read_text())
    assert result["status"] == "ok" and result["error"] is None
    assert result["identity"] == {"protocol": "few_shot", "dataset": "demo_btmri", "modality": "MRI",
                                  "organ": "brain", "backbone": "tiny_clip", "method": "coop", "variant": "",
                                  "shots": 16, "seed": 1}
    for key in ("test/acc", "test/macro_f1", "test/balanced_acc"):
        assert 0.0 <= result["metrics"][key] <= 1.0
    width = 64  # tiny_clip text width
    assert result["params"]["trainable"] == result["config"]["method"]["n_ctx"] * width
    assert result["params"]["total"] > result["params"]["trainable"]
    assert all(result["hashes"][k] for k in ("config", "split", "manifest"))
    assert result["versions"]["torch"] and result["timing"]["wall_s"] > 0
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["shots"] == 16 and len(manifest["train"]) == 16 * 4


def test_same_seed_same_metrics_and_manifest(tmp_path):
    first = run(_cfg(tmp_path / "a", "shots=4", "seed=0"))
    second = run(_cfg(tmp_path / "b", "shots=4", "seed=0"))
    other = run(_cfg(tmp_path / "c", "shots=4", "seed=2"))
    assert first["metrics"] == second["metrics"]
    assert "train/loss" in first["metrics"]  # the comparison covers the training trajectory, not only test
    assert first["metrics"]["train/loss"] != other["metrics"]["train/loss"]
    assert first["hashes"]["manifest"] == second["hashes"]["manifest"]
    assert first["hashes"]["manifest"] != other["hashes"]["manifest"]
    assert first["identity"]["seed"] == 0


def test_failed_run_is_recorded_with_one_line_error(tmp_path):
    cfg = _cfg(tmp_path, "method.class_token_position=sideways", "shots=1")
    with pytest.raises(ValueError):
        run(cfg)
    result = json.loads(result_path(cfg).read_text())
    assert result["status"] == "failed" and "sideways" in result["error"] and "\n" not in result["error"]
    assert result["hashes"]["config"] == config_hash(cfg)


def test_config_hash_ignores_paths_but_not_hyperparameters(tmp_path):
    base = config_hash(_cfg(tmp_path / "x"))
    assert base == config_hash(_cfg(tmp_path / "y"))
    assert base != config_hash(_cfg(tmp_path / "x", "method.optim.lr=0.01"))


def test_frozen_towers_stay_in_eval_during_lightning_training(tmp_path, monkeypatch):
    """Lightning calls .train() on the module every epoch; the backbone must still be in eval mode in each step."""
    from promptbench.methods.coop import CoOp

    seen: list[bool] = []
    original = CoOp.training_loss

    def spy(self, images, labels):
        seen.append(self.training and not any(m.training for m in self.backbone.modules()))
        return original(self, images, labels)

    monkeypatch.setattr(CoOp, "training_loss", spy)
    run(_cfg(tmp_path, "shots=4", "seed=1"))
    assert seen and all(seen)
