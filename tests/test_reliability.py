"""Reliability (issue 14), in process: good results survive failed re-runs, NaN is a failure, strict JSON and
0644 files, image modes (16-bit PNG fixture), the split pre-flight, staleness, cell paths and one-line errors.
The signal, orphan and concurrency cases run real subprocesses: tests/test_reliability_processes.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptbench import cli
from promptbench.config import compose
from promptbench.data.preflight import DataError, data_fingerprint, preflight
from promptbench.data.readers import read_dataset
from promptbench.data.records import ImageError, to_rgb
from promptbench.engine.results import (
    config_hash,
    is_done,
    read_attempts,
    read_result,
    record_outcome,
    result_path,
    write_json_atomic,
)
from promptbench.sweep import claims, driver
from promptbench.sweep import grid as sweep_grid
from promptbench.sweep import status as sweep_status

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "BTMRI"
pytestmark = pytest.mark.skipif(not DEMO.is_dir(), reason="no vendored demo data")
CLASSES = ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]


def demo_images(n: int) -> list[Path]:
    return sorted((DEMO / "BTMRI").rglob("*.jpg"))[:n]


def make_dataset(root: Path, counts: dict[str, int] | None = None, sixteen_bit: bool = False,
                 drop: tuple[str, int] | None = None) -> Path:
    """A BiomedCoOp-layout dataset MINI under ``root``: ``counts`` images per class and split (from the demo
    JPEGs, or as 16-bit PNGs scaled x257), one split entry per line; ``drop``: (split, class) left out."""
    counts = counts or {"train": 3, "val": 1, "test": 2}
    sources = iter(demo_images(4 * sum(counts.values())))
    split: dict[str, list] = {s: [] for s in counts}
    for split_name, n in counts.items():
        for label, name in enumerate(CLASSES):
            if drop == (split_name, label):
                continue
            for i in range(n):
                src = next(sources)
                rel = f"{name.replace(' ', '_')}/{split_name}_{i}.{'png' if sixteen_bit else 'jpg'}"
                dest = root / "MINI" / "MINI" / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if sixteen_bit:
                    grey = np.asarray(Image.open(src).convert("L"), dtype=np.uint16) * 257
                    Image.fromarray(grey).save(dest)  # PIL writes a 16-bit greyscale PNG (mode I;16)
                else:
                    shutil.copy(src, dest)
                split[split_name].append([rel, label, name])
    lines = ",\n".join(f'"{s}": [\n' + ",\n".join(json.dumps(e) for e in entries) + "\n]"
                       for s, entries in split.items())
    (root / "MINI" / "split_MINI.json").write_text("{\n" + lines + "\n}\n")
    return root


def cfg_for(root: Path, out: Path, *extra: str):
    return compose(["backbone=tiny_clip", "method=zeroshot", "dataset=demo_btmri", f"dataset.root={root}",
                    "dataset.folder=MINI", "dataset.name=mini", "shots=2", "logger=none",
                    "trainer.enable_progress_bar=false", f"paths.output_dir={out}", *extra])


# ------------------------------------------------------------------------------ 1. good results survive
def test_failed_and_interrupted_reruns_keep_the_good_result(tmp_path: Path) -> None:
    from promptbench.engine.guards import Interrupted
    from promptbench.engine.run import run

    root = make_dataset(tmp_path / "data")
    cfg = cfg_for(root, tmp_path / "out")
    good = run(cfg)
    assert good["status"] == "ok" and is_done(cfg)
    # a data error on re-run (an image removed): the pre-flight stops it, result.json keeps the good result
    missing = next((root / "MINI" / "MINI").rglob("test_1.jpg"))
    moved = missing.with_suffix(".bak")
    missing.rename(moved)
    with pytest.raises(DataError, match=r"split_MINI\.json test\[\d+\] line \d+"):
        run(cfg)
    assert read_result(result_path(cfg)) == good
    moved.rename(missing)
    # an interruption recorded as such, not as a failure; the good result still stands
    failed = {**good, "status": "interrupted", "error": "interrupted by SIGTERM"}
    assert record_outcome(result_path(cfg), failed) is False
    attempts = read_attempts(result_path(cfg).parent)
    assert [a["status"] for a in attempts] == ["ok", "failed", "interrupted"]
    assert "DataError" in attempts[1]["error"]
    assert read_result(result_path(cfg))["status"] == "ok" and is_done(cfg)
    status, detail = sweep_status.cell_status(cfg)
    assert status == "done" and "good result kept; last attempt interrupted" in detail
    # a stale cell whose re-run fails: still stale (retried next sweep), the good result still tabulated
    import promptbench.engine.run as engine_run

    changed = cfg_for(root, tmp_path / "out", "dataset.template='another {}.'")
    original = engine_run._run
    engine_run._run = lambda *a, **k: (_ for _ in ()).throw(Interrupted(15))
    try:
        with pytest.raises(Interrupted):
            run(changed)
    finally:
        engine_run._run = original
    assert read_result(result_path(cfg)) == good and not is_done(changed)
    assert sweep_status.cell_status(changed)[0] == "stale"
    from promptbench.report.collect import collect

    long = collect(tmp_path / "out" / "results")
    assert list(long["status"]) == ["ok"] and long["test/acc"].item() == good["metrics"]["test/acc"]


def test_failure_without_a_good_result_is_written_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "cell" / "result.json"
    assert record_outcome(path, {"status": "failed", "error": "RuntimeError: x"}) is True
    assert sweep_status.result_status(read_result(path), "h") == ("failed", "RuntimeError: x")
    assert record_outcome(path, {"status": "diverged", "error": "Diverged: training loss is nan"}) is True
    assert sweep_status.result_status(read_result(path), "h")[0] == "failed"
    assert len(read_attempts(path.parent)) == 2


# ------------------------------------------------------------------------------ 3. NaN is a failure, strict JSON
def test_nan_training_stops_as_diverged_with_one_line(tmp_path: Path) -> None:
    from promptbench.engine.guards import Diverged
    from promptbench.engine.run import run

    cfg = compose(["backbone=tiny_clip", "method=coop", "dataset=demo_btmri", "shots=4", "method.epochs=3",
                   "method.optim.lr=1e30", "logger=none", "trainer.enable_progress_bar=false",
                   f"paths.output_dir={tmp_path}"])
    with pytest.raises(Diverged, match=r"training loss is nan .*method\.optim\.lr=1e\+30"):
        run(cfg)
    text = result_path(cfg).read_text()
    result = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert result["status"] == "diverged" and "\n" not in result["error"] and "metrics" not in result
    assert sweep_status.cell_status(cfg)[0] == "failed" and not is_done(cfg)


def test_result_files_are_strict_json_and_0644_whatever_the_umask(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "r.json", {"metrics": {"test/acc": float("nan")}})
    assert not list(tmp_path.glob("*"))  # nothing half-written
    old = os.umask(0o077)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        record_outcome(tmp_path / "c" / "result.json", {"status": "failed", "error": "x"})
        from promptbench.data.fewshot import write_manifest

        write_manifest({"a": 1}, tmp_path / "manifest.json")
    finally:
        os.umask(old)
    for path in (tmp_path / "r.json", tmp_path / "c" / "result.json", tmp_path / "c" / "attempts.jsonl",
                 tmp_path / "manifest.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path


# ------------------------------------------------------------------------------ 4. image modes
def test_16bit_png_is_scaled_not_binarised(tmp_path: Path) -> None:
    src = demo_images(1)[0]
    grey8 = np.asarray(Image.open(src).convert("L"))
    png = tmp_path / "x16.png"
    Image.fromarray(grey8.astype(np.uint16) * 257).save(png)            # a 16-bit copy of an 8-bit scan
    png12 = tmp_path / "x12.png"
    Image.fromarray(grey8.astype(np.uint16) << 4).save(png12)           # 12-bit data in a 16-bit container
    with Image.open(png) as img:
        assert img.mode.startswith("I")                                  # PIL reads it as I;16 / I
        naive = np.asarray(img.convert("RGB"))[..., 0]
        ours = np.asarray(to_rgb(img))
        by_range = np.asarray(to_rgb(img, intensity="range"))
    assert len(np.unique(naive)) <= 2                                    # the bug: PIL clips to 0/255
    assert ours.shape == (*grey8.shape, 3) and (ours[..., 0] == ours[..., 2]).all()
    assert np.array_equal(ours[..., 0], grey8)                           # dtype scaling: the 8-bit scan back
    lo, hi = int(grey8.min()), int(grey8.max())
    stretched = np.round((grey8.astype(float) - lo) * 255 / (hi - lo))
    assert np.abs(by_range[..., 0].astype(float) - stretched).max() <= 1  # range: the image's own min..max
    with Image.open(png12) as img:
        assert np.array_equal(np.asarray(to_rgb(img, intensity="range")), by_range)  # whatever the bit depth
        assert np.asarray(to_rgb(img)).max() <= 16                        # dtype: 12-bit data look dark
    # through the dataset reader (a BTMRI-like split of 16-bit PNGs)
    root = make_dataset(tmp_path / "d16", {"train": 1, "val": 0, "test": 1}, sixteen_bit=True)
    splits = read_dataset(cfg_for(root, tmp_path).dataset)
    assert not preflight(splits).errors
    loaded = np.asarray(splits.load_image(splits.train[0].key))
    assert len(np.unique(loaded)) > 50
    ranged = read_dataset(cfg_for(root, tmp_path, "+dataset.intensity=range").dataset)
    assert ranged.intensity == "range"
    with pytest.raises(ValueError, match=r"dataset.intensity='max' is not one of"):
        read_dataset(cfg_for(root, tmp_path, "+dataset.intensity=max").dataset)


def test_palette_alpha_grey_and_bilevel_convert_and_odd_modes_are_refused(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 128)])
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert np.abs(out[..., 0].astype(int) - grey.astype(int) // 2).max() <= 1    # composited over black
    la = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA").convert("LA")))
    assert np.abs(la[..., 0].astype(int) - grey.astype(int) // 2).max() <= 1
    pal = Image.fromarray(grey).convert("P")
    assert np.array_equal(np.asarray(to_rgb(pal))[..., 0], np.asarray(pal.convert("L")))
    pal.info["transparency"] = 0
    assert np.asarray(to_rgb(pal)).shape == (8, 8, 3)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(grey)))[..., 1], grey)
    assert set(np.unique(np.asarray(to_rgb(Image.fromarray(grey > 100))))) <= {0, 255}
    floats = Image.fromarray(grey.astype(np.float32) / 255.0, "F")         # fractions in [0, 1]
    assert np.abs(np.asarray(to_rgb(floats))[..., 0].astype(int) - grey.astype(int)).max() <= 1
    wide = Image.fromarray(grey.astype(np.float32) * 10.0 - 5.0, "F")        # outside [0, 1]: by range
    assert np.abs(np.asarray(to_rgb(wide))[..., 0].astype(int) - grey.astype(int) * 255 // 252).max() <= 1
    with pytest.raises(ImageError, match=r"scan\.x: image mode 'HSV' is not supported"):
        to_rgb(Image.new("HSV", (4, 4)), "scan.x")


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 0, "test": 1})
    splits = read_dataset(cfg_for(root, tmp_path).dataset)
    path = splits.image_root / splits.test[0].key
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageError, match=rf"{path.name}: cannot read image"):
        splits.load_image(splits.test[0].key)


# ------------------------------------------------------------------------------ 7. the split pre-flight
def test_preflight_reports_every_kind_of_bad_split(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1, "test": 1}, drop=("train", 3))
    cfg = cfg_for(root, tmp_path)
    splits = read_dataset(cfg.dataset)
    report = preflight(splits, shots=4)
    assert any("['normal brain'] have no train images" in e for e in report.errors)
    assert any("fewer than shots=4 train images" in w for w in report.warnings)
    # a duplicate entry, a missing file, a 1-pixel image, an image in train and test
    split_file = root / "MINI" / "split_MINI.json"
    raw = json.loads(split_file.read_text())
    raw["train"].append(raw["train"][0])
    raw["test"].append(raw["train"][1])
    raw["test"].append(["glioma_tumor/nothere.jpg", 0, "glioma tumor"])
    Image.new("L", (1, 1)).save(root / "MINI" / "MINI" / "glioma_tumor" / "dot.png")
    raw["val"].append(["glioma_tumor/dot.png", 0, "glioma tumor"])
    split_file.write_text(json.dumps(raw, indent=0))
    report = preflight(read_dataset(cfg.dataset), shots=1)
    text = "\n".join(report.errors + report.warnings)
    assert "image missing:" in text and "test[" in text and "nothere.jpg" in text
    assert "duplicate entr(ies) in the train split" in text
    assert "listed in both train and test" in text
    assert "smaller than 2 px" in text and "1x1" in text
    with pytest.raises(DataError, match=r"^BTMRI \(demo subset\): .*\(and \d+ more problem\(s\)\)$"):
        report.raise_errors()
    # an empty test split
    raw["test"] = []
    split_file.write_text(json.dumps(raw))
    assert any("test split" in e and "is empty" in e for e in preflight(read_dataset(cfg.dataset)).errors)


@pytest.mark.parametrize(("content", "message"), [
    ('{"train": [["a.jpg", 0, "x"]', r"split_MINI\.json line 1 column \d+: not valid JSON"),
    ('{"train": [["a.jpg", "l", "x"]], "val": [], "test": []}', r"train\[0\]: label 'l' is not"),
    ('{"train": [["a.jpg", 0]], "val": [], "test": []}', r"train\[0\]: expected \[relpath, label, classname\]"),
    ('[1, 2]', r"must hold an object"),
])
def test_split_file_schema_errors_are_one_line(tmp_path: Path, content: str, message: str) -> None:
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 0, "test": 1})
    (root / "MINI" / "split_MINI.json").write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_dataset(cfg_for(root, tmp_path).dataset)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ 10. staleness
def test_data_changes_make_a_cell_stale_runtime_settings_do_not(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 1, "val": 0, "test": 1})
    cfg = cfg_for(root, tmp_path / "out")
    before = data_fingerprint(read_dataset(cfg.dataset))
    result = {"status": "ok", "hashes": {"config": config_hash(cfg), "data": before}}
    assert sweep_status.result_status(result, config_hash(cfg), before) == ("done", "")
    image = next((root / "MINI" / "MINI").rglob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")                    # edited in place: size and mtime change
    after = data_fingerprint(read_dataset(cfg.dataset))
    assert after != before
    assert sweep_status.result_status(result, config_hash(cfg), after)[0] == "stale"
    for runtime in ("trainer.threads=1", "trainer.accelerator=cpu", "reuse_backbone=false",
                    "trainer.num_workers=2", "logger=csv"):
        assert config_hash(cfg_for(root, tmp_path / "out", runtime)) == config_hash(cfg), runtime
    assert config_hash(cfg_for(root, tmp_path / "out", "method.epochs=7", "method=coop")) != config_hash(cfg)


# ------------------------------------------------------------------------------ 8. cell paths, integers
def test_swept_settings_get_their_own_folders(tmp_path: Path) -> None:
    args = ["method=coop", "backbone=tiny_clip", "method.epochs=1,2", "seed=1", f"paths.output_dir={tmp_path}"]
    cells = sweep_grid.compose_cells(sweep_grid.grid(args))
    assert [c.label.split("/")[3] for c in cells] == ["coop+epochs_1", "coop+epochs_2"]
    assert [c.identity["variant"] for c in cells] == ["epochs_1", "epochs_2"]
    named = sweep_grid.compose_cells(sweep_grid.grid([*args, "variant=short"]))
    assert named[1].label.split("/")[3] == "coop+short+epochs_2"
    assert claims.variant_keys(sweep_grid.grid(["method=coop,zeroshot", "seed=1,2", "trainer.threads=1,2"])) == []


def test_shots_and_seed_must_be_integers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = f"paths.output_dir={tmp_path}"
    assert cli.main(["sweep", "backbone=tiny_clip", "shots=1.5", out, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()  # refused when composed (typed schema), in one line naming the override
    assert len(err.splitlines()) == 1 and "shots=1.5" in err and "Integer" in err, err
    assert cli.main(["sweep", "backbone=tiny_clip", "seed=abc", out, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed=abc" in err and "Integer" in err, err
    assert cli.main(["sweep", "backbone=tiny_clip", "shots=4", out, "--dry-run"]) == 0
    assert "shots_4/seed_1" in capsys.readouterr().out


def test_two_cells_of_one_sweep_never_share_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = cli.main(["sweep", "backbone=tiny_clip", "trainer=default,gpu", f"paths.output_dir={tmp_path}", "--dry-run"])
    assert rc == 2 and "both write few_shot/demo_btmri/tiny_clip/coop/shots_16/seed_1" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 9, 11. backbones, messages
def test_pretrained_is_honoured_or_refused_for_local_folder_backbones() -> None:
    from promptbench.backbones import BackboneLoadError, build_backbone

    cfg = compose(["backbone=medclip_tiny"]).backbone
    shipped = build_backbone(cfg)
    with pytest.raises(BackboneLoadError, match=r"backbone\.pretrained=laion2b .* must be a file path"):
        build_backbone({**cfg, "pretrained": "laion2b"})
    honoured = build_backbone({**cfg, "pretrained": shipped.info.weights_path})
    assert honoured.info.weights_path == shipped.info.weights_path


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = f"paths.output_dir={tmp_path}"
    assert cli.main(["table", "--experiment", "nosuch", out]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("promptbench table: ") and "experiment/nosuch" in err and "\n" not in err
    assert cli.main(["sweep", "method=coop,nosuch", out]) == 2
    assert "unknown method 'nosuch'" in capsys.readouterr().err  # the config-group did-you-mean line
    record_outcome(tmp_path / "results/few_shot/d/b/m/shots_1/seed_1/result.json", {  # at its cell's path
        "status": "ok", "identity": {"protocol": "few_shot", "dataset": "d", "backbone": "b", "method": "m",
                                     "variant": "", "shots": 1, "seed": 1},
        "metrics": {"test/acc": 0.5, "test/macro_f1": "high"}})
    assert cli.main(["table", "--metric", "nosuch", "--no-plots", out]) == 2
    assert "--metric nosuch: no result has it (available: acc)" in capsys.readouterr().err
    assert cli.main(["table", "--no-plots", out]) == 0                  # the string metric is ignored, not fatal


def test_a_launcher_error_still_prints_the_summary_then_one_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    def disk_full(_args: list[str]) -> int:
        raise OSError(28, "No space left on device", str(tmp_path / "hydra"))

    args = ["method=zeroshot", "backbone=tiny_clip", "shots=1", f"paths.output_dir={tmp_path}"]
    with pytest.raises(OSError):
        driver.sweep(args, launch=disk_full)
    assert "sweep finished: 0 done, 0 stale, 0 failed, 1 missing" in capsys.readouterr().out
    monkey = pytest.MonkeyPatch()
    monkey.setattr(cli, "_hydra_main", lambda argv, prog="train": disk_full(argv))
    try:
        assert cli.main(["sweep", *args]) == 1
    finally:
        monkey.undo()
    err = capsys.readouterr().err.strip()
    assert err.startswith("promptbench sweep: OSError: [Errno 28] No space left on device") and "\n" not in err


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys, "argv", ["promptbench"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["train", "backbone=tiny_clip", "method=zeroshot", f"paths.output_dir={blocker}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("promptbench train: ") and str(blocker) in err and "\n" not in err


def test_a_result_hashed_before_a_key_became_runtime_only_is_not_stale(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    cfg = compose(["backbone=tiny_clip", "method=zeroshot", "trainer.threads=2", f"paths.output_dir={tmp_path}"])
    old_hash = "0123456789abcdef"                       # what the hash was when trainer.threads still counted
    result = {"status": "ok", "hashes": {"config": old_hash}, "config": OmegaConf.to_container(cfg, resolve=True)}
    assert sweep_status.result_status(result, config_hash(cfg)) == ("done", "")
    other = compose(["backbone=tiny_clip", "method=zeroshot", "method.epochs=3", f"paths.output_dir={tmp_path}"])
    assert sweep_status.result_status(result, config_hash(other))[0] == "stale"


def test_non_finite_metrics_and_losses_are_divergence() -> None:
    import torch

    from promptbench.engine.callbacks import FiniteLossGuard
    from promptbench.engine.guards import Diverged, check_finite

    check_finite({"test/acc": 0.5})
    with pytest.raises(Diverged, match=r"metric test/acc is inf \(method.optim.lr=1\)"):
        check_finite({"test/acc": float("inf"), "train/loss": 0.1}, "method.optim.lr=1")

    class Trainer:
        current_epoch, global_step = 0, 3

    FiniteLossGuard().on_train_batch_end(Trainer(), None, {"loss": torch.tensor(1.0)}, None, 0)
    with pytest.raises(Diverged, match="training loss is nan at epoch 0 step 3"):
        FiniteLossGuard().on_train_batch_end(Trainer(), None, torch.tensor(float("nan")), None, 0)


def test_malformed_descriptions_json_is_one_line(tmp_path: Path) -> None:
    from promptbench.data.descriptions import load_descriptions

    bad = tmp_path / "d.json"
    bad.write_text('{"glioma tumor": ["a",]}')
    with pytest.raises(ValueError, match=rf"{bad} line 1 column \d+: not valid JSON"):
        load_descriptions({"name": "x", "descriptions": str(bad), "classnames": ["glioma tumor"]})


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException):
        cli.main(["table", "--experiment", "nosuch", "--debug", f"paths.output_dir={tmp_path}"])


def test_train_multirun_hands_its_swept_keys_to_the_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(cli, "_hydra_main",
                        lambda argv, prog="train": seen.append(os.environ[claims.VARIANT_KEYS_ENV]) or 0)
    monkeypatch.delenv(claims.VARIANT_KEYS_ENV, raising=False)
    assert cli.main(["train", "-m", "method=coop", "method.epochs=1,2", "seed=1,2"]) == 0
    assert seen == ["method.epochs"]
