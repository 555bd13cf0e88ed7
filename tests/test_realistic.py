"""protocol=realistic: K x C support from the training class prior, no validation set, validation fallbacks."""

from __future__ import annotations

import json
from collections import Counter

from omegaconf import OmegaConf

from promptbench.config import compose
from promptbench.data.realistic import apply_validation_fallbacks, protocol_method_cfg, sample_realistic
from promptbench.data.records import Record

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _dm(cfg, shots, seed, tmp_path=None):
    from promptbench.data import PromptDataModule

    return PromptDataModule(cfg, protocol="realistic", shots=shots, seed=seed, batch_size=4, eval_batch_size=16,
                            image_size=32, mean=MEAN, std=STD,
                            manifest_path=None if tmp_path is None else tmp_path / "manifest.json")


def test_realistic_manifest_k_times_c_unequal_counts_no_val(tmp_path):
    cfg = compose(["dataset=demo_btmri"]).dataset
    dm = _dm(cfg, shots=4, seed=1, tmp_path=tmp_path)
    dm.setup()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["protocol"] == "realistic" and len(manifest["train"]) == 4 * 4
    counts = Counter(label for _, label in manifest["train"])
    per_class = [counts.get(c, 0) for c in range(4)]
    assert sum(per_class) == 16 and len(set(per_class)) > 1  # imbalanced support
    assert manifest["realistic"]["per_class"] == {str(c): n for c, n in enumerate(per_class)}
    assert manifest["val"] == [] and manifest["val_shots"] == 0 and len(dm.val_dataloader().dataset) == 0
    assert len(dm.test_dataloader()[0].dataset) == 200  # whole test split
    again = _dm(cfg, shots=4, seed=1)
    assert [r.key for r in again.train_records] == [r.key for r in dm.train_records]
    assert [r.key for r in _dm(cfg, shots=4, seed=2).train_records] != [r.key for r in dm.train_records]


def test_realistic_support_follows_class_prior_and_may_miss_classes():
    pool = [Record(f"a{i}", 0) for i in range(900)] + [Record(f"b{i}", 1) for i in range(90)] + \
        [Record(f"c{i}", 2) for i in range(10)]
    big = Counter(r.label for r in sample_realistic(pool, 100, 3, dataset="x", seed=0))
    assert sum(big.values()) == 300 and big[0] > 220 and big[1] < 60  # ~90% / 9% / 1%
    missing = sum(2 not in {r.label for r in sample_realistic(pool, 1, 3, dataset="x", seed=s)} for s in range(20))
    assert missing >= 15  # the 1% class is usually absent from a 3-image support
    assert len(sample_realistic(pool, 0, 3, dataset="x", seed=0)) == 1000


def test_validation_fallbacks_are_fixed_values_and_noted():
    lp = OmegaConf.create({"name": "linear_probe", "init": "none", "c": None})
    notes = apply_validation_fallbacks(lp)
    assert lp.c == 1.0 and notes and "C fixed at 1.0" in notes[0]
    user = OmegaConf.create({"name": "linear_probe", "init": "none", "c": 0.1})
    assert apply_validation_fallbacks(user) == [] and user.c == 0.1
    tip = OmegaConf.create({"name": "tip_adapter", "search": True})
    assert apply_validation_fallbacks(tip) and tip.search is False
    assert apply_validation_fallbacks(OmegaConf.create({"name": "coop"})) == []
    cfg = compose(["method=tip_adapter", "protocol=realistic"])
    method_cfg, notes = protocol_method_cfg(cfg)
    assert method_cfg.search is False and cfg.method.search is True and notes  # a copy; config hash unchanged
    assert protocol_method_cfg(compose(["method=tip_adapter"]))[1] == []


def test_realistic_run_records_notes_and_balanced_accuracy(tmp_path):
    from promptbench.engine.run import run

    cfg = compose(["backbone=tiny_clip", "method=linear_probe", "dataset=demo_ctkidney", "protocol=realistic",
                   "shots=2", "seed=1", "logger=none", "trainer.enable_progress_bar=false",
                   f"paths.output_dir={tmp_path}"])
    result = run(cfg)
    assert result["identity"]["protocol"] == "realistic"
    assert any("C fixed at 1.0" in n for n in result["protocol_notes"])
    assert result["fit_info"]["c"] == 1.0 and result["fit_info"]["fits"] == 1  # Method.fit_info, recorded
    assert {"test/acc", "test/balanced_acc", "test/ece", "test/lac_coverage"} <= set(result["metrics"])
    assert result["trust"]["conformal"]["test"]["source"] == "holdout"
