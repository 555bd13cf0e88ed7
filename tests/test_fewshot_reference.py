"""The default few-shot sampler draws the reference code's subsets image for image; subset files round-trip.

Expected lists (``fixtures/dassl_fewshot_reference.json``) were produced once, outside the project, by running the
reference code itself: BiomedCoOp (HealthX-Lab/BiomedCoOp@7ceb5a89) ``datasets/btmri.py``, ``ctkidney.py``,
``kneexray.py`` with its vendored Dassl ``base_dataset.py`` (``generate_fewshot_dataset``), with only
``dassl.utils``, the dataset registry and ``gdown`` stubbed. Per case: ``random.seed(seed)``/``np.random.seed(seed)``
(Dassl's ``set_random_seed``, which ``train.py`` calls before ``build_trainer``), then the dataset class built on
the shared split file, which drew K-shot train and min(K, 4)-shot val, cached ``split_fewshot/shot_K-seed_S.pkl``
(a second build from the pickle gave the same lists) and applied ``subsample_classes``. The fixture records the
split files' sha256, so these tests prove they read the same input (the demo split files are byte-identical to
the shared ones). The "synthetic" split is the BTMRI split reordered so that labels first appear in the order
2, 0, 3, 1, with a class shorter than K, to pin grouping order and short classes.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from promptbench import cli
from promptbench.config import compose
from promptbench.data import PromptDataModule
from promptbench.data.fewshot import base_novel, dassl_few_shot, draw_subsets, sample_few_shot
from promptbench.data.readers import read_dataset
from promptbench.data.records import Record, records_to_lists
from promptbench.data.subsets import export_subsets, load_subset

REPO = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((REPO / "tests" / "fixtures" / "dassl_fewshot_reference.json").read_text())
SHARED = REPO.parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not (SHARED / "BTMRI" / "split_BTMRI.json").is_file(),
                                  reason="../shared/datasets not available")
REAL_CASES = [c for c in FIXTURE["cases"] if c["dataset"] != "synthetic"]
SYNTH_CASES = [c for c in FIXTURE["cases"] if c["dataset"] == "synthetic"]


def case_id(c: dict) -> str:
    return f"{c['dataset']}-K{c['shots']}-s{c['seed']}-{c['subsample']}"


_CACHE: dict[str, object] = {}


def splits_of(name: str, root: Path | None = None):
    """The dataset's splits from the demo copy (or ``root``), after checking the split file is the reference's."""
    key = f"{name}:{root}"
    if key not in _CACHE:
        cfg = compose([f"dataset=demo_{name.lower()}"]).dataset
        if root is not None:
            cfg = OmegaConf.merge(cfg, {"root": str(root)})
        split_file = Path(str(cfg.root)) / name / f"split_{name}.json"
        assert hashlib.sha256(split_file.read_bytes()).hexdigest() == FIXTURE["split_files"][name]
        _CACHE[key] = read_dataset(cfg)
    return _CACHE[key]


def reference_view(train, val, classnames, subsample: str):
    """Apply the reference's subsample_classes (all / base / new) to our draw."""
    if subsample == "all":
        return train, val
    part = "base" if subsample == "base" else "novel"
    return base_novel(train, classnames, part)[0], base_novel(val, classnames, part)[0]


@pytest.mark.parametrize("case", REAL_CASES, ids=case_id)
def test_dassl_sampler_draws_the_reference_subsets(case):
    splits = splits_of(case["dataset"])
    train, val = draw_subsets(splits.train, splits.val, sampler="dassl", shots=case["shots"], seed=case["seed"],
                              dataset=case["dataset"])
    train, val = reference_view(train, val, splits.classnames, case["subsample"])
    assert records_to_lists(train) == case["train"]       # same images, same labels, same order
    assert records_to_lists(val) == case["val"]
    assert hashlib.sha256(json.dumps(case["train"]).encode()).hexdigest() == case["sha256"]["train"]


@pytest.mark.parametrize("case", SYNTH_CASES, ids=case_id)
def test_dassl_sampler_label_order_and_short_classes(case):
    synth = FIXTURE["synthetic_split"]
    train = [Record(p, int(y)) for p, y, _ in synth["train"]]
    val = [Record(p, int(y)) for p, y, _ in synth["val"]]
    ours_train, ours_val = draw_subsets(train, val, sampler="dassl", shots=case["shots"], seed=case["seed"],
                                        dataset="synthetic")
    names = ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]
    ours_train, ours_val = reference_view(ours_train, ours_val, names, case["subsample"])
    assert records_to_lists(ours_train) == case["train"]
    assert records_to_lists(ours_val) == case["val"]


