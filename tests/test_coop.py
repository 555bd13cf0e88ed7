"""CoOp / text-prompt machinery: stock equivalence, parameter counts, gradients, eval mode."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from promptbench.methods import build_method
from promptbench.prompts import TextPromptLearner
from tests.conftest import BTMRI_CLASSES


def coop(backbone, dataset, **kw):
    cfg = OmegaConf.create({"name": "coop", "n_ctx": 4, "ctx_init": "a photo of a",
                            "class_token_position": "end", "class_specific": False, **kw})
    return build_method(cfg, backbone, BTMRI_CLASSES, dataset)


def test_prompt_free_coop_equals_stock_encode_text(tiny_backbone, btmri_dataset_cfg):
    method = coop(tiny_backbone, btmri_dataset_cfg)
    text = tiny_backbone.text
    stock = tiny_backbone.model.encode_text(text.tokenize([f"a photo of a {c}." for c in BTMRI_CLASSES]))
    assert (method.prompt_learner() - stock).abs().max().item() <= 1e-5


def test_coop_logits_equal_zero_shot_with_same_template(tiny_backbone, btmri_dataset_cfg, real_batch):
    images = real_batch[0][:6]
    zs_ds = OmegaConf.merge(btmri_dataset_cfg, {"template": "a photo of a {}."})
    zs = build_method(OmegaConf.create({"name": "zeroshot"}), tiny_backbone, BTMRI_CLASSES, zs_ds)
    assert torch.allclose(coop(tiny_backbone, btmri_dataset_cfg)(images), zs(images), atol=1e-4)


@pytest.mark.parametrize("n_ctx", [2, 4])
def test_trainable_count_is_n_ctx_times_width(tiny_backbone, btmri_dataset_cfg, n_ctx):
    method = coop(tiny_backbone, btmri_dataset_cfg, ctx_init="", n_ctx=n_ctx)
    assert method.num_trainable() == n_ctx * tiny_backbone.text.width
    csc = coop(tiny_backbone, btmri_dataset_cfg, ctx_init="", n_ctx=n_ctx, class_specific=True)
    assert csc.num_trainable() == len(BTMRI_CLASSES) * n_ctx * tiny_backbone.text.width


def test_init_words_count_in_tokens_not_words(tiny_backbone):
    learner = TextPromptLearner(tiny_backbone.text, BTMRI_CLASSES, ctx_init="a photo of a")
    assert learner.n_ctx == tiny_backbone.text.count_tokens("a photo of a")


def test_learn_words_keeps_tail_fixed(tiny_backbone):
    learner = TextPromptLearner(tiny_backbone.text, BTMRI_CLASSES, ctx_init="a photo of a", learn_words=2)
    assert learner.prompt_text("x").endswith("of a x.")
    stock = tiny_backbone.model.encode_text(tiny_backbone.text.tokenize([f"a photo of a {c}." for c in BTMRI_CLASSES]))
    assert torch.allclose(learner(), stock, atol=1e-5)


@pytest.mark.parametrize("position", ["middle", "front"])
def test_class_token_positions_place_the_name(tiny_backbone, btmri_dataset_cfg, position):
    method = coop(tiny_backbone, btmri_dataset_cfg, ctx_init="", n_ctx=4, class_token_position=position)
    learner = method.prompt_learner
    text = learner.prompt_text("glioma tumor")
    assert ("glioma tumor X X" in text) if position == "front" else text.startswith("X X glioma tumor X X")
    ids = learner.token_ids
    placeholder = tiny_backbone.text.tokenize(["X"])[0, tiny_backbone.text.num_prefix_tokens]
    for row, pos in zip(ids, learner.ctx_positions):
        assert torch.all(row[pos] == placeholder)


def test_gradients_reach_only_the_context(tiny_backbone, btmri_dataset_cfg, real_batch):
    method = coop(tiny_backbone, btmri_dataset_cfg)
    method.train()
    images, labels = real_batch
    method.training_loss(images[:8], labels[:8])["loss"].backward()
    assert method.prompt_learner.ctx.grad is not None and method.prompt_learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())
    assert not any(m.training for m in tiny_backbone.modules())
    method.prompt_learner.ctx.grad = None


def test_training_lowers_the_loss_on_real_images(tiny_backbone, btmri_dataset_cfg, real_batch):
    torch.manual_seed(0)
    method = coop(tiny_backbone, btmri_dataset_cfg)
    method.train()
    images, labels = real_batch
    opt = torch.optim.SGD(method.learnable_parameters(), lr=0.5, momentum=0.9)
    first = method.training_loss(images, labels)["loss"].item()
    for _ in range(15):
        opt.zero_grad()
        method.training_loss(images, labels)["loss"].backward()
        opt.step()
    assert method.training_loss(images, labels)["loss"].item() < first


def test_set_classnames_keeps_context(tiny_backbone, btmri_dataset_cfg):
    method = coop(tiny_backbone, btmri_dataset_cfg)
    before = method.prompt_learner.ctx.detach().clone()
    method.set_classnames(["pituitary tumor", "normal brain"])
    assert method.prompt_learner().shape[0] == 2
    assert torch.equal(before, method.prompt_learner.ctx.detach())
