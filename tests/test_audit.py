"""Leakage audit: planted near-duplicate CT slices moved across splits are found; the CLI's summary and exit code;
runs warn about or refuse an audited-leaky split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from promptbench import cli
from promptbench.config import compose
from promptbench.data.audit import SPLITS, audit_dataset, check_audit, hamming_pairs, near_duplicate_groups, phash_bits
from promptbench.data.readers import read_dataset

DEMO_CT = Path(__file__).resolve().parents[1] / "data" / "demo" / "CTKidney"
SHARED_CT = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _copy_dataset(dst: Path) -> dict:
    """data/demo/CTKidney re-created under ``dst`` (per-file symlinks, a writable split file)."""
    root = dst / "CTKidney"
    for src in (DEMO_CT / "CTKidney").rglob("*.jpg"):
        target = root / "CTKidney" / src.relative_to(DEMO_CT / "CTKidney")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(src)
    split = json.loads((DEMO_CT / "split_CTKidney.json").read_text())
    return split


def _write_split(dst: Path, split: dict) -> None:
    (dst / "CTKidney" / "split_CTKidney.json").write_text(json.dumps(split))


@pytest.fixture(scope="module")
def original_report():
    cfg = compose(["dataset=demo_ctkidney"]).dataset
    return audit_dataset(cfg)[0]


def test_planted_slices_moved_across_splits_are_found(tmp_path, original_report):
    # the vendored subset is split by scan: only a couple of groups cross (docs/trust.md has the numbers)
    assert original_report["cross_split_groups"] <= 3
    split = _copy_dataset(tmp_path)
    cfg = compose(["dataset=demo_ctkidney", f"dataset.root={tmp_path}"]).dataset
    _write_split(tmp_path, split)
    # 1) move one neighbouring slice of three within-train near-duplicate groups into test
    train_groups = [g for g in _within_groups(cfg) if g[0] == "train"][:3]
    moved = []
    for _, key in train_groups:
        entry = next(e for e in split["train"] if e[0] == key)
        split["train"].remove(entry)
        split["test"].append(entry)
        moved.append(key)
    # 2) plant a brightened, re-encoded copy of a test slice into the training split
    test_key = split["test"][0][0]
    src = tmp_path / "CTKidney" / "CTKidney" / test_key
    planted = src.with_name("planted_copy.jpg")
    ImageEnhance.Brightness(Image.open(src).convert("RGB")).enhance(1.05).save(planted, quality=85)
    split["train"].append([str(Path(test_key).parent / "planted_copy.jpg"), split["test"][0][1], split["test"][0][2]])
    _write_split(tmp_path, split)
    leaky, _ = audit_dataset(cfg)
    assert leaky["cross_split_groups"] >= original_report["cross_split_groups"] + 4
    crossing = {m["key"] for g in leaky["leaky_groups"] for m in g["members"]}
    assert set(moved) <= crossing and split["train"][-1][0] in crossing and test_key in crossing
    assert leaky["threshold"] == 8 and leaky["leaky"]


def _within_groups(cfg) -> list[tuple[str, str]]:
    """(split, one member key) of near-duplicate groups of at least 2 that lie inside one split."""
    splits = read_dataset(cfg)
    items = [(s, r.key) for s in SPLITS for r in splits.split(s)]
    hashes = np.stack([phash_bits(splits.load_image(k)) for _, k in items])
    groups = near_duplicate_groups(len(items), hamming_pairs(hashes, 8))
    return [items[g[0]] for g in groups if len({items[i][0] for i in g}) == 1]


def test_cli_summary_exit_code_and_run_policy(tmp_path, capsys):
    split = _copy_dataset(tmp_path)
    key = split["train"][0]
    split["test"].append(key)  # an exact duplicate across splits
    _write_split(tmp_path, split)
    args = ["dataset=demo_ctkidney", f"dataset.root={tmp_path}", f"paths.output_dir={tmp_path / 'out'}"]
    assert cli.main(["audit", *args]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "cross-split" in x)
    report = json.loads((tmp_path / "out/audit/demo_ctkidney/audit.json").read_text())
    assert line.startswith(f"cross-split groups: {report['cross_split_groups']} ") and report["cross_split_groups"] >= 1
    assert (tmp_path / "out/audit/demo_ctkidney/audit.html").read_text().count("<img") >= 2
    assert cli.main(["audit", "--keep-going", *args]) == 0

    cfg = compose(args)
    assert check_audit(cfg, report["split_hash"])["leaky"]  # warn (default): returns the summary
    with pytest.raises(RuntimeError, match="audit.on_leak=warn"):
        check_audit(compose([*args, "audit.on_leak=refuse"]), report["split_hash"])
    assert check_audit(compose([*args, "audit.on_leak=refuse"]), "another-split") is None  # not this split
    shutil.rmtree(tmp_path / "out")
    assert check_audit(cfg, report["split_hash"]) is None


@pytest.mark.skipif(not (SHARED_CT / "CTKidney" / "split_CTKidney.json").is_file(), reason="no ../shared/datasets")
def test_shared_ctkidney_split_by_scan_has_few_cross_split_groups():
    report, _ = audit_dataset(compose(["dataset=ctkidney", f"paths.data_root={SHARED_CT}"]).dataset)
    assert sum(report["images"].values()) == 680
    assert report["within_split_groups"] > 50  # neighbouring slices of a scan are near-duplicates ...
    assert report["cross_split_groups"] <= 3  # ... but (almost) never across splits (docs/trust.md: 2 groups)
