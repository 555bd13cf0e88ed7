"""Frozen-feature store: cached = uncached on both tower families, keys that rebuild entries, concurrent fills."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from promptbench.backbones import build_backbone
from promptbench.config import compose
from promptbench.data import PromptDataModule
from promptbench.engine.run import run
from promptbench.features import FeatureDataModule, FeatureStore, memory_cache
from promptbench.features.keys import tower_hash
from promptbench.methods import build_method, load_all

from .conftest import DEMO, REPO, TOWER_FAMILIES, backbone_overrides, tiny_backbone_cfg

pytestmark = pytest.mark.skipif(not (DEMO / "BTMRI" / "split_BTMRI.json").is_file(), reason="no demo BTMRI images")


def _dataset_cfg(root: Path | None = None):
    cfg = compose(["dataset=demo_btmri"]).dataset
    if root is not None:
        cfg = OmegaConf.merge(cfg, {"root": str(root)})
    return cfg


def _datamodule(backbone, dataset_cfg=None, *, scale=(0.08, 1.0), shots=2, batch_size=4) -> PromptDataModule:
    pp = backbone.preprocessing
    dm = PromptDataModule(dataset_cfg or _dataset_cfg(), protocol="few_shot", shots=shots, seed=1,
                          batch_size=batch_size, eval_batch_size=32, image_size=pp.image_size, mean=pp.mean,
                          std=pp.std, interpolation=pp.interpolation, train_scale=scale)
    dm.setup("fit")
    return dm


def _features(backbone, store, dm=None, **kw) -> FeatureDataModule:
    return FeatureDataModule(dm or _datamodule(backbone), backbone, store, epochs=2, batch_size=64, **kw)


@pytest.fixture(autouse=True)
def _fresh_memory():
    memory_cache.clear()
    yield
    memory_cache.clear()


# -- features equal the image path's -------------------------------------------------------------------------


@torch.no_grad()
def test_feature_batches_equal_image_batches(tiny_backbone, tmp_path):
    """Same items, order, labels and drop_last as the image loaders; features within 1e-5 (fp32)."""
    images = _datamodule(tiny_backbone)
    feats = _features(tiny_backbone, FeatureStore(tmp_path))
    for epoch in (0, 1):
        images.set_epoch(epoch)
        feats.set_epoch(epoch)
        a_batches, b_batches = list(images.train_dataloader()), list(feats.train_dataloader())
        assert len(a_batches) == len(b_batches) == len(feats.train_dataloader()) > 1
        for a, b in zip(a_batches, b_batches):
            assert torch.equal(a["label"], b["label"]) and torch.equal(a["index"], b["index"])
            torch.testing.assert_close(b["image"], tiny_backbone.encode_image(a["image"]), atol=1e-5, rtol=0)
    for a_loader, b_loader in zip(images.test_dataloader(), feats.test_dataloader()):
        a_all = [(tiny_backbone.encode_image(a["image"]), a["label"]) for a in a_loader]
        b_all = list(b_loader)
        assert len(a_all) == len(b_all) == len(b_loader)
        for (fa, la), b in zip(a_all, b_all):
            assert torch.equal(la, b["label"])
            torch.testing.assert_close(b["image"], fa, atol=1e-5, rtol=0)


FEATURE_METHODS = sorted(n for n, cls in load_all().items() if not cls.needs_image_tower)
TOWER_METHODS = sorted(n for n, cls in load_all().items() if cls.needs_image_tower)


def test_methods_declare_tower_needs():
    """The issue's split: visual prompts and test-time views need the tower; the rest use frozen features."""
    assert set(TOWER_METHODS) >= {"vpt_shallow", "vpt_deep", "medical_vpt", "maple", "biomed_dpt", "tpt"}
    assert set(FEATURE_METHODS) >= {"zeroshot", "coop", "cocoop", "kgcoop", "prograd", "biomedcoop", "linear_probe",
                                    "lp_plus_plus", "clip_adapter", "tip_adapter", "tip_adapter_f"}


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_feature_methods_accept_features(tiny_backbone, real_batch, name):
    """forward / training_loss on features (B, E) equal those on the images, on both tower families."""
    images, labels = real_batch
    method_cfg = compose([f"method={name}"]).method
    torch.manual_seed(0)
    method = build_method(method_cfg, tiny_backbone, ["glioma tumor", "meningioma tumor", "pituitary tumor",
                                                      "normal brain"], _dataset_cfg())
    method.eval()
    with torch.no_grad():
        feats = tiny_backbone.encode_image(images)
        torch.testing.assert_close(method(feats), method(images), atol=1e-5, rtol=1e-5)
    if method.trains:
        method.train()
        a, b = method.training_loss(images, labels), method.training_loss(feats, labels)
        torch.testing.assert_close(a["loss"], b["loss"], atol=1e-5, rtol=1e-5)


# -- cached and uncached runs give the same metrics ----------------------------------------------------------


