"""Weight-space methods (CLIP-LoRA, CLIP-SVD), CLAP and the projection view they are built on.

Both tower families (open_clip native MHA / timm fused qkv + HF BERT) through the ``tiny_backbone`` fixture.
Expected values are computed independently: a deep copy of the backbone whose weights are edited in place
(``W += ΔW``) is the reference for every functional delta.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from omegaconf import OmegaConf

from promptbench.backbones import build_backbone
from promptbench.backbones.projections import ATTENTION_KINDS, MLP_KINDS, projection_deltas
from promptbench.methods import build_method
from promptbench.methods.clap import class_adaptive_multipliers, l2_constraint
from promptbench.methods.clip_lora import lora_parameter_count
from promptbench.methods.clip_svd import svd_parameter_count
from tests.conftest import BTMRI_CLASSES, tiny_backbone_cfg
from tests.test_contract import SupportSet, method_cfg, zero_shot_logits

TEMPLATE = "a mr photo of a {}."


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def ds():
    return OmegaConf.create({"name": "btmri", "modality": "MRI", "organ": "brain", "classnames": BTMRI_CLASSES,
                             "template": TEMPLATE, "templates": [TEMPLATE], "descriptions": None})


def images(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def encode_both(backbone, ids, imgs):
    with torch.no_grad():
        return backbone.encode_image(imgs), backbone.text.encode(ids)


def edited_copy(backbone, deltas: dict):
    """A deep copy of the backbone with ``W += ΔW`` written into the weights of the given projections."""
    twin = copy.deepcopy(backbone)
    lookup = {p.name: p for p in twin.visual.projections() + twin.text.projections()}
    with torch.no_grad():
        for proj, dw in deltas.items():
            lookup[proj.name].weight.add_(dw)  # a view into the (possibly packed) parameter
    return twin


# -- projection view -------------------------------------------------------------------------------------------------


def test_every_block_exposes_six_projections(tiny_backbone):
    for tower in (tiny_backbone.visual, tiny_backbone.text):
        projs = tower.projections()
        assert len(projs) == 6 * len(tower.blocks)
        assert {p.kind for p in projs} == set(ATTENTION_KINDS + MLP_KINDS)
        for p in projs:
            if p.kind in ATTENTION_KINDS:
                assert p.weight.shape == (tower.width, tower.width)
            assert p.weight.shape == (p.out_features, p.in_features)
            assert p.bias is None or p.bias.shape == (p.out_features,)
        q = next(p for p in projs if p.kind == "q" and p.layer == 0)
        assert q.weight.data_ptr() in {t.data_ptr() for t in q.module.parameters()}  # a view, not a copy


@pytest.mark.parametrize("kinds", [("q", "k", "v"), ("out",), ("fc1", "fc2")])
def test_functional_deltas_equal_edited_weights_and_leave_nothing_behind(tiny_backbone, kinds):
    g = torch.Generator().manual_seed(1)
    targets = [p for p in tiny_backbone.visual.projections() + tiny_backbone.text.projections() if p.kind in kinds]
    dws = {p: 0.05 * torch.randn(p.weight.shape, generator=g) for p in targets}
    ids = tiny_backbone.text.tokenize([TEMPLATE.format(c) for c in BTMRI_CLASSES])
    imgs = images()
    stock = encode_both(tiny_backbone, ids, imgs)
    def weight_delta(dw):
        return lambda x: x @ dw.t()

    with projection_deltas({p: weight_delta(dw) for p, dw in dws.items()}):
        got = encode_both(tiny_backbone, ids, imgs)
    want = encode_both(edited_copy(tiny_backbone, dws), ids, imgs)
    for a, b, s in zip(got, want, stock, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        assert (a - s).abs().max() > 1e-3  # the deltas did something
    after = encode_both(tiny_backbone, ids, imgs)
    for a, s in zip(after, stock, strict=True):
        assert torch.equal(a, s)  # hooks gone: stock again, bit for bit


# -- parameter counts ------------------------------------------------------------------------------------------------


def vit_shapes(width, depth, mlp_ratio=4, kinds=("q", "k", "v")):
    shapes = {"q": (width, width), "k": (width, width), "v": (width, width), "out": (width, width),
              "fc1": (mlp_ratio * width, width), "fc2": (width, mlp_ratio * width)}
    return [shapes[k] for _ in range(depth) for k in kinds]


def test_formulas_give_the_papers_totals():
    # CLIP ViT-B/16: image 12 x 768 (MLP 3072), text 12 x 512 (MLP 2048); BiomedCLIP text: BERT-base 12 x 768.
    lora = vit_shapes(768, 12) + vit_shapes(512, 12)
    assert lora_parameter_count(lora, rank=2) == 184_320
    every = ("q", "k", "v", "out", "fc1", "fc2")
    assert svd_parameter_count(vit_shapes(768, 12, kinds=every) + vit_shapes(512, 12, kinds=every)) == 92_160
    assert svd_parameter_count(vit_shapes(768, 12, kinds=every) * 2) == 110_592


def test_parameter_counts_follow_the_formulas(tiny_backbone, ds):
    towers = (tiny_backbone.visual, tiny_backbone.text)
    lora = build_method(method_cfg("clip_lora"), tiny_backbone, BTMRI_CLASSES, ds)
    qkv = [(t.width, t.width) for t in towers for _ in range(len(t.blocks)) for _ in range(3)]
    assert lora.num_trainable() == lora_parameter_count(qkv, rank=2) == 2 * 2 * 3 * sum(
        t.width * len(t.blocks) for t in towers)
    svd = build_method(method_cfg("clip_svd"), tiny_backbone, BTMRI_CLASSES, ds)
    # attention q, k, v, out: width each; MLP fc1, fc2: min(hidden, width) = width each
    assert svd.num_trainable() == svd_parameter_count([p.weight.shape for t in towers for p in t.projections()])
    assert svd.num_trainable() == 6 * sum(t.width * len(t.blocks) for t in towers)
    clap = build_method(method_cfg("clap"), tiny_backbone, BTMRI_CLASSES, ds)
    assert clap.num_trainable() == len(BTMRI_CLASSES) * tiny_backbone.embed_dim


# -- CLIP-LoRA -------------------------------------------------------------------------------------------------------


def assert_equals_merged_weights(method, backbone, imgs) -> torch.Tensor:
    """The method's eval logits equal zero-shot CLIP on a copy with its deltas merged into the weights."""
    method.eval()
    with torch.no_grad():
        got = method(imgs)
        twin = edited_copy(backbone, {p: method.merged_delta(p) for p in method.targets})
    torch.testing.assert_close(got, zero_shot_logits(twin, imgs), atol=1e-4, rtol=1e-4)
    return got