def test_short_class_is_taken_whole_in_file_order_without_drawing():
    records = [Record(f"a{i}", 0) for i in range(5)] + [Record(f"b{i}", 1) for i in range(2)]
    rng, twin = random.Random(3), random.Random(3)
    out = dassl_few_shot(records, 3, rng)
    assert out[3:] == records[5:]                          # class 1 (2 < K) kept whole, in file order
    assert out[:3] == twin.sample(records[:5], 3)          # only class 0 drew from the stream
    assert rng.random() == twin.random()


def test_default_config_and_datamodule_draw_dassl_s_btmri_16_shot_seed_1():
    cfg = compose(["dataset=demo_btmri"])
    assert cfg.protocol.sampler == "dassl" and cfg.shots == 16 and cfg.seed == 1 and cfg.protocol.subset_seed is None
    expected = next(c for c in REAL_CASES if (c["dataset"], c["shots"], c["seed"], c["subsample"])
                    == ("BTMRI", 16, 1, "all"))
    dm = _datamodule(cfg.dataset, "few_shot", seed=1)
    assert records_to_lists(dm.train_records) == expected["train"]
    assert records_to_lists(dm.val_records) == expected["val"]
    assert dm.manifest["source"] == {"sampler": "dassl", "seed": 1}


@needs_shared
def test_shared_btmri_16_shot_seed_1_is_dassl_s():
    cfg = OmegaConf.merge(compose(["dataset=btmri"]).dataset, {"root": str(SHARED)})
    expected = next(c for c in REAL_CASES if (c["dataset"], c["shots"], c["seed"], c["subsample"])
                    == ("BTMRI", 16, 1, "all"))
    dm = _datamodule(cfg, "few_shot", seed=1)
    assert records_to_lists(dm.train_records) == expected["train"]


def test_base_to_novel_draws_over_all_classes_then_keeps_base():
    expected = next(c for c in REAL_CASES if (c["dataset"], c["shots"], c["seed"], c["subsample"])
                    == ("BTMRI", 16, 1, "base"))
    dm = _datamodule(compose(["dataset=demo_btmri"]).dataset, "base_to_novel", seed=1)
    assert records_to_lists(dm.train_records) == expected["train"]
    assert records_to_lists(dm.val_records) == expected["val"]
    # drawing on the base classes alone would give other val images (the stream differs after train)
    splits = splits_of("BTMRI")
    base_train, base_val = (base_novel(splits.train, splits.classnames, "base")[0],
                            base_novel(splits.val, splits.classnames, "base")[0])
    assert records_to_lists(draw_subsets(base_train, base_val, sampler="dassl", shots=16, seed=1,
                                         dataset="BTMRI")[1]) != expected["val"]


def test_promptbench_sampler_stays_available_and_global_rng_is_untouched():
    splits = splits_of("BTMRI")
    state = random.getstate()
    ours, _ = draw_subsets(splits.train, splits.val, sampler="promptbench", shots=4, seed=1, dataset="btmri")
    dassl, _ = draw_subsets(splits.train, splits.val, sampler="dassl", shots=4, seed=1, dataset="btmri")
    assert random.getstate() == state
    assert ours == sample_few_shot(splits.train, 4, dataset="btmri", seed=1, split="train")
    assert set(ours) != set(dassl)
    with pytest.raises(ValueError, match="protocol.sampler='coin'"):
        _datamodule(compose(["dataset=demo_btmri"]).dataset, "few_shot", seed=1, sampler="coin")


def test_subset_seed_decouples_the_subset_from_the_training_seed():
    cfg = compose(["dataset=demo_btmri"]).dataset
    seed2_on_subset1 = _datamodule(cfg, "few_shot", seed=2, subset_seed=1)
    assert seed2_on_subset1.train_records == _datamodule(cfg, "few_shot", seed=1).train_records
    assert seed2_on_subset1.train_records != _datamodule(cfg, "few_shot", seed=2).train_records


def _datamodule(dataset_cfg, protocol: str, seed: int, **kw) -> PromptDataModule:
    dm = PromptDataModule(dataset_cfg, protocol=protocol, shots=kw.pop("shots", 16), seed=seed, batch_size=4,
                          image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, **kw)
    dm.setup()
    return dm


# ----------------------------------------------------------------------------------------- subset files


