"""Hub weights offline as users fetch them (docs/install.md, "Hub weights offline"): ``hf download`` of the open_clip
repo and of the text tower's ``config.json vocab.txt`` fills the HF cache and the default ``hf-hub:`` source loads
with ``HF_HUB_OFFLINE=1``; a ``--local-dir`` download plus the tower's ``config.json`` loads as ``local-dir:``
with no edit of ``open_clip_config.json``. A BiomedCLIP-shaped tiny model stands in for the real one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from promptbench.backbones import build_backbone

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "promptbench" / "backbones" / "model_configs" / "tiny_biomedclip"
BERT_ID = "pbtest/BiomedBERT-tiny"   # stands in for microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract
CLIP_ID = "pbtest/BiomedCLIP-tiny"   # stands in for microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224


def _hub_folder(dst: Path) -> Path:
    """What a download of the open_clip repo holds: its config naming the text tower by hub id, the weights and the
    tokenizer files (no text-tower config.json)."""
    dst.mkdir(parents=True)
    raw = json.loads((TINY / "open_clip_config.json").read_text())
    raw["model_cfg"]["text_cfg"].update(hf_model_name=BERT_ID, hf_tokenizer_name=BERT_ID)
    (dst / "open_clip_config.json").write_text(json.dumps(raw))
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TINY / name, dst / name)
    model = build_backbone(OmegaConf.create({"name": "tmp", "source": f"local-dir:{TINY}", "load_weights": False}),
                           cache=False)
    torch.save(model.model.state_dict(), dst / "open_clip_pytorch_model.bin")
    return dst


def _cache_repo(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """``hf download`` into the cache: models--org--name/{refs/main, snapshots/<rev>/<files>}."""
    base = cache / f"models--{repo_id.replace('/', '--')}"
    rev = "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    snapshot = base / "snapshots" / rev
    snapshot.mkdir(parents=True)
    for name, src in files.items():
        shutil.copy(src, snapshot / name)


def test_local_dir_download_needs_no_config_edit(tmp_path: Path) -> None:
    folder = _hub_folder(tmp_path / "biomedclip")  # hf download CLIP_ID --local-dir <folder>
    shutil.copy(TINY / "config.json", folder / "config.json")  # hf download BERT_ID config.json --local-dir <folder>
    bb = build_backbone(OmegaConf.create({"name": "biomedclip", "source": f"local-dir:{folder}"}), cache=False)
    assert bb.weights_sha256 and bb.model.text.transformer.config.hidden_size == 48
    text_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert text_cfg["hf_model_name"] == BERT_ID  # the downloaded config, as it came


SCRIPT = """
import json, sys
from omegaconf import OmegaConf
from promptbench.backbones import build_backbone
from promptbench.backbones.sources import check
cfg = OmegaConf.create({"name": "biomedclip", "source": "hf-hub:" + sys.argv[1]})
problem = check(cfg)
if problem:
    print(json.dumps({"problem": problem}))
    sys.exit(0)
bb = build_backbone(cfg, cache=False)
width = bb.model.text.transformer.config.hidden_size
print(json.dumps({"problem": None, "weights": str(bb.info.weights_path), "width": width}))
"""


def _offline_load(cache: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(cache.parent / "hf_home"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, CLIP_ID], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hf_hub_source_loads_offline_from_the_cache(tmp_path: Path) -> None:
    folder, cache = _hub_folder(tmp_path / "download"), tmp_path / "hub"
    _cache_repo(cache, CLIP_ID, {p.name: p for p in folder.iterdir()})  # hf download CLIP_ID
    first = _offline_load(cache)  # the text tower's repo is not cached: the pre-flight says what to fetch
    assert first["problem"] and f"hf download {BERT_ID} config.json vocab.txt" in first["problem"]
    assert "\n" not in first["problem"]
    _cache_repo(cache, BERT_ID, {n: TINY / n for n in ("config.json", "vocab.txt")})  # hf download BERT_ID ...
    loaded = _offline_load(cache)
    assert loaded["problem"] is None and loaded["width"] == 48
    assert loaded["weights"].endswith("open_clip_pytorch_model.bin") and str(cache) in loaded["weights"]
