"""Visual prompt and feature-adapter methods on both tower families (tiny random backbones, real BTMRI images)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from promptbench.methods import build_method
from promptbench.methods.linear_probe import fit_logistic_regression
from promptbench.methods.lp_plus_plus import lp_plus_plus_init
from promptbench.methods.tip_adapter import search_alpha_beta, tip_cache_logits
from promptbench.methods.visual_common import extract_features
from tests.conftest import Samples

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
CLASSES = ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]
VISUAL = ["vpt_shallow", "vpt_deep", "medical_vpt", "linear_probe", "lp_plus_plus", "clip_adapter", "tip_adapter",
          "tip_adapter_f"]
TRAINABLE = {  # method → (config overrides, SGD lr for the short training run)
    "vpt_shallow": ({}, 0.5),
    "vpt_deep": ({}, 0.5),
    "medical_vpt": ({"n_tokens": 4}, 0.05),
    "clip_adapter": ({}, 0.5),
    "linear_probe": ({"init": "zeroshot"}, 0.05),
    "tip_adapter_f": ({}, 0.05),
}


def method_cfg(name: str, **overrides):
    node = OmegaConf.merge(OmegaConf.load(CONF / "_base.yaml"), OmegaConf.load(CONF / f"{name}.yaml"), overrides)
    node.pop("defaults", None)
    return node


def make(name: str, backbone, dataset_cfg, **overrides):
    torch.manual_seed(0)
    return build_method(method_cfg(name, **overrides), backbone, CLASSES, dataset_cfg)


class FakeDataModule:
    """Even positions of the batch train (4 shots/class), odd positions validate."""

    def __init__(self, images, labels):
        self.train = Samples(images[0::2], labels[0::2], 0)
        self.val = Samples(images[1::2], labels[1::2], 1000)
        self.classnames = CLASSES

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=6, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=6)


def trainable_and_prepared(name, backbone, dataset_cfg, real_batch, **overrides):
    method = make(name, backbone, dataset_cfg, **{**TRAINABLE.get(name, ({}, 0))[0], **overrides})
    if name in ("tip_adapter", "tip_adapter_f", "linear_probe", "lp_plus_plus"):
        method.prepare(FakeDataModule(*real_batch))
    return method


def no_class_token_xfail(backbone) -> None:
    """DVPT pools the class token and its prompts: with no class token (SigLIP's MAP head) and no prompts there is
    nothing to pool, so no-prompt / closed-gate DVPT is not the stock forward there."""
    if not backbone.visual.num_prefix_tokens:
        pytest.xfail("DVPT without prompts on an image tower without a class token pools no token")


# -- tower additions ---------------------------------------------------------------------------------------------
def test_block_branches_and_pool_tokens_reproduce_stock_forward(tiny_backbone):
    tower = tiny_backbone.visual
    images = torch.randn(2, 3, 32, 32)
    x = tower.embed(images)
    for i in range(len(tower.blocks)):
        attn_half, mlp_half = tower.block_branches(i)
        x = mlp_half(attn_half(x))
    out = tower.project(tower.pool(x))
    assert (out - tiny_backbone.encode_image(images)).abs().max() <= 1e-5
    if tower.num_prefix_tokens:  # class-token pooling (a MAP head, SigLIP, has no token that is its pooling)
        assert (tower.project(tower.pool_tokens(x, lambda t: t[:, 0])) - out).abs().max() <= 1e-5
    mean_pooled = tower.project(tower.pool_tokens(x, lambda t: t[:, :2].mean(1)))
    assert (mean_pooled - out).abs().max() > 1e-4


# -- equivalence with the stock forward ---------------------------------------------------------------------------
ZERO = {
    "vpt_shallow": {"n_tokens": 0},
    "vpt_deep": {"n_tokens": 0},
    "medical_vpt": {"n_tokens": 0},
    "clip_adapter": {"alpha": 0.0},
}


@pytest.mark.parametrize("name", VISUAL)
def test_zero_prompts_equal_stock_image_features(tiny_backbone, btmri_dataset_cfg, name):
    if name == "medical_vpt":
        no_class_token_xfail(tiny_backbone)
    images = torch.randn(3, 3, 32, 32)
    method = make(name, tiny_backbone, btmri_dataset_cfg, **ZERO.get(name, {}))
    method.eval()
    with torch.no_grad():
        got, ref = method.image_features(images), tiny_backbone.encode_image(images)
        if name == "clip_adapter":  # the adapter works on (and returns) L2-normalised features
            ref = F.normalize(ref, dim=-1)
        assert (got - ref).abs().max() <= 1e-5
        if name in ZERO and name != "clip_adapter":  # and with tokens the features do change
            prompted = make(name, tiny_backbone, btmri_dataset_cfg, n_tokens=2).eval().image_features(images)
            assert (prompted - tiny_backbone.encode_image(images)).abs().max() > 1e-4


@pytest.mark.parametrize("position,before_norm", [("prefix", False), ("end", True), ("prefix", True)])
def test_vpt_layouts_run_and_position_is_irrelevant(tiny_backbone, btmri_dataset_cfg, position, before_norm):
    images = torch.randn(2, 3, 32, 32)
    a = make("vpt_deep", tiny_backbone, btmri_dataset_cfg, position=position, before_norm=before_norm)
    b = make("vpt_deep", tiny_backbone, btmri_dataset_cfg, position="end", before_norm=before_norm)
    with torch.no_grad():
        assert (a.eval().image_features(images) - b.eval().image_features(images)).abs().max() <= 1e-5


def test_vpt_shallow_rejects_depth(tiny_backbone, btmri_dataset_cfg):
    with pytest.raises(ValueError):
        make("vpt_shallow", tiny_backbone, btmri_dataset_cfg, depth=2)


# -- parameter counts from the formulas in methods_openclip.md ------------------------------------------------------
def test_trainable_parameter_counts(tiny_backbone, btmri_dataset_cfg, real_batch):
    tower = tiny_backbone.visual
    d, layers, e, c = tower.width, len(tower.blocks), tiny_backbone.embed_dim, len(CLASSES)
    assert make("vpt_shallow", tiny_backbone, btmri_dataset_cfg).num_trainable() == 4 * d
    assert make("vpt_deep", tiny_backbone, btmri_dataset_cfg).num_trainable() == 8 * d * layers
    assert make("vpt_deep", tiny_backbone, btmri_dataset_cfg, depth=2, n_tokens=3).num_trainable() == 3 * d * 2
    n, r = 50, 20
    dvpt = 2 * n * d + math.ceil(layers / 3) * (d * r + r + r * d + d + 1)
    assert make("medical_vpt", tiny_backbone, btmri_dataset_cfg).num_trainable() == dvpt
    for init in ("none", "zeroshot"):
        assert make("linear_probe", tiny_backbone, btmri_dataset_cfg, init=init).num_trainable() == c * e + c
    assert make("lp_plus_plus", tiny_backbone, btmri_dataset_cfg).num_trainable() == c * e + 2 * c
    assert make("clip_adapter", tiny_backbone, btmri_dataset_cfg).num_trainable() == 2 * e * (e // 4)
    shots = 4  # FakeDataModule trains on 4 images per class
    assert trainable_and_prepared("tip_adapter_f", tiny_backbone, btmri_dataset_cfg, real_batch).num_trainable() \
        == shots * c * e
    assert trainable_and_prepared("tip_adapter", tiny_backbone, btmri_dataset_cfg, real_batch).num_trainable() == 0


def test_reference_parameter_counts_for_vit_b16():
    """The ViT-B/16 numbers quoted in the configs and docs (methods_openclip.md §1.2, §1.3, §2.2)."""
    d = 768
    assert 12 * 8 * d == 73_728  # VPT-deep, MaPLe-repo config
    assert 5 * d == 3_840  # VPT-shallow, KMnP default
    assert 2 * 50 * d + 4 * (d * 20 + 20 + 20 * d + d + 1) == 202_836  # DVPT
    assert 2 * 512 * 128 == 131_072  # CLIP-Adapter, E = 512


# -- gradients -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TRAINABLE) + ["medical_vpt_paper"])
def test_gradients_reach_only_learnable_parts(tiny_backbone, btmri_dataset_cfg, real_batch, name):
    extra = {"adapter": "cross_attention"} if name == "medical_vpt_paper" else {}
    name = name.removesuffix("_paper")
    method = trainable_and_prepared(name, tiny_backbone, btmri_dataset_cfg, real_batch, **extra)
    if name == "medical_vpt":  # with gates at 0 only the gates get gradients; open them to reach Down/Up too
        for adapter in method.adapters:
            adapter.gate.data.fill_(0.5)
    method.train()
    images, labels = real_batch
    method.training_loss(images[:8], labels[:8])["loss"].backward()
    assert all(p.grad is None for p in tiny_backbone.parameters())
    learnable = dict((k, p) for k, p in method.named_parameters() if p.requires_grad)
    assert learnable and not any(k.startswith("backbone.") for k in learnable)
    for key, param in learnable.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, key


# -- DVPT gates ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("adapter", ["parallel_mlp", "cross_attention"])
def test_dvpt_with_closed_gates_is_the_frozen_model(tiny_backbone, btmri_dataset_cfg, adapter):
    no_class_token_xfail(tiny_backbone)
    images = torch.randn(3, 3, 32, 32)
    zeroshot = build_method(OmegaConf.create({"name": "zeroshot", "prompts": "single"}), tiny_backbone, CLASSES,
                            btmri_dataset_cfg)
    method = make("medical_vpt", tiny_backbone, btmri_dataset_cfg, n_tokens=0, adapter=adapter)
    with torch.no_grad():
        ref = zeroshot(images)
        assert (method.eval()(images) - ref).abs().max() <= 1e-5
        for a in method.adapters:
            a.gate.fill_(1.0)
        assert (method(images) - ref).abs().max() > 1e-4


# -- short training runs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TRAINABLE))
def test_short_training_lowers_the_loss(tiny_backbone, btmri_dataset_cfg, real_batch, name):
    method = trainable_and_prepared(name, tiny_backbone, btmri_dataset_cfg, real_batch)
    assert method.trains
    images, labels = real_batch
    opt = torch.optim.SGD(list(method.learnable_parameters()), lr=TRAINABLE[name][1], momentum=0.9)
    method.train()
    first = None
    for _ in range(15):
        loss = method.training_loss(images, labels)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = method.training_loss(images, labels)["loss"].item()
    assert last < first, (first, last)


# -- Tip-Adapter ---------------------------------------------------------------------------------------------------
def test_tip_cache_logits_hand_computed(tiny_backbone, btmri_dataset_cfg):
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    alpha, beta = 2.0, 3.0
    # f1 = e1: affinities (1, 0, 0.6) → weights (1, e^-3, e^-1.2); f2 = e2: (0, 1, 0.8) → (e^-3, 1, e^-0.6)
    e = math.exp
    expected = torch.tensor([[alpha * 1.0, alpha * (e(-3) + e(-1.2))],
                             [alpha * e(-3), alpha * (1.0 + e(-0.6))]])
    assert torch.allclose(tip_cache_logits(feats, keys, values, alpha, beta), expected, atol=1e-6)

    # the same numbers through the method's cache (E-dim embeddings padded with zeros)
    method = make("tip_adapter", tiny_backbone, btmri_dataset_cfg)
    dim = tiny_backbone.embed_dim
    pad = torch.zeros(3, dim)
    pad[:, :2] = keys
    method.set_cache(pad, torch.tensor([0, 1, 1]))
    method.alpha, method.beta = alpha, beta
    fpad = torch.zeros(2, dim)
    fpad[:, :2] = feats
    logits = method.cache_logits(fpad)
    assert logits.shape == (2, len(CLASSES))
    assert torch.allclose(logits[:, :2], expected, atol=1e-6) and logits[:, 2:].abs().max() == 0


def test_tip_search_finds_the_best_pair():
    # zero-shot always says class 0; the cache knows the truth, so a large enough α·cache must win
    clip = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    affinity = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    values = torch.eye(2)
    labels = torch.tensor([0, 1])
    beta, alpha = search_alpha_beta(clip, affinity, values, labels, scale=(5.0, 5.0), steps=(5, 5))
    # grids (0.1, 1.08, 2.06, 3.04, 4.02) for both; sample 1 is right iff α·(1 − e^-β) > 2:
    # β=0.1 needs α > 21 (none); β=1.08 has 1 − e^-1.08 ≈ 0.660, needs α > 3.03 → α = 3.04 is the first hit.
    assert beta == pytest.approx(0.1 + 4.9 / 5, rel=1e-5) and alpha == pytest.approx(0.1 + 3 * 4.9 / 5, rel=1e-5)


def test_tip_adapter_prepare_and_novel_classes(tiny_backbone, btmri_dataset_cfg, real_batch):
    method = trainable_and_prepared("tip_adapter", tiny_backbone, btmri_dataset_cfg, real_batch)
    assert method.cache_keys.shape == (16, tiny_backbone.embed_dim)
    assert torch.allclose(method.cache_keys.norm(dim=-1), torch.ones(16), atol=1e-5)
    assert method.cache_values.sum(0).tolist() == [4.0] * 4
    images = real_batch[0][:4]
    with torch.no_grad():
        feats = F.normalize(tiny_backbone.encode_image(images), dim=-1)
        full = method.eval()(images)
        assert (full - method.zeroshot_logits(feats)).abs().max() > 1e-4  # the cache contributes
        method.set_classnames(CLASSES[2:])  # a subset of the trained classes keeps its cache columns
        assert (method(images) - full[:, 2:]).abs().max() <= 1e-4
        method.set_classnames(["cyst kidney", "kidney stone"])  # never-trained classes → zero-shot
        assert (method(images) - method.zeroshot_logits(feats)).abs().max() <= 1e-5


# -- linear probes -------------------------------------------------------------------------------------------------
def test_logistic_regression_reaches_the_regularised_optimum(tiny_backbone, real_batch):
    feats, labels = extract_features(tiny_backbone, DataLoader(Samples(*real_batch, 0), batch_size=16))
    for c in (1e-2, 10.0):
        w, b = fit_logistic_regression(feats, labels, 4, c)
        w, b = w.double().requires_grad_(), b.double().requires_grad_()
        obj = F.cross_entropy(feats.double() @ w.t() + b, labels) + w.pow(2).sum() / (2 * c * len(labels))
        gw, gb = torch.autograd.grad(obj, (w, b))
        assert max(gw.abs().max(), gb.abs().max()) < 1e-3
    w_small, _ = fit_logistic_regression(feats, labels, 4, 1e-6)
    assert w_small.abs().max() < 1e-2  # strong regularisation shrinks the weights


def test_linear_probe_prepare_fits_and_falls_back_for_novel(tiny_backbone, btmri_dataset_cfg, real_batch):
    method = trainable_and_prepared("linear_probe", tiny_backbone, btmri_dataset_cfg, real_batch, init="none",
                                    max_iter=100)
    assert not method.trains and method.chosen_c is not None
    info = method.fit_info()  # result.json → fit_info
    assert info["c"] == method.chosen_c and info["fits"] == len(method.fits) >= 1
    assert 0 <= info["capped_fits"] <= info["fits"] and info["iterations"] >= 1
    assert method.head.weight.abs().sum() > 0
    images = real_batch[0][:4]
    with torch.no_grad():
        method.set_classnames(["cyst kidney", "kidney stone"])
        zs = method.zeroshot_logits(tiny_backbone.encode_image(images))
        assert (method.eval()(images) - zs).abs().max() <= 1e-4


def test_zeroshot_initialised_probe_starts_at_zero_shot(tiny_backbone, btmri_dataset_cfg):
    images = torch.randn(3, 3, 32, 32)
    method = make("linear_probe", tiny_backbone, btmri_dataset_cfg, init="zeroshot")
    assert method.fit_info() == {}  # nothing fitted in prepare: result.json fit_info null
    zeroshot = build_method(OmegaConf.create({"name": "zeroshot", "template": method.cfg.template}), tiny_backbone,
                            CLASSES, btmri_dataset_cfg)  # the same template (fidelity=reference: "a photo of a {}.")
    with torch.no_grad():
        assert (method.eval()(images) - zeroshot(images)).abs().max() <= 1e-4


def test_lp_plus_plus_init_hand_computed_and_fit(tiny_backbone, btmri_dataset_cfg, real_batch):
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    protos, alpha0, lr_w, lr_alpha = lp_plus_plus_init(feats, labels, torch.eye(2), 2)
    assert torch.equal(protos, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))  # class sums
    assert alpha0 == pytest.approx(250 * 1.0)  # true-class (diagonal) class-mean similarities [1, 1] (code)
    assert lp_plus_plus_init(feats, labels, torch.eye(2), 2, alpha_init="full")[1] == pytest.approx(250 * 0.5)
    assert lr_w == pytest.approx(4 * 4 / 2)  # λ_max(FᵀF) = 2
    assert lr_alpha == pytest.approx(4 / (4 * 2))  # max_c Σ_i (f_i·t_c)² = 2
    method = trainable_and_prepared("lp_plus_plus", tiny_backbone, btmri_dataset_cfg, real_batch, fit_epochs=30)
    assert all(torch.isfinite(p).all() for p in method.parameters())
    assert method.visual_weight.abs().sum() > 0


# -- modes and configs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VISUAL)
def test_frozen_towers_stay_in_eval_mode(tiny_backbone, btmri_dataset_cfg, name):
    method = make(name, tiny_backbone, btmri_dataset_cfg, dropout=0.1)
    method.train()
    assert method.training
    assert not any(m.training for m in tiny_backbone.modules())
    own = [m for n, m in method.named_modules() if n and not n.startswith("backbone")]
    assert all(m.training for m in own)


@pytest.mark.parametrize("name", VISUAL)
def test_configs_compose(name):
    from promptbench.config import compose

    try:
        cfg = compose([f"method={name}", "backbone=tiny_clip"]).method
    except Exception as err:  # a dataset config may not exist yet
        if "dataset" not in str(err):
            raise
        cfg = method_cfg(name)
    assert cfg.name == name and "optim" in cfg and cfg.batch_size > 0
