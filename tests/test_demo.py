"""`promptbench demo` end to end on a slice of its grid: sweep, tables, plots, printed 16-shot table."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_command_on_a_slice(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "promptbench.cli", "demo", "method=zeroshot,coop", "dataset=demo_btmri",
           "shots=1,16", "seed=1,2", "method.epochs=1", "hydra/launcher=basic", f"paths.output_dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep finished: 8 done" in proc.stdout
    demo, k16 = tmp_path / "tables" / "demo", tmp_path / "tables" / "demo_k16"
    assert (demo / "acc_vs_shots.png").stat().st_size > 1000 and (demo / "long.csv").is_file()
    table = (k16 / "table.md").read_text()
    assert "| zeroshot |" in table and "| coop |" in table and "MRI (avg)" in table
    assert "59.50 ± 0.00" in table  # medclip_tiny zero-shot on demo BTMRI (see test_medclip_tiny_asset.py)
    assert table in proc.stdout  # the 16-shot table is printed
