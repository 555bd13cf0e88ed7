"""Contract suite over the registries: every registered method on every tiny backbone (``TINY_BACKBONES``: the
``conf/backbone/tiny_*.yaml`` configs, CNN image tower included, and the tiny transformers CLIP / SigLIP folders),
every backbone config and every dataset config. A new method is covered by adding its file (and config), a new tiny
backbone by adding its config or folder writer: nothing here lists methods or backbones.

Per method: it builds, prepares on a small support set, trains a few optimiser steps through its own
``configure_optimization`` (with the lifecycle hooks ``on_train_start``, ``on_train_epoch_end`` and
``on_train_end`` around them, as the Lightning module calls them), evaluates, sends gradients only to
``learnable_parameters()``, and leaves the shared backbone's weights, requires_grad flags, train/eval modes and
hooks (forward, pre-forward, backward, parametrizations) exactly as found. Methods declaring
``equals_zero_shot_at_init`` equal zero-shot CLIP with their own template (<= 1e-5) when freshly built.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from promptbench.backbones import build_backbone
from promptbench.config import compose
from promptbench.methods import (
    Method,
    build_method,
    check_method_config,
    get_method,
    load_all,
    register,
    unregister,
)
from tests.conftest import BTMRI_CLASSES, TINY_BACKBONES, Samples, tiny_backbone_cfg

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
#: optional speed-ups for the tiny backbones (never needed for correctness; a new method needs no entry)
FAST = {"maple": {"depth": 2}, "tpt": {"n_views": 4}, "biomed_dpt": {"visual_tokens": 2},
        "clap": {"multiplier_views": 2}}
TEMPLATE = "a mr photo of a {}."


def registered_methods() -> list[str]:
    return sorted(load_all())


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def dataset_node(tmp_path_factory):
    path = tmp_path_factory.mktemp("desc") / "descriptions.json"
    path.write_text(json.dumps({c: [f"{c} {w}" for w in ("dark", "bright", "round", "odd")] for c in BTMRI_CLASSES}))
    return OmegaConf.create({"name": "btmri", "modality": "MRI", "organ": "brain", "classnames": BTMRI_CLASSES,
                             "template": TEMPLATE, "templates": [TEMPLATE], "descriptions": str(path)})


@functools.cache
def _composed(name: str):
    return compose([f"method={name}", "~tuned"])  # the method's own defaults, no per-dataset settings


def method_cfg(name: str, **overrides):
    """``conf/method/<name>.yaml`` over ``_base.yaml``; a method without a config file gets ``_base`` + its name."""
    own = CONF / "method" / f"{name}.yaml"
    fidelity = {}
    if own.is_file():  # composed as a run would; interpolations resolved after the overrides below
        composed = _composed(name)
        node = OmegaConf.create(OmegaConf.to_container(composed.method, resolve=False))
        fidelity = OmegaConf.to_container(composed.fidelity, resolve=True)
    else:
        node = OmegaConf.load(CONF / "method" / "_base.yaml")
    node = OmegaConf.merge(node, {"name": name}, FAST.get(name, {}), overrides)
    node.pop("defaults", None)
    wrapper = OmegaConf.create({"method": node, "fidelity": fidelity})
    OmegaConf.resolve(wrapper)  # ${method.*} interpolations, as in a composed config
    return wrapper.method


class SupportSet:
    """Two shots per class (train) and one (val) of random 32 px images."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        n = len(BTMRI_CLASSES)
        self.images = torch.randn(3 * n, 3, 32, 32, generator=g)
        self.labels = torch.arange(n).repeat(3)
        self.classnames = BTMRI_CLASSES

    def train_dataloader(self):
        k = 2 * len(BTMRI_CLASSES)
        return DataLoader(Samples(self.images[:k], self.labels[:k]), batch_size=4, shuffle=False)

    def val_dataloader(self):
        k = 2 * len(BTMRI_CLASSES)
        return DataLoader(Samples(self.images[k:], self.labels[k:], 1000), batch_size=4)


# -- backbone state --------------------------------------------------------------------------------------------------


def backbone_state(backbone: nn.Module) -> dict:
    return {
        "weights": {k: v.detach().clone() for k, v in backbone.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in backbone.named_parameters()},
        "modes": {k: m.training for k, m in backbone.named_modules()},
        "hooks": {k: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                      len(getattr(m, "_backward_pre_hooks", {})), hasattr(m, "parametrizations"))
                  for k, m in backbone.named_modules()},
        "types": {k: type(m) for k, m in backbone.named_modules()},
        "grads": [k for k, p in backbone.named_parameters() if p.grad is not None],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["types"] == before["types"], "the method replaced or added backbone modules"
    assert after["hooks"] == before["hooks"], "hooks/parametrizations left on the backbone"
    assert after["modes"] == before["modes"], "backbone train/eval modes changed"
    assert after["requires_grad"] == before["requires_grad"], "backbone requires_grad flags changed"
    assert not after["grads"], f"gradients reached the backbone: {after['grads'][:3]}"
    assert before["weights"].keys() == after["weights"].keys()
    changed = [k for k in before["weights"] if not torch.equal(before["weights"][k], after["weights"][k])]
    assert not changed, f"backbone weights changed: {changed[:3]}"