def test_lora_equals_the_merged_weights_and_dropout_is_train_only(tiny_backbone, ds):
    torch.manual_seed(0)
    method = build_method(method_cfg("clip_lora"), tiny_backbone, BTMRI_CLASSES, ds)
    assert method.scaling == pytest.approx(1 / math.sqrt(2))  # alpha / sqrt(r), the reference's loralib
    with torch.no_grad():
        for b in method.lora_B.values():
            b.normal_(0, 0.2)
    imgs = images()
    got = assert_equals_merged_weights(method, tiny_backbone, imgs)
    assert (got - zero_shot_logits(tiny_backbone, imgs)).abs().max() > 1e-3
    method.train()
    assert method.dropout.training and not tiny_backbone.training
    with torch.no_grad():
        assert not torch.allclose(method(imgs), method(imgs))  # dropout on the LoRA input, fresh masks


def test_lora_budget_and_schedule(tiny_backbone, ds):
    method = build_method(method_cfg("clip_lora"), tiny_backbone, BTMRI_CLASSES, ds)
    assert method.training_budget(steps_per_epoch=3, shots=4).steps == 2000  # 500 x K
    plan = method.configure_optimization(method.cfg.optim, max_epochs=1, total_steps=10)
    opt, sched = plan["optimizer"], plan["lr_scheduler"]
    assert plan["lr_scheduler"]["interval"] == "step" and isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 2e-4 and opt.defaults["weight_decay"] == 0.01 and opt.defaults["betas"] == (0.9, 0.999)
    for _ in range(10):
        opt.step()
        sched["scheduler"].step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6)  # the floor


