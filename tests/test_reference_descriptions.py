"""scripts/reference_descriptions.py: a prompt_templates.py-shaped file → a descriptions JSON the loader accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from promptbench.data.descriptions import load_descriptions

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reference_descriptions.py"


def test_reads_the_dict_without_running_the_file(tmp_path):
    source = tmp_path / "prompt_templates.py"
    source.write_text('import os\nos.system("touch RAN")\nOTHER = ["x"]\n'
                      'BIOMEDCOOP_TEMPLATES = {"glioma tumor": ["s1", "s2"], "normal brain": ["s3"]}\n')
    out = tmp_path / "d.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(source), str(out)], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "RAN").exists()
    assert json.loads(out.read_text()) == {"glioma tumor": ["s1", "s2"], "normal brain": ["s3"]}
    cfg = {"name": "btmri", "descriptions": str(out), "classnames": ["glioma tumor", "normal brain"]}
    assert load_descriptions(cfg)["normal brain"] == ["s3"]
    bad = subprocess.run([sys.executable, str(SCRIPT), str(source), str(out), "--name", "OTHER"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "OTHER is not a dict" in bad.stderr
