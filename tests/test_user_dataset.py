"""A user's dataset with only its own keys, kept outside the package (``hydra.searchpath``), runs zero-shot, CoOp
and Biomed-DPT (descriptions given with ``dataset.descriptions=``, as the DescriptionsError advises); results are
filed under its own name, and borrowed dataset/backbone names are refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from promptbench.config import compose
from promptbench.engine.naming import naming_problems
from promptbench.engine.run import run
from promptbench.methods.common import DescriptionsError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
CLASSES = ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]
pytestmark = pytest.mark.skipif(not (DEMO / "BTMRI").is_dir(), reason="no vendored demo data")


@pytest.fixture(scope="module")
def user_conf(tmp_path_factory) -> Path:
    """``<folder>/dataset/my_brains.yaml`` with name, format, root + folder, classnames and template only."""
    folder = tmp_path_factory.mktemp("my_conf")
    (folder / "dataset").mkdir()
    (folder / "dataset" / "my_brains.yaml").write_text(
        "name: my_brains\nformat: biomedcoop\n"
        f"root: {DEMO}\nfolder: BTMRI\n"
        f"classnames: {json.dumps(CLASSES)}\n"
        'template: "a mr photo of a {}."\n'
    )
    return folder


def cell(user_conf: Path, out: Path, *extra: str):
    return compose([f"hydra.searchpath=[file://{user_conf}]", "dataset=my_brains", "backbone=tiny_clip",
                    "shots=1", "seed=1", "logger=none", "trainer.enable_progress_bar=false",
                    f"paths.output_dir={out}", *extra])


def test_minimal_user_dataset_runs_zero_shot_coop_and_biomed_dpt(user_conf, tmp_path):
    cfg = cell(user_conf, tmp_path, "method=zeroshot")
    assert OmegaConf.select(cfg, "dataset.descriptions") is None and cfg.dataset.display_name == "my_brains"
    zs = run(cfg)
    coop = run(cell(user_conf, tmp_path, "method=coop", "method.epochs=1"))
    for result in (zs, coop):
        assert result["status"] == "ok" and result["identity"]["dataset"] == "my_brains"
    assert (tmp_path / "results/few_shot/my_brains/tiny_clip/coop/shots_1/seed_1/result.json").is_file()

    with pytest.raises(DescriptionsError) as err:
        run(cell(user_conf, tmp_path, "method=biomed_dpt", "method.epochs=1"))
    advice = re.search(r"(dataset\.descriptions=)\S+", str(err.value))
    assert advice, str(err.value)
    descriptions = tmp_path / "my_descriptions.json"
    descriptions.write_text(json.dumps({c: [f"an MRI with {c}", f"{c}, a brain finding"] for c in CLASSES}))
    dpt = run(cell(user_conf, tmp_path, "method=biomed_dpt", "method.epochs=1",
                   f"{advice.group(1)}{descriptions}"))  # the error's advice, followed literally
    assert dpt["status"] == "ok" and dpt["identity"]["dataset"] == "my_brains"


def test_borrowed_names_are_refused():
    cfg = OmegaConf.create({"dataset": {"name": "pneumoniamnist"}, "backbone": {"name": "medclip_tiny"}})
    inherited = naming_problems(cfg, {"dataset": "my_xrays"}, [])
    assert len(inherited) == 1 and "add `name: my_xrays` to that file" in inherited[0]
    assert naming_problems(cfg, {"dataset": "my_xrays"}, ["dataset.name=pneumoniamnist"]) == []
    default = {"dataset": "pneumoniamnist", "backbone": "medclip_tiny"}  # conf/train.yaml's default backbone
    source = naming_problems(cfg, default, ["backbone.source=hf-hub:someone/model"])
    assert len(source) == 1 and "backbone.name is still 'medclip_tiny'" in source[0]
    assert naming_problems(cfg, default, ["backbone.source=hf-hub:someone/model", "backbone.name=their_clip"]) == []
    # a backbone chosen explicitly (command line or experiment) may load a local copy of its own weights
    chosen = {"dataset": "pneumoniamnist", "backbone": "biomedclip"}
    assert naming_problems(cfg, chosen, ["backbone.source=local-dir:/w/biomedclip"]) == []
    assert naming_problems(cfg, default, ["backbone=medclip_tiny", "backbone.source=local-dir:/w/mine"]) == []


@pytest.mark.slow
def test_cli_with_searchpath_and_source_override(user_conf, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    base = [sys.executable, "-m", "promptbench.cli", "train", f"hydra.searchpath=[file://{user_conf}]",
            "dataset=my_brains", "method=zeroshot", "shots=1", "logger=none", f"paths.output_dir={tmp_path}"]
    ok = subprocess.run([*base, "backbone=tiny_clip"], capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "results/few_shot/my_brains/tiny_clip/zeroshot/shots_1/seed_1/result.json").is_file()
    source = f"backbone.source=local-dir:{REPO / 'promptbench/backbones/model_configs/tiny_clip'}"
    bad = subprocess.run([*base, source, "backbone.load_weights=false"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode != 0 and "backbone.name is still 'medclip_tiny'" in bad.stdout + bad.stderr
