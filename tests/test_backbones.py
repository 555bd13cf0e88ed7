"""Backbone loading and tower adapters: stock equivalence, freezing, offline errors."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from promptbench.backbones import BackboneLoadError, build_backbone
from promptbench.backbones.loaders.open_clip import load_open_clip
from promptbench.config import compose


def test_image_tower_split_forward_equals_stock(tiny_backbone):
    images = torch.randn(3, 3, 32, 32)
    stock = tiny_backbone.model.encode_image(images)
    ours = tiny_backbone.visual.encode_from_tokens(tiny_backbone.visual.embed(images))
    assert torch.allclose(stock, ours, atol=1e-6)
    pre = tiny_backbone.visual.embed(images, pre_norm=True)
    assert torch.allclose(tiny_backbone.visual.norm_pre(pre), tiny_backbone.visual.embed(images), atol=1e-6)


def test_text_tower_from_embeddings_equals_stock(tiny_backbone):
    text = tiny_backbone.text
    ids = text.tokenize(["a brain mri showing a glioma tumor.", "normal"])
    stock = tiny_backbone.model.encode_text(ids)
    assert torch.allclose(stock, text.encode_embeds(text.token_embed(ids), ids), atol=1e-6)


def test_backbone_is_frozen_and_stays_in_eval(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert not tiny_backbone.training and not any(m.training for m in tiny_backbone.modules())
    ids = tiny_backbone.text.tokenize(["a knee x-ray"])
    # dropout inactive: two forwards identical
    assert torch.equal(tiny_backbone.encode_text(ids), tiny_backbone.encode_text(ids))


def test_tower_families_differ():
    kinds = {}
    for name in ("tiny_clip", "tiny_biomedclip"):
        bb = build_backbone(compose([f"backbone={name}", "dataset=demo_btmri"]).backbone)
        kinds[name] = (type(bb.visual).__name__, type(bb.text).__name__)
    assert kinds["tiny_clip"] == ("NativeViTTower", "NativeTextTower")
    assert kinds["tiny_biomedclip"] == ("TimmViTTower", "HFTextTower")


def test_missing_local_folder_is_one_clear_line(tmp_path):
    with pytest.raises(BackboneLoadError) as err:
        load_open_clip(f"local-dir:{tmp_path / 'nope'}")
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)


def test_local_folder_without_weights_says_which_files(tmp_path):
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 8}}')
    with pytest.raises(BackboneLoadError, match="open_clip_model.safetensors"):
        load_open_clip(f"local-dir:{tmp_path}")


def test_hub_model_offline_gives_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneLoadError, match="local-dir"):
        load_open_clip("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")


def test_unknown_pretrained_tag_is_rejected():
    with pytest.raises(BackboneLoadError, match="neither a file nor a known tag"):
        load_open_clip("ViT-B-16", "no-such-tag")


def test_local_checkpoint_round_trip_is_safe_and_exact(tmp_path):
    """A saved state dict loads back through the local-dir path (weights_only) with identical outputs."""
    import json
    import shutil

    from safetensors.torch import save_file

    from promptbench.backbones import MODEL_CONFIG_DIR

    src = MODEL_CONFIG_DIR / "tiny_biomedclip"
    dst = tmp_path / "mymodel"
    shutil.copytree(src, dst)
    torch.manual_seed(3)
    bb = build_backbone(OmegaConf.create({"name": "a", "source": f"local-dir:{dst}", "load_weights": False}))
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, dst / "open_clip_model.safetensors")
    cfg = json.loads((dst / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["text_cfg"]["hf_model_name"] == "."
    loaded = build_backbone(OmegaConf.create({"name": "b", "source": f"local-dir:{dst}"}))
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(bb.encode_image(images), loaded.encode_image(images), atol=1e-6)
    assert loaded.weights_sha256 and len(loaded.weights_sha256) == 64


def test_missing_weights_file_names_the_file_and_setting(tmp_path):
    with pytest.raises(BackboneLoadError, match="backbone.pretrained=/path/to/file") as err:
        load_open_clip("ViT-B-32-quickgelu", str(tmp_path / "PubMedCLIP_ViT32.pth"))
    assert "PubMedCLIP_ViT32.pth" in str(err.value) and "\n" not in str(err.value)


def test_builtin_tag_offline_says_which_file_and_setting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneLoadError, match="open_clip_pytorch_model.bin") as err:
        load_open_clip("ViT-B-16-quickgelu", "openai")
    assert "backbone.pretrained=" in str(err.value) and "\n" not in str(err.value)


_REGISTER_LOOP = """
import sys, open_clip
from pathlib import Path
from promptbench.backbones.loaders import open_clip as loading
open_clip.list_models = lambda: []          # register (write + read back) on every call, as a fresh worker does
cfg = {"embed_dim": 8, "vision_cfg": {"width": 8}, "text_cfg": {"width": 8}}
for _ in range(100):
    loading._register_cfg(cfg, Path("race"))
"""


def test_concurrent_workers_register_one_model_config_without_a_torn_file(tmp_path):
    """Joblib workers loading one local backbone at once write the same open_clip config file; a reader must
    never see it half written (the demo's first cell once failed with 'JSONDecodeError: Expecting value')."""
    import subprocess
    import sys

    env = {**__import__("os").environ, "TMPDIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", _REGISTER_LOOP], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert len(list((tmp_path / "promptbench_model_cfgs").glob("*.json"))) == 1  # no temp files left behind
