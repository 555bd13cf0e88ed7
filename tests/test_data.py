"""Data layer: readers, few-shot sampling, transforms, DataModule, dataset configs and descriptions.

Core tests use the vendored demo data in ``data/demo`` (always present); tests needing the shared
development data (``../shared/datasets``) skip when it is absent.
"""

from __future__ import annotations

import filecmp
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptbench.data import (
    DatasetSplits,
    Record,
    base_novel,
    build_eval_transform,
    build_train_transform,
    few_shot_manifest,
    load_descriptions,
    manifest_hash,
    read_dataset,
    sample_few_shot,
    val_shots,
    write_manifest,
)
from promptbench.data import readers as readers_mod

REPO = Path(__file__).resolve().parents[1]
DEMO_ROOT = REPO / "data" / "demo"
SHARED = REPO.parent / "shared" / "datasets"
CONF_DIR = REPO / "conf" / "dataset"
DESCRIPTIONS = REPO / "promptbench" / "resources" / "descriptions"
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
MODALITIES = {"X-ray", "CT", "MRI", "Ultrasound", "Histopathology", "Dermatoscopy", "Endoscopy", "OCT", "Fundus"}
REQUIRED_KEYS = {
    "name", "display_name", "format", "root", "folder", "modality", "organ", "classnames", "template",
    "templates", "descriptions", "source", "license", "split_sizes",
}  # fmt: skip
BENCHMARK = ["btmri", "busi", "chmnist", "covid", "ctkidney", "dermamnist", "kneexray", "kvasir", "lungcolon",
             "octmnist", "retina"]  # fmt: skip
DEMOS = ["demo_btmri", "demo_ctkidney", "demo_kneexray"]
ALL_CONFIGS = sorted(p.stem for p in CONF_DIR.glob("*.yaml") if not p.stem.startswith("_"))
#: the datasets this package ships (curated keys, packaged descriptions). A user's own dataset config needs only
#: the keys tests/test_contract.py checks, and no packaged descriptions.
PACKAGED = sorted({*BENCHMARK, *DEMOS, "pneumoniamnist", "demo_pneumoniamnist"})
needs_shared = pytest.mark.skipif(
    not (SHARED / "BTMRI" / "split_BTMRI.json").is_file(),
    reason=f"shared development data not found at {SHARED} (only the vendored demo data is available)",
)