# -- CLIP-SVD --------------------------------------------------------------------------------------------------------


def test_svd_shifted_singular_values_equal_the_edited_weights(tiny_backbone, ds):
    method = build_method(method_cfg("clip_svd"), tiny_backbone, BTMRI_CLASSES, ds)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for s in method.sigma.values():
            s.mul_(1 + 0.2 * torch.randn(s.shape, generator=g))
    proj = method.targets[0]
    u, vh = getattr(method, method._factors["visual_0_q"][0]), getattr(method, method._factors["visual_0_q"][1])
    rebuilt = u @ torch.diag(method.sigma["visual_0_q"]) @ vh  # the reference's U diag(s') V^T
    torch.testing.assert_close(proj.weight + method.merged_delta(proj), rebuilt, atol=1e-5, rtol=1e-5)
    assert_equals_merged_weights(method, tiny_backbone, images())


def test_svd_budget_and_reference_schedule(tiny_backbone, ds):
    from tests.test_contract import method_cfg as cfg_of

    method = build_method(cfg_of("clip_svd", epochs=4), tiny_backbone, BTMRI_CLASSES, ds)
    assert method.training_budget(steps_per_epoch=3, shots=4).epochs == 4
    plan = method.configure_optimization(method.cfg.optim, max_epochs=4, total_steps=12)
    sched = plan["lr_scheduler"]["scheduler"]
    assert sched.T_max == 4 and plan["lr_scheduler"]["interval"] == "step"  # T_max in epochs, stepped per batch


# -- CLAP ------------------------------------------------------------------------------------------------------------


def test_clap_multipliers_and_constraint_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    p = logits.softmax(-1)
    want = torch.tensor([(p[0, 0] + p[1, 0]) / 2, p[2, 1]])
    torch.testing.assert_close(class_adaptive_multipliers(logits, labels, 2), want)
    w, t = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert l2_constraint(w, t, torch.tensor([0.5, 2.0])).item() == pytest.approx((0.5 * 5 + 2.0 * 9) / 2)


def test_clap_prepare_sets_multipliers_from_zero_shot(tiny_backbone, ds):
    method = build_method(method_cfg("clap", multiplier_views=1), tiny_backbone, BTMRI_CLASSES, ds)
    support = SupportSet()
    method.prepare(support)
    k = 2 * len(BTMRI_CLASSES)
    zs = zero_shot_logits(tiny_backbone, support.images[:k])
    want = class_adaptive_multipliers(zs, support.labels[:k], len(BTMRI_CLASSES))
    torch.testing.assert_close(method.multipliers, want, atol=1e-5, rtol=1e-5)
    out = method.training_loss(support.images[:k], support.labels[:k])
    assert out["constraint"].item() == 0.0  # prototypes start at the anchors
    with torch.no_grad():
        method.prototypes.add_(0.1)
    out = method.training_loss(support.images[:k], support.labels[:k])
    want_pen = (method.multipliers * (method.prototypes - method.anchors).pow(2).sum(-1)).mean()
    torch.testing.assert_close(out["constraint"], want_pen)
    torch.testing.assert_close(out["loss"], out["ce"] + want_pen)


