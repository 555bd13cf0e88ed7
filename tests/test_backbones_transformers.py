"""transformers CLIP / SigLIP folders: recognised by what they hold, loaded safely and offline, token-level paths
equal to the stock ``get_image_features`` / ``get_text_features``, one-line errors and pre-flight checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from promptbench.backbones import MODEL_CONFIG_DIR, BackboneLoadError, build_backbone, sources
from promptbench.backbones.projections import projection_deltas
from promptbench.prompts.hooks import edit_layers
from tests.conftest import DEMO, backbone_overrides, tiny_backbone_cfg, tiny_transformers_folder
from tests.tiny_transformers import write_tiny_clip, write_tiny_siglip

pytestmark = pytest.mark.usefixtures("single_torch_thread")
KINDS = ["tiny_hf_clip", "tiny_hf_siglip"]
TEXTS = ["a brain mri showing a glioma tumor.", "normal", "x x x x pituitary tumor.", "an mri scan of a brain"]


def cfg_for(folder: Path, **extra):
    return OmegaConf.create({"name": folder.name, "source": f"local-dir:{folder}", "load_weights": True, **extra})


@pytest.fixture(scope="module", params=KINDS)
def hf(request):
    torch.manual_seed(0)
    return build_backbone(tiny_backbone_cfg(request.param))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 reordering (the tolerance of the other towers' equivalence tests)."""
    return torch.allclose(a, b, atol=1e-6, rtol=1e-5)


# -- recognition ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KINDS)
def test_folder_is_recognised_by_what_it_holds(name):
    folder = tiny_transformers_folder(name)
    _, fmt = sources.LocalDirSource().folder_format(str(folder))
    assert type(fmt).__name__ == "TransformersFolder"
    assert sources.weights_file(cfg_for(folder)) == folder / "model.safetensors"
    assert sources.check(cfg_for(folder)) is None


@pytest.mark.parametrize("name", ["tiny_biomedclip", "tiny_pmc_clip"])
def test_open_clip_folders_with_a_bert_config_json_stay_open_clip(name):
    """PMC-CLIP / BiomedCLIP folders hold open_clip_config.json and a BERT config.json: never claimed here."""
    folder = MODEL_CONFIG_DIR / name
    assert (folder / "config.json").is_file() and (folder / "open_clip_config.json").is_file()
    _, fmt = sources.LocalDirSource().folder_format(str(folder))
    assert type(fmt).__name__ == "OpenClipFolder"


def test_a_clip_config_beside_open_clip_config_is_still_open_clip(tmp_path):
    folder = tmp_path / "both"
    shutil.copytree(MODEL_CONFIG_DIR / "tiny_clip", folder)
    shutil.copy(tiny_transformers_folder("tiny_hf_clip") / "config.json", folder / "config.json")
    _, fmt = sources.LocalDirSource().folder_format(str(folder))
    assert type(fmt).__name__ == "OpenClipFolder"


def test_a_folder_of_neither_format_is_one_line_naming_both(tmp_path):
    folder = tmp_path / "bert_only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(BackboneLoadError) as err:
        build_backbone(cfg_for(folder))
    message = str(err.value)
    assert "\n" not in message and "holds: config.json, vocab.txt" in message
    assert "open_clip_config.json" in message and "model_type clip or siglip" in message
    assert sources.check(cfg_for(folder)) == message  # the sweep's pre-flight says the same


# -- pre-flight checks and safe loading -----------------------------------------------------------------------------


def test_check_reports_missing_weights_and_tokenizer_in_one_line_without_building(tmp_path, monkeypatch):
    folder = tmp_path / "clip"
    shutil.copytree(tiny_transformers_folder("tiny_hf_clip"), folder)
    (folder / "model.safetensors").unlink()
    (folder / "tokenizer.json").unlink()
    import transformers

    monkeypatch.setattr(transformers.CLIPModel, "__init__", lambda *a, **k: pytest.fail("check() built a model"))
    problem = sources.check(cfg_for(folder))
    assert problem and "\n" not in problem
    assert "no weights" in problem and "model.safetensors" in problem and "no tokenizer" in problem
    assert sources.check(cfg_for(folder, load_weights=False)).startswith("no tokenizer")
    with pytest.raises(BackboneLoadError, match="load_weights=false"):
        build_backbone(cfg_for(folder))


def test_pretrained_is_refused_not_ignored(tmp_path):
    folder = tiny_transformers_folder("tiny_hf_clip")
    problem = sources.check(cfg_for(folder, pretrained=str(tmp_path / "w.bin")))
    assert problem and "backbone.pretrained" in problem and "\n" not in problem