@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    """Every conf/dataset/*.yaml composed by Hydra (defaults resolved) with a stub paths config."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    out = {}
    overrides = [f"+paths.data_root={SHARED}", f"+paths.demo_root={DEMO_ROOT}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for name in ALL_CONFIGS:
            cfg = compose(overrides=[f"+dataset={name}", *overrides])
            out[name] = OmegaConf.to_container(cfg.dataset, resolve=True)
    return out


@pytest.fixture(scope="module")
def btmri(configs) -> DatasetSplits:
    return read_dataset(configs["demo_btmri"])


def per_class(records) -> dict[int, int]:
    return dict(sorted(Counter(r.label for r in records).items()))


# ----------------------------------------------------------------------------------------- configs


def test_dataset_configs_cover_the_benchmark():
    expected = set(BENCHMARK) | {"pneumoniamnist", "demo_pneumoniamnist"} | set(DEMOS)
    assert expected <= set(ALL_CONFIGS)


@pytest.mark.parametrize("name", PACKAGED)
def test_dataset_config_keys_and_descriptions(configs, name):
    cfg = configs[name]
    assert REQUIRED_KEYS <= set(cfg), REQUIRED_KEYS - set(cfg)
    assert cfg["name"] == name
    assert cfg["format"] in {"biomedcoop", "image_folder", "medmnist"}
    assert cfg["modality"] in MODALITIES
    assert cfg["root"] == str(DEMO_ROOT if name.startswith("demo_") else SHARED)
    assert cfg["template"].count("{}") == 1
    assert len(cfg["templates"]) >= 3 and all(t.count("{}") == 1 for t in cfg["templates"])
    assert cfg["descriptions"] is None
    assert set(cfg["split_sizes"]) == {"train", "val", "test"}
    assert len(cfg["classnames"]) == len(set(cfg["classnames"])) >= 2
    # packaged descriptions: >= 10 distinct sentences for every class, no extra classes
    data = json.loads((DESCRIPTIONS / f"{name}.json").read_text())
    assert list(data) == cfg["classnames"]
    for cls, sentences in data.items():
        assert len(set(sentences)) == len(sentences) >= 10, cls
        assert all(isinstance(s, str) and len(s.split()) >= 5 for s in sentences), cls
    assert load_descriptions(cfg, min_per_class=10) == data


@pytest.mark.parametrize("name", ["demo_btmri", "demo_ctkidney", "demo_kneexray", "demo_pneumoniamnist"])
def test_demo_config_matches_its_full_dataset(configs, name):
    full, demo = configs[name.removeprefix("demo_")], configs[name]
    for key in ("format", "folder", "modality", "organ", "classnames", "templates"):
        assert demo[key] == full[key], key
    assert "{}" in demo["template"]  # demo templates are the demo backbone's own (see conf/dataset/demo_*.yaml)
    assert (DESCRIPTIONS / f"{name}.json").read_bytes() == (DESCRIPTIONS / f"{full['name']}.json").read_bytes()


def test_btmri_config_follows_reference_label_order(configs):
    # label order from BiomedCoOp split_BTMRI.json, not alphabetical (base/novel depends on it)
    assert configs["btmri"]["classnames"] == ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]
    assert configs["btmri"]["template"] == "a MR photo of a {} in the brain."


def test_custom_descriptions_path(configs, tmp_path):
    cfg = dict(configs["demo_btmri"])
    own = {c: [f"my sentence {i} about {c}" for i in range(3)] for c in cfg["classnames"]}
    (tmp_path / "own.json").write_text(json.dumps(own))
    cfg["descriptions"] = str(tmp_path / "own.json")
    assert load_descriptions(cfg) == own
    with pytest.raises(ValueError, match="at least 10"):
        load_descriptions(cfg, min_per_class=10)


# ----------------------------------------------------------------------------------------- readers


@pytest.mark.parametrize("name", DEMOS)
def test_read_demo_dataset_counts_and_classnames(configs, name):
    cfg = configs[name]
    splits = read_dataset(cfg)
    sizes = {s: len(splits.split(s)) for s in ("train", "val", "test")}
    assert sizes == cfg["split_sizes"]
    assert splits.classnames == cfg["classnames"]
    assert splits.image_root == DEMO_ROOT / cfg["folder"] / cfg["folder"]
    assert re.fullmatch(r"[0-9a-f]{16}", splits.split_hash)
    assert set(per_class(splits.test)) == set(range(len(cfg["classnames"])))
    img = splits.load_image(splits.test[0].key)
    assert img.mode == "RGB" and min(img.size) == 112


def test_split_labels_come_from_the_split_file(btmri):
    raw = json.loads((DEMO_ROOT / "BTMRI" / "split_BTMRI.json").read_text())
    assert [[r.key, r.label] for r in btmri.train] == [[e[0], e[1]] for e in raw["train"]]
    assert per_class(btmri.train) == {0: 100, 1: 97, 2: 99, 3: 58}


def test_classname_mismatch_raises(configs):
    cfg = dict(configs["demo_btmri"])
    cfg["classnames"] = sorted(cfg["classnames"])  # alphabetical order is wrong for BiomedCoOp data
    with pytest.raises(ValueError, match="do not match dataset.classnames"):
        read_dataset(cfg)


def test_missing_root_gives_one_actionable_line(configs, tmp_path):
    cfg = dict(configs["demo_btmri"], root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        read_dataset(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "nowhere" / "BTMRI" / "split_BTMRI.json") in msg
    assert "paths.data_root=" in msg and "dataset.root=" in msg
    assert "BTMRI/<class>/<image>" in msg


def test_missing_medmnist_file_names_path_and_setting(configs, tmp_path):
    cfg = dict(configs["demo_pneumoniamnist"], root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pneumoniamnist\.npz.*paths\.data_root="):
        read_dataset(cfg)


def test_missing_image_folder_is_reported(configs, tmp_path):
    (tmp_path / "BTMRI").mkdir()
    (tmp_path / "BTMRI" / "split_BTMRI.json").write_bytes((DEMO_ROOT / "BTMRI" / "split_BTMRI.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        read_dataset(dict(configs["demo_btmri"], root=str(tmp_path)))


def test_medmnist_reader_yields_rgb_images(configs):
    splits = read_dataset(configs["demo_pneumoniamnist"])
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2428, 270, 468)
    assert splits.classnames == ["normal", "pneumonia"] and splits.image_root is None
    assert splits.train[5].key == "train/5"
    raw = np.load(DEMO_ROOT / "pneumoniamnist.npz")
    assert [r.label for r in splits.test] == raw["test_labels"][:, 0].tolist()
    img = splits.load_image("test/3")
    assert img.mode == "RGB" and img.size == (28, 28)
    arr = np.asarray(img)
    assert np.array_equal(arr[..., 0], raw["test_images"][3]) and np.array_equal(arr[..., 0], arr[..., 2])


def test_image_folder_reader(tmp_path):
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for cls in ("normal lungs", "covid lungs"):
            folder = tmp_path / "toy" / split / cls.replace(" ", "_")
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("L", (20, 16), color=i * 40).save(folder / f"{i}.png")
    cfg = {"format": "image_folder", "root": str(tmp_path), "folder": "toy",
           "classnames": ["normal lungs", "covid lungs"]}  # fmt: skip
    splits = read_dataset(cfg)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [6, 2, 4]
    assert splits.train[0] == Record("train/normal_lungs/0.png", 0)
    assert per_class(splits.train) == {0: 3, 1: 3}
    assert splits.load_image(splits.val[1].key).mode == "RGB"
    unordered = read_dataset({k: v for k, v in cfg.items() if k != "classnames"})
    assert unordered.classnames == ["covid lungs", "normal lungs"]  # sorted folders without classnames


# ----------------------------------------------------------------------------------------- few-shot


@pytest.mark.parametrize("shots", [1, 4, 16])
def test_k_shot_exactly_k_per_class_and_deterministic(btmri, shots):
    a = sample_few_shot(btmri.train, shots, dataset="btmri", seed=1, split="train")
    assert per_class(a) == {c: shots for c in range(4)}
    shuffled = list(btmri.train)
    random.Random(123).shuffle(shuffled)
    b = sample_few_shot(shuffled, shots, dataset="btmri", seed=1, split="train")
    assert a == b and a == sorted(a, key=lambda r: (r.label, r.key))
    assert set(a) <= set(btmri.train)


def test_k_shot_does_not_touch_global_rng(btmri):
    random.seed(7)
    expected = random.random()
    random.seed(7)
    sample_few_shot(btmri.train, 8, dataset="btmri", seed=3, split="train")
    assert random.random() == expected


def test_manifest_hash_equal_for_same_seed_and_differs_across_seeds(btmri):
    def manifest(seed: int) -> dict:
        train = sample_few_shot(btmri.train, 4, dataset="btmri", seed=seed, split="train")
        val = sample_few_shot(btmri.val, val_shots(4), dataset="btmri", seed=seed, split="val")
        return few_shot_manifest(train, val, dataset="btmri", shots=4, seed=seed, split_hash=btmri.split_hash)

    assert manifest_hash(manifest(1)) == manifest_hash(manifest(1))
    hashes = {manifest_hash(manifest(s)) for s in (0, 1, 2, 3)}
    assert len(hashes) == 4  # seed 0 is a valid, distinct seed
    assert manifest(0)["seed"] == 0 and manifest(0)["counts"]["train"] == {"0": 4, "1": 4, "2": 4, "3": 4}


def test_few_shot_val_is_min_k_4(btmri):
    assert [val_shots(k) for k in (1, 2, 4, 8, 16, 0)] == [1, 2, 4, 4, 4, 0]
    for k in (2, 16):
        val = sample_few_shot(btmri.val, val_shots(k), dataset="btmri", seed=0, split="val")
        assert per_class(val) == {c: min(k, 4) for c in range(4)}


def test_short_classes_take_all_and_are_recorded(btmri):
    train = sample_few_shot(btmri.train, 64, dataset="btmri", seed=0, split="train")
    assert per_class(train) == {0: 64, 1: 64, 2: 64, 3: 58}  # normal brain has only 58 train images
    m = few_shot_manifest(train, [], dataset="btmri", shots=64, seed=0)
    assert m["short_classes"]["train"] == {"3": 58}
    assert sample_few_shot(btmri.train, 0, dataset="btmri", seed=0, split="train") == sorted(
        btmri.train, key=lambda r: (r.label, r.key)
    )


def test_write_manifest_is_atomic_json(tmp_path, btmri):
    m = few_shot_manifest(btmri.train[:3], btmri.val[:2], dataset="btmri", shots=1, seed=0)
    path = write_manifest(m, tmp_path / "sub" / "manifest.json")
    assert json.loads(path.read_text()) == m
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]


def test_base_novel_for_five_classes(configs):
    splits = read_dataset(configs["demo_kneexray"])
    base, base_names = base_novel(splits.test, splits.classnames, "base")
    novel, novel_names = base_novel(splits.test, splits.classnames, "novel")
    assert base_names == ["healthy knee", "doubtful osteoarthritis", "minimal osteoarthritis"]
    assert novel_names == ["moderate osteoarthritis", "severe osteoarthritis"]
    assert set(per_class(base)) == {0, 1, 2} and set(per_class(novel)) == {0, 1}
    assert len(base) + len(novel) == len(splits.test)
    original = {r.key: r.label for r in splits.test}
    assert all(original[r.key] == r.label + 3 for r in novel)
    assert base_novel(splits.test, splits.classnames, "all") == (splits.test, splits.classnames)
    with pytest.raises(ValueError):
        base_novel(splits.test, splits.classnames, "new")


# ----------------------------------------------------------------------------------------- transforms


def test_train_views_are_a_pure_function_of_seed_epoch_index(btmri):
    tf = build_train_transform(32, MEAN, STD, flip=True)
    img = btmri.load_image(btmri.train[0].key)
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    a = tf(img, 1, 0, 5)
    assert torch.equal(torch.rand(1), expected_next)  # the global torch RNG is untouched
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, tf(img, 1, 0, 5))
    assert not torch.equal(a, tf(img, 1, 1, 5))  # another epoch
    assert not torch.equal(a, tf(img, 2, 0, 5))  # another seed
    assert not torch.equal(a, tf(img, 1, 0, 6))  # another record index


def test_eval_transform_resizes_short_side_then_center_crops():
    img = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (100, 1))).convert("RGB")  # 200 x 100
    x = build_eval_transform(48, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(img)
    assert x.shape == (3, 48, 48)
    # short side 100 -> 48 (width 96), then the central 48 columns: original columns ~50..150
    assert 0.17 < float(x[0, :, 0].mean()) < 0.23 and 0.55 < float(x[0, :, -1].mean()) < 0.61


# ----------------------------------------------------------------------------------------- DataModule


def make_dm(cfg, protocol="few_shot", **kw):
    from promptbench.data import PromptDataModule

    args = dict(protocol=protocol, shots=2, seed=0, batch_size=4, eval_batch_size=16, image_size=32, mean=MEAN,
                std=STD)  # fmt: skip
    args.update(kw)
    return PromptDataModule(cfg, **args)


def test_datamodule_few_shot_batches(configs, tmp_path, monkeypatch):
    calls = []
    real = readers_mod.read_dataset

    def counting(cfg):
        calls.append(1)
        return real(cfg)

    monkeypatch.setattr("promptbench.data.datamodule.read_dataset", counting)
    dm = make_dm(configs["demo_btmri"], manifest_path=tmp_path / "m.json")
    dm.setup("fit")
    dm.setup("test")
    assert len(calls) == 1
    assert dm.classnames == configs["demo_btmri"]["classnames"]
    assert dm.eval_sets() == {"test": dm.classnames}
    assert json.loads((tmp_path / "m.json").read_text()) == dm.manifest
    assert dm.manifest["split_hash"] == dm.split_hash == dm.splits.split_hash
    assert dm.manifest["counts"] == {"train": {str(c): 2 for c in range(4)}, "val": {str(c): 2 for c in range(4)}}

    batches = list(dm.train_dataloader())
    assert [len(b["label"]) for b in batches] == [4, 4]
    b = batches[0]
    assert set(b) == {"image", "label", "index"}
    assert b["image"].shape == (4, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["label"].dtype == torch.long and b["index"].dtype == torch.long
    for label, index in zip(b["label"].tolist(), b["index"].tolist()):
        assert dm.splits.train[index].label == label  # index = position in the full train split
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (8, 3, 32, 32)
    (test_loader,) = dm.test_dataloader()
    assert len(test_loader.dataset) == 200


def test_datamodule_epochs_change_views_and_order(configs):
    dm = make_dm(configs["demo_btmri"], shots=1)
    epoch0 = next(iter(dm.train_dataloader()))
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(epoch0["image"], again["image"]) and torch.equal(epoch0["index"], again["index"])
    dm.set_epoch(1)
    loader = dm.train_dataloader()
    epoch1 = next(iter(loader))
    assert not torch.equal(epoch0["image"], epoch1["image"])
    loader.sampler.set_epoch(0)  # what Lightning does each epoch; the views follow the sampler's epoch
    assert torch.equal(next(iter(loader))["image"], epoch0["image"])


def test_datamodule_base_to_novel(configs):
    dm = make_dm(configs["demo_kneexray"], protocol="base_to_novel", shots=4)
    assert dm.classnames == ["healthy knee", "doubtful osteoarthritis", "minimal osteoarthritis"]
    sets = dm.eval_sets()
    assert list(sets) == ["test_base", "test_novel"]
    assert sets["test_novel"] == ["moderate osteoarthritis", "severe osteoarthritis"]
    assert per_class(dm.train_records) == {0: 4, 1: 4, 2: 4}
    loaders = dm.test_dataloader()
    assert [len(dl.dataset) for dl in loaders] == [120, 80]
    novel = next(iter(loaders[1]))
    assert set(novel["label"].tolist()) <= {0, 1}
    for label, index in zip(novel["label"].tolist(), novel["index"].tolist()):
        assert dm.splits.test[index].label == label + 3
    # the base-class K-shot draw equals the few-shot draw for those classes
    fs = make_dm(configs["demo_kneexray"], shots=4)
    assert [r for r in fs.train_records if r.label < 3] == dm.train_records


def test_datamodule_full_protocol_and_medmnist(configs):
    dm = make_dm(configs["demo_pneumoniamnist"], protocol="full", image_size=28, batch_size=512)
    assert len(dm.train_records) == 2428 and len(dm.val_records) == 270
    assert dm.manifest["shots"] == 0 and dm.manifest["short_classes"]["train"] == {}
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape == (16, 3, 28, 28)
    with pytest.raises(ValueError, match="protocol"):
        make_dm(configs["demo_btmri"], protocol="zero_shot")


# ----------------------------------------------------------------------------------------- demo data


def test_demo_data_is_small_and_downscaled():
    total = sum(p.stat().st_size for p in DEMO_ROOT.rglob("*") if p.is_file())
    assert total < 12.5e6
    for name in ("BTMRI", "CTKidney", "KneeXray"):
        first = next((DEMO_ROOT / name / name).rglob("*.jpg"))
        with Image.open(first) as img:
            assert img.mode == "L" and min(img.size) == 112
    assert (DEMO_ROOT / "README.md").read_text().count("Sources") >= 1


def test_vendor_script_downscales_deterministically(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("vendor_demo_data", REPO / "scripts" / "vendor_demo_data.py")
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    src = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 300), dtype=np.uint8)).save(src)
    vendor.downscale(src, tmp_path / "a.jpg", 112)
    vendor.downscale(src, tmp_path / "b.jpg", 112)
    assert filecmp.cmp(tmp_path / "a.jpg", tmp_path / "b.jpg", shallow=False)
    with Image.open(tmp_path / "a.jpg") as img:
        assert img.mode == "L" and img.size == (224, 112)


@needs_shared
@pytest.mark.parametrize("name", ["BTMRI", "CTKidney", "KneeXray"])
def test_demo_splits_equal_shared_splits(configs, name):
    assert filecmp.cmp(DEMO_ROOT / name / f"split_{name}.json", SHARED / name / f"split_{name}.json", shallow=False)
    full = read_dataset(configs[name.lower()] | {"root": str(SHARED)})
    demo = read_dataset(configs[f"demo_{name.lower()}"])
    assert full.split_hash == demo.split_hash
    assert full.load_image(full.val[0].key).size == (224, 224)


@needs_shared
def test_shared_medmnist_found_under_medmnist_subfolder(configs):
    splits = read_dataset(configs["pneumoniamnist"])  # <data_root>/medmnist/pneumoniamnist.npz
    assert splits.npz_path == SHARED / "medmnist" / "pneumoniamnist.npz"
    assert len(splits.test) == 468