def test_clap_novel_classes_fall_back_to_zero_shot(tiny_backbone, ds):
    method = build_method(method_cfg("clap"), tiny_backbone, BTMRI_CLASSES[:2], ds)
    with torch.no_grad():
        method.prototypes.add_(0.3)
    method.set_classnames(BTMRI_CLASSES)
    imgs = images()
    with torch.no_grad():
        got = method(imgs)
    zs = zero_shot_logits(tiny_backbone, imgs)
    torch.testing.assert_close(got[:, 2:], zs[:, 2:], atol=1e-5, rtol=0)
    assert (got[:, :2] - zs[:, :2]).abs().max() > 1e-4


# -- the shared backbone cache ---------------------------------------------------------------------------------------


def test_cached_backbone_is_never_handed_on_modified(ds):
    from tests.test_contract import backbone_state

    cfg = tiny_backbone_cfg("tiny_clip")
    first = build_backbone(cfg, cache=True)
    before = {k: v.clone() for k, v in first.state_dict().items()}
    for name in ("clip_lora", "clip_svd"):
        method = build_method(method_cfg(name), first, BTMRI_CLASSES, ds)
        plan = method.configure_optimization(method.cfg.optim, max_epochs=1, total_steps=2)
        method.train()
        for _ in range(2):
            plan["optimizer"].zero_grad()
            method.training_loss(images(8), torch.arange(4).repeat(2))["loss"].backward()
            plan["optimizer"].step()
    second = build_backbone(cfg, cache=True)
    assert second is first
    assert all(torch.equal(before[k], v) for k, v in second.state_dict().items())
    assert not any(m._forward_hooks for m in second.modules())
    assert not backbone_state(second)["grads"] and not second.training
    imgs = images()
    fresh = build_backbone(cfg)
    fresh.load_state_dict(before)
    with torch.no_grad():
        assert torch.equal(second.encode_image(imgs), fresh.encode_image(imgs))


# -- through the engine, on demo data --------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["tiny_clip", "tiny_biomedclip"])
def test_new_methods_run_on_demo_data(tmp_path, backbone):
    from promptbench.config import compose
    from promptbench.engine.run import run

    common = [f"backbone={backbone}", "dataset=demo_btmri", "shots=2", "seed=1", "logger=none",
              "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path}", f"dataset.template='{TEMPLATE}'"]
    lora = run(compose([*common, "method=clip_lora", "method.iters_per_shot=2", "method.batch_size=4"]))
    assert lora["status"] == "ok" and lora["timing"]["steps"] == 4  # iters_per_shot x K, not epochs
    assert lora["timing"]["epochs"] == 2                             # 8 support images / batch 4 = 2 per epoch
    svd = run(compose([*common, "method=clip_svd", "method.epochs=1", "method.batch_size=8"]))
    assert svd["status"] == "ok" and svd["timing"]["steps"] == 1
    clap = run(compose([*common, "method=clap", "method.epochs=2", "method.multiplier_views=1"]))
    assert clap["status"] == "ok" and clap["timing"]["steps"] == 2
    for result in (lora, svd, clap):
        assert 0.0 <= result["metrics"]["test/acc"] <= 1.0 and result["params"]["trainable"] > 0


def test_methods_that_modify_the_backbone_get_a_private_copy():
    from promptbench.config import compose
    from promptbench.engine.run import backbone_for
    from promptbench.methods import register, unregister
    from promptbench.methods.base import Method

    class _InPlace(Method):
        modifies_backbone = True

    cfg = compose(["backbone=tiny_clip", "method=zeroshot"])
    shared = build_backbone(cfg.backbone, cache=True)
    assert backbone_for(cfg) is shared                     # ordinary methods share the cached instance
    register("toy_in_place")(_InPlace)
    try:
        cfg.method.name = "toy_in_place"
        private = backbone_for(cfg)
        assert private is not shared and private.model is not shared.model
        with torch.no_grad():
            next(private.parameters()).add_(1.0)
        assert not torch.equal(next(private.parameters()), next(shared.parameters()))
    finally:
        unregister("toy_in_place")