# -- the method contract ---------------------------------------------------------------------------------------------


@contextmanager
def grad_mode_for(method: Method) -> Iterator[None]:
    with torch.enable_grad() if method.needs_grad_at_test else torch.no_grad():
        yield


def zero_shot_logits(backbone, images, template=TEMPLATE) -> torch.Tensor:
    with torch.no_grad():
        img = F.normalize(backbone.encode_image(images), dim=-1)
        txt = F.normalize(backbone.text.encode(backbone.text.tokenize([template.format(c) for c in BTMRI_CLASSES])),
                          dim=-1)
        return backbone.logit_scale.exp() * img @ txt.t()


def check_method_contract(name: str, backbone, dataset, cfg=None, steps: int = 2) -> Method:
    cfg = cfg if cfg is not None else method_cfg(name)
    support = SupportSet()
    images, labels = support.images[:8], support.labels[:8]
    before = backbone_state(backbone)
    torch.manual_seed(0)
    method = build_method(cfg, backbone, BTMRI_CLASSES, dataset)
    assert isinstance(method.config, type(method).config_class)
    check_method_config(cfg)  # its config passes the strict check every run makes (declared keys, types)
    if method.equals_zero_shot_at_init:
        method.eval()
        with grad_mode_for(method):
            got = method(images)
        template = method.templates()[0]  # the method's own template (fidelity may set one), else the dataset's
        torch.testing.assert_close(got, zero_shot_logits(backbone, images, template), atol=1e-5, rtol=0,
                                   msg=f"{name}: freshly built, not zero-shot CLIP")
    method.prepare(support)
    learnable = {id(p) for p in method.learnable_parameters()}
    if method.trains and learnable:
        budget = method.training_budget(steps_per_epoch=2, shots=2)
        assert budget.epochs > 0 or (budget.steps or 0) > 0, f"{name}: trains but has an empty budget"
        plan = method.configure_optimization(cfg.optim, max_epochs=2, total_steps=steps)
        optimizer, sched = plan["optimizer"], plan.get("lr_scheduler", {})
        sched = sched.get("scheduler") if isinstance(sched, dict) else sched
        method.train()
        assert not backbone.training and not any(m.training for m in backbone.modules())
        method.on_train_start()  # the lifecycle hooks, where the Lightning module calls them
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            out = method.training_loss(images, labels)
            assert out["logits"].shape == (8, len(BTMRI_CLASSES)) and torch.isfinite(out["loss"])
            out["loss"].backward()
            stray = [n for n, p in method.named_parameters() if p.grad is not None and id(p) not in learnable]
            assert not stray, f"{name}: gradients outside the declared parameters: {stray[:3]}"
            if step == 0:
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.learnable_parameters()), \
                    f"{name}: no gradient reached its learnable parameters"
            optimizer.step()
            if sched is not None:
                sched.step()
            method.on_train_epoch_end(step)  # one step per "epoch" here: a hook after every update
            stray = [n for n, p in method.named_parameters() if p.grad is not None and id(p) not in learnable]
            assert not stray, f"{name}: on_train_epoch_end left gradients outside the declared parameters"
        method.on_train_end()
    method.eval()
    with grad_mode_for(method):
        logits = method(images)
    assert logits.shape == (8, len(BTMRI_CLASSES)) and torch.isfinite(logits).all()
    method.set_classnames(BTMRI_CLASSES[:2])
    with grad_mode_for(method):
        assert method(images).shape == (8, 2)
    assert_same_state(before, backbone_state(backbone))
    return method


@pytest.fixture(scope="module", params=TINY_BACKBONES)
def matrix_backbone(request):
    """Every tiny backbone (conf/backbone/tiny_*.yaml, the tiny transformers CLIP / SigLIP folders), CNN towers
    included."""
    torch.manual_seed(0)
    return build_backbone(tiny_backbone_cfg(request.param))


