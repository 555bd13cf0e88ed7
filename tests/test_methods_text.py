"""Text and multimodal prompt methods: CoCoOp, KgCoOp, ProGrad, BiomedCoOp, MaPLe, Biomed-DPT, TPT.

Both tower families (native CLIP text / HF BERT text) through the ``tiny_backbone`` fixture.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from promptbench.methods import build_method
from promptbench.methods.common import DescriptionsError
from promptbench.methods.text_common import (
    augmented_views,
    confident_indices,
    mad_keep_mask,
    marginal_entropy,
    one_minus_mean_cos,
    project_conflicting,
    prompt_scores,
    soft_cross_entropy,
    teacher_kl,
)
from promptbench.prompts.deep import record_block_inputs
from tests.conftest import BTMRI_CLASSES

REPO = Path(__file__).resolve().parents[1]
TRAINABLE = ["cocoop", "kgcoop", "prograd", "biomedcoop", "maple", "biomed_dpt"]
ALL = [*TRAINABLE, "tpt"]
#: short enough for the tiny BERT's 32-token context (its vocabulary is single characters)
TEMPLATE = "a mr photo of a {}."
WORDS = ["dark", "bright", "round", "large", "small", "odd"]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def text_ds(tmp_path_factory):
    """Dataset node with a small descriptions file (6 sentences per class)."""
    path = tmp_path_factory.mktemp("desc") / "btmri_descriptions.json"
    path.write_text(json.dumps({c: [f"{c} {w}" for w in WORDS] for c in BTMRI_CLASSES}))
    return OmegaConf.create({"name": "btmri", "modality": "MRI", "organ": "brain", "classnames": BTMRI_CLASSES,
                             "template": TEMPLATE, "templates": [TEMPLATE], "descriptions": str(path)})


def method_cfg(name: str, **overrides):
    """``conf/method/<name>.yaml`` over ``_base.yaml`` (what Hydra composes), plus overrides."""
    own = OmegaConf.load(REPO / "conf" / "method" / f"{name}.yaml")
    own.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.load(REPO / "conf" / "method" / "_base.yaml"), own, overrides)


def make(name, backbone, ds, classes=BTMRI_CLASSES, **overrides):
    defaults = {"maple": {"depth": 2}, "tpt": {"n_views": 6}, "biomed_dpt": {"visual_tokens": 2}}
    return build_method(method_cfg(name, **{**defaults.get(name, {}), **overrides}), backbone, classes, ds)


def stock_text(backbone, texts):
    with torch.no_grad():
        return backbone.text.encode(backbone.text.tokenize(texts))


def images(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# -- formulas from methods_openclip.md §3.2-3.4, §3.8 and biomed_dpt_biomedcoop.md §4.1, §5.2 -------------


def cocoop_params(n, embed, width):
    h = embed // 16
    return n * width + (embed * h + h) + (h * width + width)


def maple_params(n, text_w, vis_w, depth):
    return n * text_w + depth * (text_w * vis_w + vis_w) + (depth - 1) * n * text_w


def test_formulas_reproduce_the_reference_totals():
    assert cocoop_params(4, 512, 512) == 35_360
    assert maple_params(2, 512, 768, 9) == 3_555_072


def test_parameter_counts(tiny_backbone, text_ds):
    b, d_t, d_v, e = tiny_backbone, tiny_backbone.text.width, tiny_backbone.visual.width, tiny_backbone.embed_dim
    n4 = b.text.count_tokens("a photo of a")
    assert make("cocoop", b, text_ds).num_trainable() == cocoop_params(n4, e, d_t)
    for name in ("kgcoop", "prograd", "biomedcoop", "tpt"):
        assert make(name, b, text_ds).num_trainable() == n4 * d_t, name
    n2 = b.text.count_tokens("a photo")
    assert make("maple", b, text_ds, depth=2).num_trainable() == maple_params(n2, d_t, d_v, 2)
    assert make("maple", b, text_ds, depth=1).num_trainable() == maple_params(n2, d_t, d_v, 1)
    layers = min(len(b.text.blocks), len(b.visual.blocks))  # the paper's depth 9 is clamped on tiny towers
    assert make("maple", b, text_ds, depth=9).num_trainable() == maple_params(n2, d_t, d_v, layers)
    # Biomed-DPT: the learnable part of the clinical prefix only; zero visual prompts are not parameters
    assert make("biomed_dpt", b, text_ds).num_trainable() == b.text.count_tokens("a mr photo of a") * d_t
    words = "a mr photo of a".split()
    fits = max(k for k in range(1, 6) if b.text.count_tokens(" ".join(words[:k])) <= 2)
    dpt = make("biomed_dpt", b, text_ds, n_ctx=2)
    assert dpt.num_trainable() == b.text.count_tokens(" ".join(words[:fits])) * d_t


# -- prompt-free equivalences --------------------------------------------------------------------------------


def test_cocoop_with_zero_meta_net_equals_zero_shot(tiny_backbone, text_ds):
    method = make("cocoop", tiny_backbone, text_ds)
    with torch.no_grad():
        method.meta_net[-1].weight.zero_()
        method.meta_net[-1].bias.zero_()
    zs = build_method(OmegaConf.create({"name": "zeroshot"}), tiny_backbone, BTMRI_CLASSES,
                      OmegaConf.merge(text_ds, {"template": "a photo of a {}."}))
    x = images()
    with torch.no_grad():
        assert torch.allclose(method(x), zs(x), atol=1e-4)
        method.meta_net[-1].bias.normal_()  # (a constant shift would vanish in the pre-LayerNorms)
        assert not torch.allclose(method(x), zs(x), atol=1e-3)


def test_maple_depth1_text_side_equals_stock(tiny_backbone, text_ds):
    method = make("maple", tiny_backbone, text_ds, depth=1)
    assert method.prompt_learner.prompt_text("x").endswith("of a x.")
    with torch.no_grad():
        assert torch.allclose(method.text_features(), stock_text(tiny_backbone, [f"a photo of a {c}."
                                                                                 for c in BTMRI_CLASSES]), atol=1e-5)


def test_maple_deep_text_prompts_replace_the_context_slots(tiny_backbone, text_ds):
    one = ["glioma tumor"]
    shallow = make("maple", tiny_backbone, text_ds, classes=one, depth=1)
    deep = make("maple", tiny_backbone, text_ds, classes=one, depth=2)
    n, p = shallow.prompt_learner.n_ctx, tiny_backbone.text.num_prefix_tokens
    with torch.no_grad(), record_block_inputs(tiny_backbone.text.blocks, [1]) as seen:
        reference = shallow.text_features()
        deep.deep_text[0].copy_(seen[1][0, p : p + n])  # what the shallow model already has in those slots
        assert torch.allclose(deep.text_features(), reference, atol=1e-5)
        deep.deep_text[0].add_(torch.randn_like(deep.deep_text[0]))  # not a constant: the LayerNorms remove those
        assert not torch.allclose(deep.text_features(), reference, atol=1e-4)


def test_maple_deep_visual_prompts_replace_the_appended_tokens(tiny_backbone, text_ds):
    shallow = make("maple", tiny_backbone, text_ds, depth=1)
    deep = make("maple", tiny_backbone, text_ds, depth=2)
    n, x = shallow.prompt_learner.n_ctx, images(1)
    with torch.no_grad():
        shallow.proj.weight.zero_()
        shallow.proj.bias.normal_()
        deep.proj.load_state_dict(shallow.proj.state_dict())
        with record_block_inputs(tiny_backbone.visual.blocks, [1]) as seen:
            reference = shallow.image_features(x)
        slots = seen[1][0, -n:]  # identical inputs without positions stay identical through the blocks
        assert torch.allclose(slots, slots[:1].expand_as(slots), atol=1e-5)
        deep.deep_proj[0].weight.zero_()
        deep.deep_proj[0].bias.copy_(slots[0])
        assert torch.allclose(deep.image_features(x), reference, atol=1e-5)
        deep.deep_proj[0].bias.add_(torch.randn_like(slots[0]))
        assert not torch.allclose(deep.image_features(x), reference, atol=1e-4)
        prompts = deep.visual_prompts()
        assert torch.equal(prompts[0], deep.proj(deep.prompt_learner.ctx))
        assert torch.equal(prompts[1], deep.deep_proj[0](deep.deep_text[0]))


def test_biomed_dpt_text_side_equals_stock_and_quirk_permutes(tiny_backbone, text_ds):
    names = [TEMPLATE.format(c) for c in BTMRI_CLASSES]
    end = make("biomed_dpt", tiny_backbone, text_ds)
    with torch.no_grad():
        assert torch.allclose(end.text_features(), stock_text(tiny_backbone, names), atol=1e-5)
        quirk = make("biomed_dpt", tiny_backbone, text_ds, class_token_position="middle_quirk")
        text, n = tiny_backbone.text, quirk.prompt_learner.n_ctx
        p = text.num_prefix_tokens  # [CLS] / SOT; none for SigLIP
        ids = text.tokenize(names)
        emb = text.token_embed(ids)
        h = n // 2  # reference: [CLS, ctx[:h], first token after the context, ctx[h:], rest]
        moved = torch.cat([emb[:, : p + h], emb[:, p + n : p + 1 + n], emb[:, p + h : p + n], emb[:, p + 1 + n :]],
                          dim=1)
        assert torch.allclose(quirk.text_features(), text.encode_embeds(moved, ids), atol=1e-5)
        assert not torch.allclose(quirk.text_features(), end.text_features(), atol=1e-4)


@pytest.mark.parametrize("mode", ["overwrite", "insert"])
def test_biomed_dpt_zero_visual_prompts_in_every_layer(tiny_backbone, text_ds, mode):
    k = 2
    method = make("biomed_dpt", tiny_backbone, text_ds, visual_prompt=mode, visual_tokens=k)
    visual, x = tiny_backbone.visual, images(2)
    p = visual.num_prefix_tokens
    blocks = list(range(len(visual.blocks)))
    with torch.no_grad(), record_block_inputs(visual.blocks, blocks) as seen:
        stock_tokens = visual.embed(x)
        method.image_features(x)
    for i in blocks:
        h = seen[i]
        assert h.shape[1] == stock_tokens.shape[1] + (k if mode == "insert" else 0)
        assert torch.count_nonzero(h[:, p : p + k]) == 0, f"block {i}"
    first = seen[0]
    kept = stock_tokens[:, p:] if mode == "insert" else stock_tokens[:, p + k :]  # insert keeps all patches
    assert torch.allclose(first[:, p + k :], kept, atol=1e-6)
    assert torch.allclose(first[:, :p], stock_tokens[:, :p], atol=1e-6)


# -- loss terms on hand-computed examples -------------------------------------------------------------------


def test_teacher_kl_sums_and_divides_by_batch_times_classes():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    # KL([.75, .25] || [.5, .5]) = .75 ln 1.5 + .25 ln .5 = 0.130812; / (B·C = 2)
    assert teacher_kl(student, teacher).item() == pytest.approx(0.065406, abs=1e-6)
    assert teacher_kl(student.repeat(3, 1), teacher.repeat(3, 1)).item() == pytest.approx(0.065406, abs=1e-6)


def test_mad_tau_pruning_by_hand():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, MAD 1, z = [-2,-1,0,1,97]; re-standardised: [-.4815, -.4585, -.4356, -.4127, 1.7883]
    assert mad_keep_mask(scores, 1.5).tolist() == [True, True, True, True, False]
    assert mad_keep_mask(scores, 0.45).tolist() == [False, False, True, True, False]
    assert mad_keep_mask(torch.ones(5), 1.5).all()  # zero MAD: keep all instead of NaN


def test_prompt_scores_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.6, 0.8]]])  # (C=2, N=2, E=2)
    # i=0: max_c per image = [1, 1] -> 1; i=1: image0 max(0, .6) = .6, image1 max(1, .8) = 1 -> .8; times s=2
    assert prompt_scores(f, bank, 2.0).tolist() == pytest.approx([2.0, 1.6])


def test_l1_mean_and_kgcoop_score_by_hand():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert F.l1_loss(t, torch.tensor([[0.0, 0.0], [0.0, 0.5]])).item() == pytest.approx(0.375)
    anchors = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert one_minus_mean_cos(t, anchors).item() == pytest.approx(1 - (1 + 2**-0.5) / 2, abs=1e-6)


def test_prograd_pieces_by_hand():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    assert soft_cross_entropy(student, teacher, 1.0).item() == pytest.approx(math.log(2), abs=1e-6)
    assert soft_cross_entropy(student, teacher, 2.0).item() == pytest.approx(4 * math.log(2), abs=1e-5)
    g = torch.tensor([1.0, 0.0])
    assert project_conflicting(g, torch.tensor([-1.0, 1.0])).tolist() == pytest.approx([0.5, 0.5])
    assert project_conflicting(g, torch.tensor([1.0, 1.0])).tolist() == [1.0, 0.0]
    assert project_conflicting(g, torch.zeros(2)).tolist() == [1.0, 0.0]


def test_tpt_pieces_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # mean of [.5, .5] and [.75, .25] = [.625, .375]; H = 0.661563
    assert marginal_entropy(logits).item() == pytest.approx(0.661563, abs=1e-5)
    many = torch.tensor([[0.0, 0.0], [5.0, 0.0], [1.0, 0.0], [9.0, 0.0]])
    assert sorted(confident_indices(many, 0.5).tolist()) == [1, 3]
    assert confident_indices(many, 0.1).tolist() == [3]  # at least one view


def test_kgcoop_term_matches_its_definition(tiny_backbone, text_ds):
    method = make("kgcoop", tiny_backbone, text_ds)
    x, y = images(), torch.arange(4)
    with torch.no_grad():
        assert method.training_loss(x, y)["kg"].item() == pytest.approx(0.0, abs=1e-5)  # ctx = "a photo of a"
        method.prompt_learner.ctx.add_(torch.randn_like(method.prompt_learner.ctx))
        out = method.training_loss(x, y)
        anchors = stock_text(tiny_backbone, [f"a photo of a {c}." for c in BTMRI_CLASSES])
        expected = 1 - F.cosine_similarity(method.prompt_learner(), anchors, dim=-1).mean()
        assert out["kg"].item() == pytest.approx(expected.item(), abs=1e-5) and out["kg"] > 0
        assert out["loss"].item() == pytest.approx((out["ce"] + 8.0 * out["kg"]).item(), rel=1e-5)


def _description_means(backbone, classes):
    feats = [F.normalize(stock_text(backbone, [f"{c} {w}" for w in WORDS]), dim=-1) for c in classes]
    return torch.stack(feats), F.normalize(torch.stack([f.mean(0) for f in feats]), dim=-1)


def test_biomedcoop_terms_match_their_definitions(tiny_backbone, text_ds):
    method = make("biomedcoop", tiny_backbone, text_ds, sccm_lambda=0.5, kdsp_lambda=2.0, tau=1.0)
    x, y = images(8), torch.arange(8) % 4
    with torch.no_grad():
        method.prompt_learner.ctx.add_(0.3 * torch.randn_like(method.prompt_learner.ctx))
        out = method.training_loss(x, y)
        bank, mean = _description_means(tiny_backbone, BTMRI_CLASSES)
        t = F.normalize(method.prompt_learner(), dim=-1)
        assert out["sccm"].item() == pytest.approx(((t - mean) ** 2).mean().item(), rel=1e-4, abs=1e-8)
        f = F.normalize(tiny_backbone.encode_image(x), dim=-1)
        s = tiny_backbone.logit_scale.exp()
        scores = torch.stack([(s * f @ bank[:, i].t()).max(1).values.mean() for i in range(bank.shape[1])])
        keep = mad_keep_mask(scores, 1.0)
        teacher = s * f @ F.normalize(bank[:, keep].mean(1), dim=-1).t()
        student = s * f @ t.t()
        log_t, log_s = F.log_softmax(teacher, -1), F.log_softmax(student, -1)
        kl = (log_t.exp() * (log_t - log_s)).sum() / student.numel()
        assert out["kdsp"].item() == pytest.approx(kl.item(), rel=1e-4, abs=1e-8)
        assert out["loss"].item() == pytest.approx((out["ce"] + 0.5 * out["sccm"] + 2.0 * out["kdsp"]).item(), rel=1e-5)


def test_biomed_dpt_terms_match_their_definitions(tiny_backbone, text_ds):
    method = make("biomed_dpt", tiny_backbone, text_ds, l1_lambda=3.0, kl_lambda=0.5)
    x, y = images(), torch.arange(4)
    with torch.no_grad():
        method.prompt_learner.ctx.add_(0.3 * torch.randn_like(method.prompt_learner.ctx))
        out = method.training_loss(x, y)
        _, mean = _description_means(tiny_backbone, BTMRI_CLASSES)
        t = F.normalize(method.text_features(), dim=-1)
        assert out["l1"].item() == pytest.approx((t - mean).abs().mean().item(), rel=1e-5)
        f = F.normalize(method.image_features(x), dim=-1)  # the zero-prompted image features, for both
        s = tiny_backbone.logit_scale.exp()
        expected_kl = teacher_kl(s * f @ t.t(), s * f @ mean.t()).item()
        assert out["kl"].item() == pytest.approx(expected_kl, rel=1e-4, abs=1e-8)
        assert out["loss"].item() == pytest.approx((out["ce"] + 3.0 * out["l1"] + 0.5 * out["kl"]).item(), rel=1e-5)


def _prograd_case(backbone, ds, x, y, teacher_weights, **overrides):
    """Fresh ProGrad with the given teacher weights; returns (method, g_ce, g_kd) from plain autograd."""
    method = make("prograd", backbone, ds, **{"teacher": "zeroshot", **overrides})  # the projecting teacher
    method.teacher_weights = teacher_weights
    ctx = method.prompt_learner.ctx
    feats = method.backbone.encode_image(x)
    logits = method.logits(feats, method.prompt_learner())
    teacher = method.logits(feats, teacher_weights).detach()
    temperature = float(method.cfg.temperature)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(logits, y), ctx, retain_graph=True)
    (g_kd,) = torch.autograd.grad(soft_cross_entropy(logits, teacher, temperature), ctx)
    return method, g_ce, g_kd


def test_prograd_gradient_is_the_projected_ce_gradient(tiny_backbone, text_ds):
    x, y = images(8, seed=3), torch.arange(8) % 4
    base = make("prograd", tiny_backbone, text_ds).teacher_weights
    candidates = [base, -base, *(base.roll(k, dims=0) for k in (1, 2, 3)), *(-base.roll(k, dims=0) for k in (1, 2, 3))]
    cases = [_prograd_case(tiny_backbone, text_ds, x, y, w) for w in candidates]
    conflicting = [c for c in cases if (c[1] * c[2]).sum() < 0]
    agreeing = [c for c in cases if (c[1] * c[2]).sum() > 0]
    assert conflicting  # (the agreeing branch is also checked by hand in test_prograd_pieces_by_hand)
    for (method, g_ce, g_kd), conflict in [(conflicting[0], True), *((c, False) for c in agreeing[:1])]:
        unit = g_kd / g_kd.norm()
        expected = g_ce - (g_ce * unit).sum() * unit if conflict else g_ce
        out = method.training_loss(x, y)
        assert out["conflict"].item() == float(conflict)
        assert out["loss"].item() == pytest.approx(F.cross_entropy(out["logits"], y).item(), rel=1e-6)
        out["loss"].backward()
        grad = method.prompt_learner.ctx.grad
        assert torch.allclose(grad, expected, atol=1e-6, rtol=1e-4)
        if conflict:
            assert not torch.allclose(grad, g_ce, atol=1e-6, rtol=1e-4)
            assert (grad * g_kd).sum().abs() < 1e-4 * g_ce.norm() * g_kd.norm()  # conflicting part removed
            method.prompt_learner.ctx.grad = None
            (3.0 * method.training_loss(x, y)["loss"]).backward()  # upstream scaling (AMP, accumulation) applies
            assert torch.allclose(method.prompt_learner.ctx.grad, 3.0 * expected, atol=1e-6, rtol=1e-4)


def test_prograd_student_teacher_is_plain_ce(tiny_backbone, text_ds):
    method = make("prograd", tiny_backbone, text_ds, teacher="student")
    x, y = images(8, seed=3), torch.arange(8) % 4
    logits = method(x)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(logits, y), method.prompt_learner.ctx)
    out = method.training_loss(x, y)
    out["loss"].backward()
    assert out["conflict"].item() == 0.0
    assert torch.allclose(method.prompt_learner.ctx.grad, g_ce, atol=1e-6, rtol=1e-5)


# -- gradients, TPT, training --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TRAINABLE)
def test_gradients_reach_only_the_learned_parts(tiny_backbone, text_ds, name):
    method = make(name, tiny_backbone, text_ds)
    method.train()
    method.training_loss(images(), torch.arange(4))["loss"].backward()
    learned = dict(method.named_parameters())
    learned = {k: p for k, p in learned.items() if p.requires_grad}
    assert learned and all(p.grad is not None for p in learned.values()), name
    assert method.prompt_learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny_backbone.parameters())
    assert not any(m.training for m in tiny_backbone.modules())
    expected = {"cocoop": {"prompt_learner.ctx", "meta_net.0.weight", "meta_net.0.bias", "meta_net.2.weight",
                           "meta_net.2.bias"},
                "maple": {"prompt_learner.ctx", "proj.weight", "proj.bias", "deep_text", "deep_proj.0.weight",
                          "deep_proj.0.bias"}}.get(name, {"prompt_learner.ctx"})
    assert set(learned) == expected


def test_tpt_restores_prompt_and_optimizer_after_every_sample(tiny_backbone, text_ds):
    method = make("tpt", tiny_backbone, text_ds, n_views=6)
    initial = method.prompt_learner.ctx.detach().clone()
    with torch.no_grad():  # the method enables gradients itself, as the Lightning module does
        tuned = method(images(2))
    assert tuned.shape == (2, 4)
    assert torch.equal(method.prompt_learner.ctx.detach(), initial)
    assert len(method.optimizer.state) == 0 and method.prompt_learner.ctx.grad is None
    with torch.enable_grad():  # the one-image loop: reset, adapt (one AdamW step), reset
        method.reset()
        method.adapt_and_predict(images(1)[0])
        assert len(method.optimizer.state) == 1 and not torch.equal(method.prompt_learner.ctx.detach(), initial)
        method.reset()
    assert torch.equal(method.prompt_learner.ctx.detach(), initial) and len(method.optimizer.state) == 0
    with torch.no_grad():
        plain = method.logits(tiny_backbone.encode_image(images(2)), method.prompt_learner())
    assert not torch.allclose(tuned, plain, atol=1e-6)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        method(images(1))


def test_tpt_views_keep_the_original_first():
    image = torch.randn(3, 32, 32)
    views = augmented_views(image, 5, generator=torch.Generator().manual_seed(0))
    assert views.shape == (5, 3, 32, 32) and torch.equal(views[0], image)
    assert all(not torch.allclose(v, image) for v in views[1:])


@pytest.mark.parametrize("name", TRAINABLE)
def test_short_training_run_lowers_the_loss(tiny_backbone, text_ds, real_batch, name):
    torch.manual_seed(0)
    method = make(name, tiny_backbone, text_ds)
    method.train()
    x, y = real_batch[0][::2], real_batch[1][::2]
    opt = torch.optim.Adam(method.learnable_parameters(), lr=3e-3)  # gradient scales differ ~1e5 by family
    first = method.training_loss(x, y)["loss"].item()
    for _ in range(8):
        opt.zero_grad()
        method.training_loss(x, y)["loss"].backward()
        opt.step()
    with torch.no_grad():
        assert method.training_loss(x, y)["loss"].item() < first


@pytest.mark.parametrize("name", ALL)
def test_base_to_novel_switch(tiny_backbone, text_ds, name):
    method = make(name, tiny_backbone, text_ds)
    method.set_classnames(BTMRI_CLASSES[2:])
    assert method(images(2)).shape == (2, 2)


@pytest.mark.parametrize("name", ["biomedcoop", "biomed_dpt"])
def test_missing_descriptions_raise_a_clear_error(tiny_backbone, text_ds, name):
    ds = OmegaConf.merge(text_ds, {"name": "no_such_dataset", "descriptions": None})
    with pytest.raises(DescriptionsError, match="dataset.descriptions"):
        make(name, tiny_backbone, ds)


# -- configs ---------------------------------------------------------------------------------------------


def _method_node(method: str, dataset: str, protocol: str):
    if (REPO / "conf" / "dataset" / f"{dataset}.yaml").is_file():
        from promptbench.config import compose

        return compose([f"method={method}", "backbone=tiny_clip", f"dataset={dataset}", f"protocol={protocol}"]).method
    node = method_cfg(method)
    tuned = REPO / "conf" / "tuned" / protocol / method / f"{dataset}.yaml"
    return OmegaConf.merge(node, OmegaConf.load(tuned).get("method", {})) if tuned.is_file() else node


def test_configs_compose_with_paper_defaults():
    expect = {"cocoop": {"n_ctx": 4, "batch_size": 1, "epochs": 10}, "kgcoop": {"w": 2.0, "batch_size": 128},
              "prograd": {"temperature": 2.0, "lambda_": 1.0}, "biomedcoop": {"sccm_lambda": 0.5, "tau": 1.5},
              "maple": {"depth": 9, "learn_words": 2, "epochs": 5}, "tpt": {"n_views": 64, "selection_p": 0.1},
              "biomed_dpt": {"n_ctx": 5, "l1_lambda": 12.5, "visual_prompt": "overwrite",
                             "ctx_init": "a MR photo of a"}}
    for name, keys in expect.items():
        node = _method_node(name, "btmri", "few_shot")
        assert node.name == name
        assert {k: node[k] for k in keys} == keys, name


def test_tuned_settings_per_protocol_and_demo_datasets():
    assert _method_node("kgcoop", "btmri", "base_to_novel").w == 8.0
    assert _method_node("prograd", "dermamnist", "few_shot").temperature == 4.0
    assert _method_node("prograd", "btmri", "base_to_novel").optim.lr == 0.0015
    assert _method_node("biomedcoop", "kneexray", "few_shot").tau == 1.75
    dpt = _method_node("biomed_dpt", "covid", "base_to_novel")
    assert (dpt.n_ctx, dpt.l1_lambda, dpt.class_token_position, dpt.epochs) == (6, 18.75, "middle_quirk", 50)
    demos = ("btmri", "ctkidney", "kneexray")
    for method in ("kgcoop", "prograd", "biomedcoop", "biomed_dpt"):
        for protocol in ("few_shot", "base_to_novel"):
            for demo in demos:
                node = OmegaConf.load(REPO / "conf" / "tuned" / protocol / method / f"demo_{demo}.yaml")
                assert list(node.defaults) == [f"/tuned/{protocol}/{method}/{demo}", "_self_"]
    if not (REPO / "conf" / "dataset" / "demo_btmri.yaml").is_file():
        pytest.skip("conf/dataset/demo_*.yaml not present: composition of the demo settings not checked")
    for i, method in enumerate(("kgcoop", "prograd", "biomedcoop", "biomed_dpt")):
        for j, protocol in enumerate(("few_shot", "base_to_novel")):
            demo = demos[(i + j) % 3]
            assert _method_node(method, f"demo_{demo}", protocol) == _method_node(method, demo, protocol)


def test_maple_depth_beyond_the_towers_is_clamped_with_one_warning_per_process(tiny_backbone, text_ds, caplog,
                                                                               monkeypatch):
    from promptbench.methods import maple

    monkeypatch.setattr(maple, "_CLAMPED", set())
    with caplog.at_level("WARNING", logger="promptbench.methods.maple"):
        first, second = (make("maple", tiny_backbone, text_ds, depth=99) for _ in range(2))
    layers = min(len(tiny_backbone.text.blocks), len(tiny_backbone.visual.blocks))
    assert first.depth == second.depth == layers
    assert [r.getMessage() for r in caplog.records].count(
        f"maple.depth 99 exceeds the towers' {layers} layers; using depth {layers}") == 1
