"""PMC-CLIP: the converter turns the three released files into an open_clip folder that loads as the same model.

The "released" files are made here from a random tiny PMC-CLIP-shaped open_clip model (ResNet image tower + BERT
with pooler + bias-free projection), in the released layout: the image encoder's state dict, a BertModel state
dict (with the ``position_ids`` buffer newer transformers reject) and the (in, out) projection matrix."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from promptbench.backbones import MODEL_CONFIG_DIR, build_backbone
from promptbench.backbones.adapters.open_clip import ResNetTower
from promptbench.backbones.pmc_clip import PMC_LOGIT_SCALE, convert_pmc_clip
from tests.conftest import tiny_backbone_cfg


def test_released_files_convert_to_the_same_model(tmp_path):
    torch.manual_seed(0)
    original = build_backbone(tiny_backbone_cfg("tiny_pmc_clip"))
    assert isinstance(original.visual, ResNetTower) and not original.visual.has_tokens
    model = original.model
    with torch.no_grad():  # random BN statistics, so the conversion of buffers is tested too
        for m in model.visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    image_sd = {k: v.clone() for k, v in model.visual.state_dict().items()}
    text_sd = {k: v.clone() for k, v in model.text.transformer.state_dict().items()}
    text_sd["embeddings.position_ids"] = torch.arange(32).unsqueeze(0)
    projection = model.text.proj.weight.detach().t().clone()  # released as pooler_output @ P

    folder = convert_pmc_clip(image_sd, text_sd, projection, MODEL_CONFIG_DIR / "tiny_pmc_clip", tmp_path / "pmc",
                              heads=16, context_length=32)
    written = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    tiny = json.loads((MODEL_CONFIG_DIR / "tiny_pmc_clip" / "open_clip_config.json").read_text())["model_cfg"]
    assert written["vision_cfg"] == tiny["vision_cfg"] and written["embed_dim"] == tiny["embed_dim"]

    converted = build_backbone(OmegaConf.create({"name": "pmc", "source": f"local-dir:{folder}",
                                                 "load_weights": True}))
    assert converted.logit_scale.item() == pytest.approx(PMC_LOGIT_SCALE)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = original.text.tokenize(["a mr photo of a glioma.", "a chest x ray."])
    with torch.no_grad():
        torch.testing.assert_close(converted.encode_image(images), original.encode_image(images))
        torch.testing.assert_close(converted.encode_text(ids), original.encode_text(ids))
        # text features are BERT's pooler output times the released matrix, as in the reference
        pooled = model.text.transformer(input_ids=ids, attention_mask=(ids != 0).long()).pooler_output
        torch.testing.assert_close(converted.encode_text(ids), pooled @ projection)