def test_export_then_run_from_the_files(tmp_path, capsys):
    assert cli.main(["splits", "export", "dataset=demo_btmri", "shots=2,16", "seeds=1,2", f"out={tmp_path}"]) == 0
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json"))
    assert files == [f"demo_btmri/shots_{k}-seed_{s}.json" for k in (16, 2) for s in (1, 2)]
    assert "4 subset file(s) written" in capsys.readouterr().out
    doc = json.loads((tmp_path / "demo_btmri" / "shots_16-seed_1.json").read_text())
    expected = next(c for c in REAL_CASES if (c["dataset"], c["shots"], c["seed"], c["subsample"])
                    == ("BTMRI", 16, 1, "all"))
    assert doc["train"] == expected["train"] and doc["val"] == expected["val"]
    assert (doc["shots"], doc["seed"], doc["sampler"], doc["folder"]) == (16, 1, "dassl", "BTMRI")
    assert doc["split_hash"] == splits_of("BTMRI").split_hash
    cfg = compose(["dataset=demo_btmri"]).dataset
    for protocol in ("few_shot", "base_to_novel"):      # a folder: the file of the run's dataset, K and seed
        from_file = _datamodule(cfg, protocol, seed=2, shots=2, subset_file=str(tmp_path))
        sampled = _datamodule(cfg, protocol, seed=2, shots=2)
        assert from_file.train_records == sampled.train_records and from_file.val_records == sampled.val_records
        assert from_file.manifest["source"]["subset_file"].endswith("shots_2-seed_2.json")


def test_subset_file_mismatches_are_one_line_errors(tmp_path):
    export_subsets(["dataset=demo_btmri", "shots=4", "seeds=1", f"out={tmp_path}"])
    path = tmp_path / "demo_btmri" / "shots_4-seed_1.json"
    splits = splits_of("BTMRI")

    def error(doc=None, **kw) -> str:
        if doc is not None:
            path.write_text(json.dumps(doc))
        args = {"folder": "BTMRI", "shots": 4, "seed": 1} | kw
        with pytest.raises(ValueError) as info:
            load_subset(path, splits, **args)
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        return message

    assert load_subset(path, splits, folder="BTMRI", shots=4, seed=1)[2]["sampler"] == "dassl"
    assert "shots=4 but the run has shots=16" in error(shots=16)
    assert "protocol.subset_seed=1" in error(seed=2)
    assert "'BTMRI'" in error(folder="CTKidney")
    good = json.loads(path.read_text())
    assert "not in the dataset's train split" in error({**good, "train": [["nope.jpg", 0], *good["train"][1:]]})
    assert "has label 3 in the file but 0" in error({**good, "train": [[good["train"][0][0], 3]]})
    assert "not a promptbench subset file" in error({"train": []})
    with pytest.raises(FileNotFoundError, match="splits export dataset=demo_btmri shots=8 seeds=1"):
        _datamodule(compose(["dataset=demo_btmri"]).dataset, "few_shot", seed=1, shots=8, subset_file=str(tmp_path))


def test_splits_export_usage_errors(capsys):
    assert cli.main(["splits", "export", "shots=16"]) == 2
    assert "dataset=btmri" in capsys.readouterr().err
    assert cli.main(["splits", "export", "dataset=demo_btmri", "shots=x"]) == 2
    assert "shots='x'" in capsys.readouterr().err
    assert cli.main(["splits", "export", "dataset=nope"]) == 2
    assert "dataset=nope" in capsys.readouterr().err


def test_reference_pickle_imports_as_a_subset_file(tmp_path, capsys):
    """fixtures/BTMRI_shot_4-seed_3.pkl is the reference's own cache from the fixture run (BTMRI, K=4, seed 3)."""
    pkl = tmp_path / "shot_4-seed_3.pkl"
    pkl.write_bytes((REPO / "tests" / "fixtures" / "BTMRI_shot_4-seed_3.pkl").read_bytes())
    assert cli.main(["splits", "import", str(pkl), "dataset=demo_btmri", f"out={tmp_path / 'out'}"]) == 0
    doc = json.loads((tmp_path / "out" / "demo_btmri" / "shots_4-seed_3.json").read_text())
    expected = next(c for c in REAL_CASES if (c["dataset"], c["shots"], c["seed"], c["subsample"])
                    == ("BTMRI", 4, 3, "all"))
    assert doc["train"] == expected["train"] and doc["val"] == expected["val"] and doc["sampler"] == "reference-pickle"
    evil = tmp_path / "shot_1-seed_1.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")             # a pickle that would call os.system
    assert cli.main(["splits", "import", str(evil), "dataset=demo_btmri", f"out={tmp_path}"]) == 2
    assert "refusing" in capsys.readouterr().err


def test_subset_seed_comes_from_protocol_then_method():
    from promptbench.engine.run import _subset_seed

    assert _subset_seed(compose(["method=coop"])) is None                                # the run's seed
    assert _subset_seed(compose(["method=linear_probe"])) == 1        # fidelity=reference: main.py's SEED=1 subset
    assert _subset_seed(compose(["method=linear_probe", "fidelity=paper"])) is None
    assert _subset_seed(compose(["method=linear_probe", "experiment=demo"])) is None    # the demo compares seeds
    assert _subset_seed(compose(["method=linear_probe", "protocol.subset_seed=3"])) == 3