def test_random_init_needs_only_config_and_tokenizer(tmp_path):
    """load_weights=false builds from config.json alone, the same model every time (BUILD_SEED)."""
    folder = write_tiny_siglip(tmp_path / "siglip", weights=False)
    assert not (folder / "model.safetensors").exists()
    cfg = cfg_for(folder, load_weights=False)
    assert sources.check(cfg) is None and sources.weights_file(cfg) is None
    a, b = build_backbone(cfg), build_backbone(cfg)
    assert a.info.weights_path is None and a.weights_sha256 is None
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.encode_image(images), b.encode_image(images))


def test_safetensors_weights_load_exactly_with_provenance(tmp_path):
    folder = write_tiny_clip(tmp_path / "clip")
    from transformers import CLIPModel

    reference = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    bb = build_backbone(cfg_for(folder))
    for key, value in reference.state_dict().items():
        assert torch.equal(bb.model.stock.state_dict()[key], value), key
    assert bb.weights_sha256 and len(bb.weights_sha256) == 64
    assert bb.info.weights_path == str(folder / "model.safetensors")
    assert next(bb.parameters()).dtype == torch.float32


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickled_code_in_a_bin_checkpoint_is_not_executed(tmp_path):
    """pytorch_model.bin loads with weights_only=True: a plain state dict loads, pickled callables are refused."""
    folder = tmp_path / "clip"
    shutil.copytree(tiny_transformers_folder("tiny_hf_clip"), folder)
    state = build_backbone(cfg_for(folder)).model.stock.state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    loaded = build_backbone(cfg_for(folder))
    assert loaded.info.weights_path == str(folder / "pytorch_model.bin")
    marker = tmp_path / "pwned"
    torch.save({**state, "evil": _Marker(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(BackboneLoadError) as err:
        build_backbone(cfg_for(folder))
    assert not marker.exists() and "\n" not in str(err.value)


def test_preprocessing_comes_from_the_processor_config(tmp_path):
    clip = build_backbone(tiny_backbone_cfg("tiny_hf_clip")).preprocessing
    siglip = build_backbone(tiny_backbone_cfg("tiny_hf_siglip")).preprocessing
    assert (clip.image_size, clip.interpolation, clip.mean[0]) == (32, "bicubic", 0.48145466)
    assert (siglip.image_size, siglip.interpolation, siglip.mean, siglip.std) == (32, "bilinear", (0.5,) * 3,
                                                                                  (0.5,) * 3)
    folder = tmp_path / "siglip"
    shutil.copytree(tiny_transformers_folder("tiny_hf_siglip"), folder)
    (folder / "preprocessor_config.json").unlink()
    default = build_backbone(cfg_for(folder)).preprocessing  # image size from config.json, SigLIP's normalisation
    assert (default.image_size, default.mean, default.interpolation) == (32, (0.5,) * 3, "bicubic")


# -- equality with the stock model ----------------------------------------------------------------------------------


def test_prompt_free_forwards_equal_stock_features(hf):
    stock = hf.model.stock
    images = torch.randn(4, 3, 32, 32)
    ids = hf.text.tokenize(TEXTS)
    with torch.no_grad():
        image_ref = stock.get_image_features(pixel_values=images).pooler_output
        text_ref = stock.get_text_features(input_ids=ids).pooler_output
        assert torch.equal(hf.encode_image(images), image_ref) and torch.equal(hf.encode_text(ids), text_ref)
        assert close(hf.visual.encode_from_tokens(hf.visual.embed(images)), image_ref)
        assert close(hf.visual.project(hf.visual.pool(hf.visual.run_blocks(hf.visual.embed(images)))), image_ref)
        # CLIP drops the positions after the last EOS (causal): the same values up to summation order
        assert close(hf.text.encode_embeds(hf.text.token_embed(ids), ids), text_ref)
        batched = hf.text.encode_embeds(hf.text.token_embed(ids).expand(2, *ids.shape, -1), ids.expand(2, -1, -1))
        assert close(batched[1], text_ref)
    assert ids.shape == (len(TEXTS), hf.text.context_length) and ids.dtype == torch.long


def test_embed_pre_norm_and_pooling_pieces(hf):
    tower, images = hf.visual, torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tower.norm_pre(tower.embed(images, pre_norm=True)), tower.embed(images), atol=1e-6)
        x = tower.run_blocks(tower.embed(images))
        assert x.shape == (2, tower.num_prefix_tokens + 16, tower.width)
        assert tower.pos_embed.shape == (1, tower.num_prefix_tokens + 16, tower.width)
        assert tower.patch_size == (8, 8)
        if tower.num_prefix_tokens:  # class-token pooling: the reduction that picks it is the stock pooling
            assert torch.allclose(tower.pool_tokens(x, lambda t: t[:, 0]), tower.pool(x), atol=1e-6)


def test_siglip_pool_tokens_with_the_probes_attention_is_the_map_head():
    """pool_tokens replaces the MAP head's attention weights: fed the probe's own weights (one head) it is stock."""
    from transformers import SiglipConfig, SiglipModel

    from promptbench.backbones.adapters.transformers import HFDualEncoder, HFSiglipVisionTower

    torch.manual_seed(0)
    tower_cfg = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1}
    model = SiglipModel(SiglipConfig(text_config={**tower_cfg, "vocab_size": 10},
                                     vision_config={**tower_cfg, "image_size": 16, "patch_size": 8})).eval()
    tower = HFSiglipVisionTower(HFDualEncoder(model).visual)
    head = model.vision_model.head
    with torch.no_grad():
        x = tower.run_blocks(tower.embed(torch.randn(3, 3, 16, 16)))
        _, weights = head.attention(head.probe.expand(3, -1, -1), tower.norm_tokens(x), tower.norm_tokens(x))
        got = tower.pool_tokens(x, lambda t: (weights[:, 0, :, None] * t).sum(1))
        assert close(got, tower.pool(x))


def test_block_branches_compose_to_each_block(hf):
    tower = hf.visual
    with torch.no_grad():
        x = tower.embed(torch.randn(2, 3, 32, 32))
        for i, block in enumerate(tower.blocks):
            attn, mlp = tower.block_branches(i)
            assert torch.allclose(mlp(attn(x)), block(x, None), atol=1e-6)
            x = block(x, None)


def test_layer_hooks_and_projection_deltas_reach_both_towers(hf):
    """edit_layers pre-hooks rewrite the hidden state entering an encoder layer (called positionally by the library's
    encoder); projection deltas on the separate q/k/v/out/fc1/fc2 Linears change the output, and vanish after."""
    images, ids = torch.randn(2, 3, 32, 32), hf.text.tokenize(TEXTS[:2])
    with torch.no_grad():
        base_img, base_txt = hf.encode_image(images), hf.encode_text(ids)
        shift = torch.linspace(-1, 1, hf.visual.width)  # not a constant: LayerNorms would remove that
        with edit_layers(hf.visual.blocks, {1: lambda h: h + shift}), edit_layers(hf.text.blocks, {1: lambda h: h * 2}):
            assert max_diff(hf.visual.encode_from_tokens(hf.visual.embed(images)), base_img) > 1e-4
            assert max_diff(hf.text.encode_embeds(hf.text.token_embed(ids), ids), base_txt) > 1e-4
        for tower in (hf.visual, hf.text):
            projections = tower.projections()
            assert [p.kind for p in projections] == ["q", "k", "v", "out", "fc1", "fc2"] * len(tower.blocks)
            assert all(p.weight.shape == (p.out_features, p.in_features) for p in projections)
        deltas = {p: (lambda x, p=p: 0.1 * torch.ones(*x.shape[:-1], p.out_features))
                  for p in hf.visual.projections() + hf.text.projections()}
        with projection_deltas(deltas):
            assert max_diff(hf.encode_image(images), base_img) > 1e-4
            assert max_diff(hf.encode_text(ids), base_txt) > 1e-4
        assert torch.equal(hf.encode_image(images), base_img) and torch.equal(hf.encode_text(ids), base_txt)


def test_count_tokens_matches_the_tokenized_prompt(hf):
    """count_tokens (no special tokens) places a class name right after the prompt's prefix, as learners assume."""
    text, p = hf.text, hf.text.num_prefix_tokens
    assert p == (1 if "clip" in hf.info.name and "siglip" not in hf.info.name else 0)
    assert text.count_tokens("X") == 1
    for name in ("glioma tumor", "normal brain", "an unknownword here"):
        ids = text.tokenize([f"X X {name}."])[0]
        alone = text.tokenize([name])[0]
        n = text.count_tokens(name)
        assert torch.equal(ids[p + 2: p + 2 + n], alone[p: p + n])


def test_logit_scale_and_bias(hf):
    assert hf.logit_scale.numel() == 1 and hf.logit_scale is hf.model.stock.logit_scale
    has_bias = hf.model.logit_bias is not None
    assert has_bias == (type(hf.model.stock).__name__ == "SiglipModel")
    assert hf.embed_dim == (16 if not has_bias else 32)
    assert len(hf.state_dict()) == len(hf.model.stock.state_dict())  # every tensor once, none copied


@pytest.mark.skipif(not (DEMO / "BTMRI" / "split_BTMRI.json").is_file(), reason="no demo BTMRI images")
def test_a_training_run_on_a_transformers_folder(tmp_path):
    """backbone=hf_folder + local-dir: a CoOp cell trains and evaluates end to end (preprocessing from the folder)."""
    from promptbench.config import compose
    from promptbench.engine.run import run

    cfg = compose([*backbone_overrides("tiny_hf_siglip"), "method=coop", "dataset=demo_btmri", "shots=1", "seed=1",
                   "method.epochs=1", "method.batch_size=4", "logger=none", "trainer.enable_progress_bar=false",
                   f"paths.output_dir={tmp_path}"])
    result = run(cfg)
    assert result["status"] == "ok" and "test/acc" in result["metrics"] and "train/loss" in result["metrics"]