@pytest.mark.parametrize("name", registered_methods())
def test_method_contract(matrix_backbone, dataset_node, name):
    """Every method on every tiny backbone. Methods declaring needs_image_tokens refuse an image tower without
    tokens (CNN: PMC-CLIP-shaped) in one line naming method, backbone and tower; everything else passes the
    contract."""
    backbone = matrix_backbone
    if get_method(name).needs_image_tokens and not backbone.visual.has_tokens:
        with pytest.raises(ValueError) as err:
            build_method(method_cfg(name), backbone, BTMRI_CLASSES, dataset_node)
        message = str(err.value)
        assert "\n" not in message and f"'{backbone.info.name}'" in message and f"'{name}'" in message
        assert type(backbone.visual).__name__ in message and "image-tower tokens" in message
    else:
        check_method_contract(name, backbone, dataset_node)


def test_the_matrix_covers_every_tower_family():
    """The matrix is read from conf/backbone/tiny_*.yaml and tests/tiny_transformers.py, not kept by hand."""
    assert {"tiny_clip", "tiny_biomedclip", "tiny_pmc_clip", "tiny_hf_clip", "tiny_hf_siglip"} <= set(TINY_BACKBONES)


# -- a new method is one file: a toy registered here is picked up and checked ----------------------------------------


class _ToyBias(Method):
    """Zero-shot CLIP plus a learned per-class bias (zero at init)."""

    equals_zero_shot_at_init = True

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        self.bias = nn.Parameter(torch.zeros(len(classnames)))

    def forward(self, images):
        text = self.class_text_features(self.templates())
        with torch.no_grad():
            image = self.backbone.encode_image(images)
        return self.logits(image, text) + self.bias[: len(self.classnames)]


class _ToyLeaky(_ToyBias):
    """Breaks the contract: leaves a forward hook on the backbone."""

    def __init__(self, backbone, classnames, cfg, dataset):
        super().__init__(backbone, classnames, cfg, dataset)
        backbone.visual.module.register_forward_hook(lambda *a: None)


@contextmanager
def temporarily_registered(name: str, cls) -> Iterator[None]:
    register(name)(cls)
    try:
        yield
    finally:
        unregister(name)


def test_a_new_method_file_is_picked_up_and_checked(tiny_backbone, dataset_node):
    with temporarily_registered("toy_bias", _ToyBias):
        assert "toy_bias" in registered_methods()          # what the parametrization above is built from
        method = check_method_contract("toy_bias", tiny_backbone, dataset_node)
        assert method.num_trainable() == len(BTMRI_CLASSES)
    assert "toy_bias" not in registered_methods()


def test_the_contract_catches_a_leftover_hook(tiny_backbone, dataset_node):
    module = tiny_backbone.visual.module
    hooks = dict(module._forward_hooks)
    try:
        with temporarily_registered("toy_leaky", _ToyLeaky), pytest.raises(AssertionError, match="hooks"):
            check_method_contract("toy_leaky", tiny_backbone, dataset_node)
    finally:
        for handle_id in set(module._forward_hooks) - set(hooks):
            del module._forward_hooks[handle_id]


def preset_methods_of(experiment: str) -> list[str]:
    from promptbench.sweep import grid as sweep_grid

    cells = sweep_grid.grid([f"experiment={experiment}", "dataset=btmri", "shots=1", "seed=1"])
    return [o.split("=", 1)[1] for cell in cells for o in cell if o.startswith("method=")]


def test_presets_follow_the_registry():
    """Few-shot: every registered method; demo: all but those declaring demo_excluded; listed ones keep their order.
    A method registered now (a new file) joins both without editing them."""
    methods = load_all()
    few, demo = preset_methods_of("few_shot"), preset_methods_of("demo")
    assert sorted(few) == sorted(methods) and few[:2] == ["zeroshot", "clip_adapter"]
    assert sorted(demo) == sorted(n for n, cls in methods.items() if not cls.demo_excluded)
    assert "clip_lora" in few and "clip_lora" not in demo
    with temporarily_registered("toy_bias", _ToyBias):
        assert preset_methods_of("few_shot")[-1] == "toy_bias" and "toy_bias" in preset_methods_of("demo")


# -- backbones and datasets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "backbone").glob("*.yaml")))
def test_backbone_config_composes_and_names_itself(name):
    cfg = compose([f"backbone={name}"])
    assert cfg.backbone.name == name
    assert str(cfg.backbone.source)


DATASET_REQUIRED = ("name", "format", "root", "folder", "classnames", "template")


DATASET_CONFIGS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_dataset_config_composes_and_names_itself(name):
    """Only what every dataset needs: the required keys, its own name, a template with one slot."""
    cfg = compose([f"dataset={name}"]).dataset
    missing = [k for k in DATASET_REQUIRED if cfg.get(k) in (None, "", [])]
    assert not missing, f"conf/dataset/{name}.yaml lacks {missing}"
    assert cfg.name == name
    assert cfg.template.count("{}") == 1
    assert len(set(cfg.classnames)) == len(cfg.classnames)
