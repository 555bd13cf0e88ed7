"""Issue 21, inputs: the typed schema's ranges and allowed values (checked at composition by ``train``, ``train -m``,
``sweep`` and ``sweep --dry-run``), every shipped preset within them, and the data readers' path, folder, class
name, orientation and decompression-bomb checks, on real files in temporary folders."""

from __future__ import annotations

import json
import logging
import typing
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from promptbench import cli
from promptbench.config import CONFIG_DIR, compose, schema
from promptbench.data.preflight import preflight
from promptbench.data.readers import read_dataset
from promptbench.data.records import ImageError, escapes_root
from promptbench.engine.results import ConfigValueError
from promptbench.sweep.grid import compose_cells, grid

CLASSES = ["glioma tumor", "meningioma tumor"]


# ------------------------------------------------------------------------------------------- A. schema ranges
@pytest.mark.parametrize(("overrides", "needle"), [
    (["shots=0"], "shots=0 is not allowed: shots must be an integer >= 1"),
    (["shots=-1"], "shots=-1 is not allowed: shots must be an integer >= 1"),
    (["method=coop", "method.epochs=0"], "method.epochs=0 is not allowed: method.epochs must be an integer >= 1 "
                                         "for coop, which trains"),
    (["trainer.precision=32-ture"], "trainer.precision='32-ture' is not allowed: trainer.precision must be one of "
                                    "32-true, 16-mixed, bf16-mixed"),
    (["method.optim.lr=0"], "method.optim.lr=0.0 is not allowed: method.optim.lr must be a number > 0"),
    (["method.optim.lr=inf"], "method.optim.lr=inf is not allowed"),
    (["method.batch_size=0"], "method.batch_size must be an integer >= 1"),
    (["seed=-1"], "seed must be an integer >= 0"),
    (["trainer.num_workers=-2"], "trainer.num_workers must be an integer >= 0"),
    (["trainer.threads=0"], "trainer.threads must be an integer >= 1"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size must be an integer >= 1"),
    (["method.optim.name=sgdd"], "method.optim.name must be one of sgd, adamw, adam"),
    (["method.optim.scheduler=null"], "method.optim.scheduler=null is not allowed"),
    (["trainer.accelerator=gpux"], "trainer.accelerator must be one of auto, cpu, gpu"),
])
def test_out_of_range_values_are_refused_at_composition(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigValueError) as err:
        compose(overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_in_range_edges_compose() -> None:
    for overrides in (["shots=1", "seed=0", "trainer.num_workers=0", "trainer.threads=1"],
                      ["method=zeroshot", "method.epochs=0"], ["method=tpt"], ["trainer.precision=bf16-mixed"],
                      ["trainer.precision=16"], ["method.epochs=1"]):
        compose(overrides)
    with pytest.raises(ConfigValueError, match=r"method.epochs=-1 is not allowed: method.epochs must be an integer "
                                               r">= 0$"):
        compose(["method=zeroshot", "method.epochs=-1"])  # a method that does not train: 0 is fine, -1 is not


def test_every_numeric_schema_key_has_a_range_and_every_choice_key_its_values() -> None:
    hints_of = {}

    def walk(tp: type, prefix: str = "") -> None:
        hints = typing.get_type_hints(tp)
        for f in schema.fields(tp):
            if schema.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                hints_of[f"{prefix}{f.name}"] = hints[f.name]

    walk(schema.TrainSchema)
    ruled = {key for key, *_ in schema.rules()}
    numeric = {k for k, tp in hints_of.items() if {int, float} & {tp, *typing.get_args(tp)}}
    assert numeric <= ruled, f"numeric keys without a range: {sorted(numeric - ruled)}"
    free_text = {"variant", "method.name"}  # names, not choices
    strings = {k for k, tp in hints_of.items() if str in (tp, *typing.get_args(tp))} - free_text
    assert strings <= ruled, f"string keys without allowed values: {sorted(strings - ruled)}"


def test_precisions_and_accelerators_are_lightnings() -> None:
    from lightning.fabric import connector
    from lightning.pytorch.accelerators import AcceleratorRegistry

    accepted = {str(v) for alias in ("_PRECISION_INPUT_STR", "_PRECISION_INPUT_STR_ALIAS", "_PRECISION_INPUT_INT")
                for v in typing.get_args(getattr(connector, alias))}
    assert set(schema.PRECISIONS) == accepted
    assert set(AcceleratorRegistry.available_accelerators()) | {"gpu", "auto"} <= set(schema.ACCELERATORS) | {"xla"}


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize("command", [
    ["train", "shots=0"],
    ["train", "-m", "shots=1,0"],
    ["sweep", "shots=-1"],
    ["sweep", "--dry-run", "shots=0"],
    ["train", "method.epochs=0"],
    ["sweep", "method=zeroshot,coop", "method.epochs=0"],
    ["train", "trainer.precision=32-ture"],
    ["sweep", "--dry-run", "trainer.precision=32-ture"],
])
def test_every_command_refuses_a_bad_value_before_writing_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture, command: list[str]) -> None:
    out = tmp_path / "outputs"
    assert cli.main([*command, "backbone=tiny_clip", f"paths.output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not allowed: " in err, err
    key, value = next(a.split("=", 1) for a in command if a.startswith(("shots", "method.epochs", "trainer.")))
    assert f"{key}={value.split(',')[-1]}" in err.replace("'", "")
    assert _nothing_written(out)


def test_run_cell_refuses_a_config_composed_by_hydra_itself(capsys: pytest.CaptureFixture) -> None:
    from promptbench.sweep.driver import run_cell

    cfg = compose(["shots=1"])
    cfg.shots = 0  # as if composed by Hydra's own main, e.g. through a launcher that did not check the grid
    with pytest.raises(SystemExit) as stop:
        run_cell(cfg)
    assert stop.value.code == 2 and "shots=0 is not allowed" in capsys.readouterr().err


def _preset_combinations() -> list[list[str]]:
    """Every experiment's grid (one cell per set of group choices), every method under every protocol, every
    dataset, and every conf/tuned file's (protocol, method, dataset)."""
    combos: list[list[str]] = []
    for exp in sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")):
        seen: set[tuple[str, ...]] = set()
        for cell in grid([f"experiment={exp}"]):
            groups = tuple(o for o in cell if o.split("=")[0] in ("method", "dataset", "protocol", "backbone"))
            if groups not in seen:
                seen.add(groups)
                combos.append([f"experiment={exp}", *cell])
    methods = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml") if not p.stem.startswith("_"))
    protocols = sorted(p.stem for p in (CONFIG_DIR / "protocol").glob("*.yaml"))
    datasets = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml") if not p.stem.startswith("_"))
    combos += [[f"method={m}", f"protocol={p}"] for m in methods for p in protocols]
    combos += [[f"dataset={d}"] for d in datasets]
    combos += [[f"protocol={f.parts[-3]}", f"method={f.parts[-2]}", f"dataset={f.stem}"]
               for f in sorted((CONFIG_DIR / "tuned").glob("*/*/*.yaml"))]
    return combos


def _yaml_node(path: Path) -> DictConfig:
    """A ``# @package _global_`` preset's own keys, after the presets its ``defaults`` list (tuned files),
    without Hydra (``defaults`` and ``hydra`` dropped; ``override /group: x`` entries are not merged)."""
    node = OmegaConf.load(path)
    merged = OmegaConf.create()
    for entry in node.get("defaults") or []:
        if isinstance(entry, str) and entry.startswith("/"):
            merged = OmegaConf.merge(merged, _yaml_node(CONFIG_DIR / f"{entry[1:]}.yaml"))
    own = {k: v for k, v in OmegaConf.to_container(node).items() if k not in ("defaults", "hydra")}
    return OmegaConf.merge(merged, own)


def test_every_shipped_preset_is_within_the_ranges_quick() -> None:
    """Each method composed once, then (as the defaults list orders them) every conf/tuned file of it and every
    experiment's own keys and swept values merged on top and validated, on the checked subtrees only; the
    exhaustive composition of every combination is the slow test below (about 5 min on 2 shared cores)."""
    checked_roots = ("shots", "seed", "method", "trainer", "protocol")

    def slim(node: DictConfig | dict, resolve: bool = False) -> DictConfig:
        tree = OmegaConf.to_container(node, resolve=resolve) if isinstance(node, DictConfig) else node
        return OmegaConf.create({k: v for k, v in tree.items() if k in checked_roots})

    methods = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml") if not p.stem.startswith("_"))
    composed = {m: slim(c.cfg, resolve=True) for m, c in zip(methods, compose_cells(
        [[f"method={m}", "~tuned"] for m in methods], with_status=False, keep_config=True))}
    experiments = [(slim(_yaml_node(p)), OmegaConf.load(p).get("hydra", {}).get("sweeper", {}).get("params", {}))
                   for p in sorted((CONFIG_DIR / "experiment").glob("*.yaml"))]
    tuned = sorted((CONFIG_DIR / "tuned").glob("*/*/*.yaml"))
    checked = 0
    for method, base in composed.items():
        for layer in [None] + [f for f in tuned if f.parts[-2] == method]:
            cfg = base if layer is None else OmegaConf.merge(base, slim(_yaml_node(layer)),
                                                             {"protocol": {"name": layer.parts[-3]}})
            schema.validate(cfg)
            for own, params in experiments:
                with_exp = OmegaConf.merge(cfg, own)
                schema.validate(with_exp)
                checked += 1
                for key, values in params.items():
                    if (CONFIG_DIR / key).is_dir() or "${" in str(values):
                        continue  # a config group (composed in the slow test), not a value
                    before = OmegaConf.select(with_exp, key)
                    for value in str(values).split(","):
                        OmegaConf.update(with_exp, key, int(value) if value.isdigit() else value)
                        schema.validate(with_exp)
                        checked += 1
                    OmegaConf.update(with_exp, key, before)
    assert checked > 1000


@pytest.mark.slow
def test_every_shipped_preset_composes_within_the_ranges() -> None:
    combos = _preset_combinations()
    assert len(combos) > 200
    cells = compose_cells(combos, with_status=False)  # validates every cell (promptbench.config.schema.validate)
    assert len(cells) == len(combos)


# ------------------------------------------------------------------------------------------- B. data inputs
def _jpeg(path: Path, colour: tuple[int, int, int] = (120, 40, 200), size: tuple[int, int] = (24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)
    return path


def _biomedcoop(root: Path, entries: dict[str, list[list]] | None = None, name: str = "MINI") -> dict:
    """A BiomedCoOp-layout dataset under ``root`` with two classes, one image per class and split."""
    base = root / name
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for s in split:
        for label, cls in enumerate(CLASSES):
            rel = f"{cls.replace(' ', '_')}/{s}.jpg"
            _jpeg(base / name / rel)
            split[s].append([rel, label, cls])
    for s, extra in (entries or {}).items():
        split[s].extend(extra)
    (base / f"split_{name}.json").write_text(json.dumps(split))
    return {"name": "mini", "format": "biomedcoop", "root": str(root), "folder": name, "classnames": None}


def test_split_entries_outside_the_image_folder_are_refused(tmp_path: Path) -> None:
    outside = _jpeg(tmp_path / "elsewhere" / "ct.jpg")
    for bad in ("../../elsewhere/ct.jpg", str(outside), "glioma_tumor/../../../elsewhere/ct.jpg"):
        root = tmp_path / f"d{abs(hash(bad))}"
        cfg = _biomedcoop(root, {"test": [[bad, 0, CLASSES[0]]]})
        with pytest.raises(ValueError) as err:
            read_dataset(cfg)
        msg = str(err.value)
        assert "split_MINI.json test[2]" in msg and repr(bad) in msg and "outside the image folder" in msg
        assert "\n" not in msg
    assert not escapes_root("glioma_tumor/./a/../b.jpg") and escapes_root("..") and escapes_root("C:/x.jpg")


def test_symlinked_datasets_still_read_and_keys_are_checked_when_loading(tmp_path: Path) -> None:
    real = tmp_path / "real"
    cfg = _biomedcoop(real)
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    splits = read_dataset({**cfg, "root": str(tmp_path / "linked")})
    assert len(splits.train) == 2 and splits.load_image(splits.test[0].key).size == (24, 24)
    with pytest.raises(ImageError, match="outside the image folder"):
        splits.load_image("../../real/MINI/MINI/glioma_tumor/test.jpg")


def test_class_folders_skip_hidden_files_and_os_metadata(tmp_path: Path) -> None:
    base = tmp_path / "folders"
    for split in ("train", "test"):
        for cls in ("benign", "malignant"):
            _jpeg(base / split / cls / "a.jpg")
            (base / split / cls / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
            (base / split / cls / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        _jpeg(base / split / ".ipynb_checkpoints" / "a-checkpoint.jpg")
        _jpeg(base / split / "__MACOSX" / "benign" / "._a.jpg")
        (base / split / "desktop.ini").write_text("[.ShellClassInfo]\n")
    cfg = {"name": "folders", "format": "image_folder", "root": str(tmp_path), "folder": "folders"}
    splits = read_dataset(cfg)
    assert splits.classnames == ["benign", "malignant"]
    assert [r.key for r in splits.train] == ["train/benign/a.jpg", "train/malignant/a.jpg"]
    assert read_dataset({**cfg, "classnames": ["benign", "malignant"]}).classnames == ["benign", "malignant"]
    assert not preflight(splits, shots=1).errors


def test_duplicate_class_names_are_refused(tmp_path: Path) -> None:
    # two labels with one name in a split file
    cfg = _biomedcoop(tmp_path / "b", {"train": [["meningioma_tumor/train.jpg", 2, "glioma tumor"]]})
    with pytest.raises(ValueError, match=r"names one class twice: label 0 'glioma tumor' and label 2 'glioma tumor'"):
        read_dataset(cfg)
    # one label with two names (refused before, still refused)
    cfg = _biomedcoop(tmp_path / "c", {"train": [["meningioma_tumor/train.jpg", 1, "glioma tumor 2"]]})
    with pytest.raises(ValueError, match="gives label 1 two class names"):
        read_dataset(cfg)
    # a dataset config's classnames list
    base = tmp_path / "f" / "folders"
    for split in ("train", "test"):
        for cls in ("normal", "pneumonia", "Pneumonia_"):
            _jpeg(base / split / cls / "a.jpg")
    cfg = {"name": "f", "format": "image_folder", "root": str(tmp_path / "f"), "folder": "folders"}
    with pytest.raises(ValueError, match=r"dataset.classnames names one class twice: label 0 'normal' and label 1 "
                                         r"'normal'"):
        read_dataset({**cfg, "classnames": ["normal", "normal"]})
    # two class folders that read as one class name
    with pytest.raises(ValueError, match=r"class folders of .* names one class twice: label 0 'Pneumonia ' and "
                                         r"label 2 'pneumonia'"):
        read_dataset(cfg)


def test_exif_rotated_jpeg_is_read_upright(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: shown rotated 90 degrees clockwise
    path = tmp_path / "rot" / "rot" / "a" / "x.jpg"
    path.parent.mkdir(parents=True)
    stored.save(path, exif=exif, quality=95)
    plain = tmp_path / "rot" / "rot" / "a" / "plain.jpg"
    stored.save(plain, quality=95)
    split = {s: [["a/x.jpg", 0, "a"], ["a/plain.jpg", 0, "a"]] for s in ("train", "val", "test")}
    (tmp_path / "rot" / "split_rot.json").write_text(json.dumps(split))
    splits = read_dataset({"name": "rot", "format": "biomedcoop", "root": str(tmp_path), "folder": "rot"})
    upright = np.asarray(splits.load_image("a/x.jpg"), dtype=int)
    assert upright.shape == (40, 20, 3)           # a viewer shows it 20 wide, 40 high
    assert upright[5, 10, 0] > 200 > upright[5, 10, 2]   # top: the stored left half (red)
    assert upright[35, 10, 2] > 200 > upright[35, 10, 0]  # bottom: the stored right half (blue)
    with Image.open(plain) as img:  # an image without an orientation tag: pixels exactly as stored
        assert np.array_equal(np.asarray(splits.load_image("a/plain.jpg")), np.asarray(img.convert("RGB")))


def test_decompression_bombs_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    cfg = _biomedcoop(tmp_path / "bomb")
    splits = read_dataset(cfg)
    key = splits.train[0].key
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 24 x 24 = 576 > 2 x 100: PIL's error
    with pytest.raises(ImageError) as err:
        splits.load_image(key)
    assert str(splits.image_root / key) in str(err.value) and "decompression-bomb" in str(err.value)
    errors = preflight(splits, shots=1).errors
    assert errors and key in errors[0] and "decompression-bomb" in errors[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 576 in (400, 800]: PIL's warning, the image is read
    with caplog.at_level(logging.WARNING, logger="promptbench.data.records"):
        assert splits.load_image(key).size == (24, 24)
    assert any(str(splits.image_root / key) in r.getMessage() for r in caplog.records)
