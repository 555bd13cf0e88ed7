"""The shipped default backbone assets/backbones/medclip_tiny: complete, untampered, loadable offline."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

ASSET = Path(__file__).resolve().parents[1] / "assets" / "backbones" / "medclip_tiny"
WEIGHTS = "open_clip_model.safetensors"
REQUIRED = [
    "open_clip_config.json",
    WEIGHTS,
    "config.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
    "SHA256SUMS",
]


def _load(folder: Path):
    """Same approach as scripts/pretrain_medclip_tiny.py: absolute hf paths + add_model_config."""
    from open_clip.tokenizer import HFTokenizer

    full = json.loads((folder / "open_clip_config.json").read_text())
    cfg = full["model_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        cfg["text_cfg"][key] = str((folder / cfg["text_cfg"][key]).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "medclip_tiny_test.json"
        f.write_text(json.dumps(cfg))
        open_clip.add_model_config(f)
        model = open_clip.create_model(
            "medclip_tiny_test", pretrained=str(folder / WEIGHTS), pretrained_image=False, pretrained_text=False
        )
    model.eval()
    tok = HFTokenizer(str(folder), context_length=cfg["text_cfg"]["context_length"])
    return model, tok, full


@pytest.fixture(scope="module")
def loaded():
    return _load(ASSET)


def test_folder_complete_and_small():
    missing = [f for f in REQUIRED if not (ASSET / f).is_file()]
    assert not missing, f"missing files in {ASSET}: {missing}"
    size = sum(p.stat().st_size for p in ASSET.iterdir() if p.is_file())
    assert size <= 15 * 1024 * 1024, size


def test_sha256sums_matches_weights():
    lines = [ln.split() for ln in (ASSET / "SHA256SUMS").read_text().splitlines() if ln.strip()]
    sums = {name.lstrip("*"): digest for digest, name in lines}
    assert WEIGHTS in sums
    actual = hashlib.sha256((ASSET / WEIGHTS).read_bytes()).hexdigest()
    assert sums[WEIGHTS] == actual
    assert actual in (ASSET / "README.md").read_text()


def test_config_shape():
    full = json.loads((ASSET / "open_clip_config.json").read_text())
    vc, tc = full["model_cfg"]["vision_cfg"], full["model_cfg"]["text_cfg"]
    assert vc["timm_pool"] == "" and vc["timm_proj"] == "linear" and vc["timm_model_name"]
    assert tc["hf_model_name"] == "." and tc["hf_tokenizer_name"] == "."
    assert tc["hf_pooler_type"] == "cls_last_hidden_state_pooler" and tc["hf_proj_type"] == "mlp"
    assert full["preprocess_cfg"]["image_size"] == vc["image_size"]


def test_strict_load_and_forward(loaded):
    from safetensors.torch import load_file

    model, tok, full = loaded
    # every stored tensor is used and every model tensor is stored (create_model already loads strictly)
    sd = load_file(str(ASSET / WEIGHTS))
    assert set(sd) == set(model.state_dict())
    size = full["preprocess_cfg"]["image_size"]
    embed_dim = full["model_cfg"]["embed_dim"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=g)
    text = tok(["an MRI image of a brain showing glioma tumor.", "a knee X-ray with severe osteoarthritis."])
    assert text.shape == (2, full["model_cfg"]["text_cfg"]["context_length"])
    with torch.no_grad():
        img_f = model.encode_image(x)
        txt_f = model.encode_text(text)
    assert img_f.shape == (2, embed_dim) and txt_f.shape == (2, embed_dim)
    assert torch.isfinite(img_f).all() and torch.isfinite(txt_f).all()
    assert torch.isfinite(model.logit_scale).all()


def test_tokenizer_has_no_unk(loaded):
    _, tok, _ = loaded
    unk = tok.tokenizer.unk_token_id
    sentences = [
        "Axial CT slice of the left kidney with a 7 mm renal stone; no hydronephrosis.",
        "A brain MRI scan showing a meningioma tumor (T1-weighted, contrast-enhanced).",
        "Knee radiograph: Kellgren-Lawrence grade 3, joint space narrowing & osteophytes.",
        "Zyxwvut qqq-123 unusualword",  # unknown words still split into characters, never [UNK]
    ]
    ids = tok(sentences)
    assert (ids != unk).all()
    assert (ids[:, 0] == tok.tokenizer.cls_token_id).all()
    # the common words are whole tokens, not character pieces
    pieces = tok.tokenizer.tokenize("a brain MRI image showing glioma tumor")
    assert pieces == ["a", "brain", "mri", "image", "showing", "glioma", "tumor"]


def test_shipped_checkpoint_reproduces_its_zero_shot_mri_accuracy(tmp_path):
    """The default backbone through promptbench's own loader: hash checked, BTMRI demo test accuracy as published."""
    from promptbench.config import compose
    from promptbench.engine.run import run

    cfg = compose(["method=zeroshot", "method.template=null", "dataset=demo_btmri", f"paths.output_dir={tmp_path}",
                   "logger=none", "trainer.enable_progress_bar=false"])  # the template its README's 59.5 % used
    result = run(cfg)
    expected_sha = (ASSET / "SHA256SUMS").read_text().split()[0]
    assert result["hashes"]["weights"] == expected_sha
    assert abs(result["metrics"]["test/acc"] - 0.595) <= 0.005  # 59.5 % in assets/backbones/medclip_tiny/README.md