def _run_cell(tmp_path: Path, backbone: str, method: str, enabled: bool, *extra: str) -> dict:
    cfg = compose([*backbone_overrides(backbone), f"method={method}", "dataset=demo_btmri", "shots=2", "seed=1",
                   "method.epochs=2", "method.batch_size=4", "logger=none", "trainer.enable_progress_bar=false",
                   f"paths.output_dir={tmp_path / ('cached' if enabled else 'plain')}", f"features.enabled={enabled}",
                   *extra])
    return run(cfg)


def _assert_same_metrics(a: dict, b: dict) -> None:
    assert a["status"] == b["status"] == "ok"
    assert set(a["metrics"]) == set(b["metrics"]) and "test/acc" in a["metrics"]
    for key, value in a["metrics"].items():
        assert abs(value - b["metrics"][key]) <= 1e-5, (key, value, b["metrics"][key])


@pytest.mark.parametrize("backbone", TOWER_FAMILIES)
def test_cached_run_equals_uncached_run(tmp_path, backbone):
    plain = _run_cell(tmp_path, backbone, "coop", False)
    cached = _run_cell(tmp_path, backbone, "coop", True)
    _assert_same_metrics(plain, cached)
    assert "train/loss" in plain["metrics"]  # the comparison covers the training trajectory
    assert plain["feature_cache"] is None and cached["feature_cache"]["computed"] >= 2  # epochs 0, 1 + test + val
    again = _run_cell(tmp_path, backbone, "coop", True)  # a second cell: everything from the store
    _assert_same_metrics(plain, again)
    assert again["feature_cache"]["computed"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tip_adapter_f", "linear_probe", "cocoop"])
def test_cached_run_equals_uncached_run_prepare_methods(tmp_path, method):
    """Methods whose ``prepare`` reads the loaders (cache model, L-BFGS fit) and CoCoOp's per-image prompts."""
    _assert_same_metrics(_run_cell(tmp_path, "tiny_clip", method, False),
                         _run_cell(tmp_path, "tiny_clip", method, True))


# -- keys: a changed backbone, image or transform rebuilds the entry -----------------------------------------


@torch.no_grad()
def test_entry_rebuilt_when_backbone_image_or_transform_changes(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone(tiny_backbone_cfg("tiny_clip"))
    root = tmp_path / "data"
    shutil.copytree(DEMO / "BTMRI", root / "BTMRI")
    dataset_cfg = _dataset_cfg(root)
    store = FeatureStore(tmp_path / "cache")

    def test_features(scale=(0.08, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
        fdm = _features(backbone, store, _datamodule(backbone, dataset_cfg, scale=scale))
        return fdm.eval_features(fdm.inner.state.test_sets["test"]), fdm.train_features(0)

    first_test, first_train = test_features()
    assert store.hits["computed"] == 3  # test set + training views of epochs 0 and 1
    memory_cache.clear()
    again_test, _ = test_features()
    assert store.hits["computed"] == 3 and store.hits["disk"] >= 1 and torch.equal(first_test, again_test)

    param = next(backbone.visual.module.parameters())  # backbone: an edited weight is a new key
    old_hash, original = tower_hash(backbone), param.detach().clone()
    param.add_(0.5)
    try:
        assert tower_hash(backbone) != old_hash
        changed, _ = test_features()
        assert store.hits["computed"] == 6 and not torch.allclose(changed, first_test)
    finally:
        param.copy_(original)
    assert tower_hash(backbone) == old_hash

    from PIL import Image  # image: rewrite one test image with other pixels

    test_key = _datamodule(backbone, dataset_cfg).state.test_sets["test"].records[0].key
    path = root / "BTMRI" / "BTMRI" / test_key
    with Image.open(path) as img:
        Image.fromarray(255 - np.asarray(img.convert("RGB"))).save(path)
    edited, train = test_features()
    assert store.hits["computed"] == 7  # only the test entry: the training images did not change
    assert not torch.allclose(edited[0], first_test[0]) and torch.equal(edited[1:], first_test[1:])
    assert torch.equal(train, first_train)

    _, other_train = test_features(scale=(0.5, 1.0))  # transform: other crop scales are other views
    assert store.hits["computed"] == 9 and not torch.allclose(other_train, first_train)


def test_views_per_image_reuses_a_fixed_pool(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone(tiny_backbone_cfg("tiny_clip"))
    fdm = FeatureDataModule(_datamodule(backbone), backbone, FeatureStore(tmp_path), epochs=5, views_per_image=2)
    assert [fdm.view_epoch(e) for e in range(5)] == [0, 1, 0, 1, 0]
    assert torch.equal(fdm.train_features(4), fdm.train_features(0))
    assert not torch.equal(fdm.train_features(1), fdm.train_features(0))
    assert fdm.store.hits["computed"] == 2
    with pytest.raises(ValueError, match="views_per_image"):
        FeatureDataModule(fdm.inner, backbone, FeatureStore(tmp_path), views_per_image=-1)


# -- concurrency: two processes fill one store ---------------------------------------------------------------

FILL = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {repo!r})
    from tests.test_features import _features, tiny_backbone_cfg
    from promptbench.backbones import build_backbone
    from promptbench.features import FeatureStore
    torch.manual_seed(0)
    backbone = build_backbone(tiny_backbone_cfg("tiny_clip"))
    fdm = _features(backbone, FeatureStore(sys.argv[1]))
    out = [fdm.eval_features(ds) for ds in fdm.inner.state.test_sets.values()]
    out += [fdm.train_features(e) for e in (0, 1)]
    torch.save(out, sys.argv[2])
""")


def test_two_processes_fill_one_store(tmp_path):
    script = tmp_path / "fill.py"
    script.write_text(FILL.format(repo=str(REPO)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(tmp_path / f"{i}.pt")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    a, b = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    store = FeatureStore(tmp_path / "cache")
    entries = store.entries()
    assert len(entries) == 3  # test set, epochs 0 and 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    for entry in entries:
        array = np.load(entry["path"], mmap_mode="r")
        assert list(array.shape) == entry["shape"] and np.isfinite(array).all()
    memory_cache.clear()
    torch.manual_seed(0)
    backbone = build_backbone(tiny_backbone_cfg("tiny_clip"))
    fdm = _features(backbone, store)
    assert torch.equal(fdm.train_features(1), a[-1]) and store.hits["computed"] == 0


def test_cache_cli_lists_and_clears(tmp_path, capsys):
    from promptbench.cli import main

    torch.manual_seed(0)
    backbone = build_backbone(tiny_backbone_cfg("tiny_clip"))
    _features(backbone, FeatureStore(tmp_path / "features")).train_features(0)
    env = os.environ.get("PROMPTBENCH_CACHE")
    os.environ["PROMPTBENCH_CACHE"] = str(tmp_path)
    try:
        assert main(["cache", "list"]) == 0
        out = capsys.readouterr().out
        assert "2 entries" in out and "demo_btmri" in out and "train_view" in out
        assert main(["cache", "clear"]) == 0
        assert "removed 2" in capsys.readouterr().out
        assert FeatureStore(tmp_path / "features").entries() == []
        assert main(["cache", "bogus"]) == 2
    finally:
        if env is None:
            os.environ.pop("PROMPTBENCH_CACHE")
        else:
            os.environ["PROMPTBENCH_CACHE"] = env


# -- methods with the tower in the loop ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", [{}, {"tta_steps": 2}, {"tta_optimizer": "sgd", "tta_lr": 0.5}])
def test_tpt_batched_adaptation_equals_the_one_image_loop(tiny_backbone, real_batch, variant):
    """TPT adapts a whole batch at once (per-image contexts in one tensor, one optimizer): the same logits as
    resetting and adapting one image at a time, for several steps and for SGD too."""
    images = real_batch[0][:3]
    cfg = OmegaConf.merge(compose(["method=tpt"]).method, {"n_views": 4, "view_seed": 7, **variant})
    method = build_method(cfg, tiny_backbone, ["glioma tumor", "meningioma tumor", "pituitary tumor",
                                               "normal brain"], _dataset_cfg())
    batched = method(images)
    method.generator.manual_seed(7)
    with torch.enable_grad():
        one_by_one = []
        for image in images:
            method.reset()
            one_by_one.append(method.adapt_and_predict(image))
    method.reset()
    plain = method.logits(tiny_backbone.encode_image(images), method.prompt_learner()).detach()
    assert not torch.allclose(batched, plain, atol=1e-6)  # adaptation changed the predictions
    assert torch.equal(batched, torch.stack(one_by_one))  # bitwise: conformal sets flip on rounding noise


def test_training_images_decoded_once(monkeypatch):
    """Later epochs reuse the decoded training images (same view tensors, no second decode)."""
    torch.manual_seed(0)
    backbone = build_backbone(tiny_backbone_cfg("tiny_clip"))
    dm = _datamodule(backbone)
    train = dm.state.train_set
    calls = []
    original = train.splits.load_image
    monkeypatch.setattr(train.splits, "load_image", lambda key: calls.append(key) or original(key))
    first = [train[(i, 0)]["image"] for i in range(len(train))]
    second = [train[(i, 1)]["image"] for i in range(len(train))]
    assert len(calls) == len(train)
    fresh = PromptDataModule(_dataset_cfg(), protocol="few_shot", shots=2, seed=1, batch_size=4,
                             image_size=backbone.preprocessing.image_size, mean=backbone.preprocessing.mean,
                             std=backbone.preprocessing.std)
    fresh.state.train_set.keep_decoded_bytes = 0  # the plain path: decode every time
    assert all(torch.equal(a, fresh.state.train_set[(i, 1)]["image"]) for i, a in enumerate(second))
    assert not torch.equal(first[0], second[0])
