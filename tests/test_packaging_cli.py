"""Packaging (shipped folders, user config folders), the typed config schema, CLI conveniences (--version,
suggestions, completion, train checks), sweep preflight, launcher resolvers, progress lines, README blocks."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from promptbench import cli
from promptbench.cli.support import check_train_overrides, completion_script, is_completion_request, unknown_command
from promptbench.config import CONFIG_DIR, SOURCE_ROOT, compose, shipped_dir, with_search_path
from promptbench.sweep import progress
from promptbench.sweep.grid import compose_cells, grid
from promptbench.sweep.inputs import check_backbone, missing_inputs

REPO = Path(__file__).resolve().parents[1]


def _readme_tables():
    spec = importlib.util.spec_from_file_location("readme_tables", REPO / "scripts" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------- packaging
def test_shipped_folders_resolve_in_a_source_checkout() -> None:
    assert SOURCE_ROOT == REPO
    assert shipped_dir("conf") == REPO / "conf" == CONFIG_DIR
    assert shipped_dir("demo") == REPO / "data" / "demo"
    assert shipped_dir("assets") == REPO / "assets"
    cfg = compose(["backbone=tiny_clip"])
    assert cfg.paths.demo_root == str(REPO / "data" / "demo")
    assert cfg.backbone.source == f"local-dir:{REPO / 'promptbench' / 'backbones' / 'model_configs' / 'tiny_clip'}"


def test_user_config_folder_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "coop_long.yaml").write_text("defaults:\n  - coop\n  - _self_\nepochs: 99\n")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text("# @package _global_\ntrainer:\n  threads: 3\n")
    monkeypatch.setenv("PROMPTBENCH_CONFIG_PATH", str(tmp_path))
    cfg = compose(["method=coop_long"])
    assert (cfg.method.name, cfg.method.epochs, cfg.trainer.threads) == ("coop", 99, 3)
    merged = with_search_path(["seed=1", "hydra.searchpath=[file:///x]"])
    assert merged == ["seed=1", f"hydra.searchpath=[file:///x,file://{tmp_path.resolve()}]"]


@pytest.mark.slow
def test_wheel_ships_configs_demo_data_and_weights(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: the build leaves build/ and *.egg-info behind
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "outputs", "build", "*.egg-info",
                                                             "__pycache__"))
    (src / "conf" / "local").mkdir(exist_ok=True)
    (src / "conf" / "local" / "default.yaml").write_text("# @package _global_\nseed: 5\n")  # never shipped
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("promptbench-*.whl"))).namelist()
    for required in ("promptbench/conf/train.yaml", "promptbench/conf/method/coop.yaml",
                     "promptbench/demo_data/README.md", "promptbench/assets/backbones/medclip_tiny/config.json",
                     "promptbench/backbones/model_configs/tiny_clip/open_clip_config.json"):
        assert required in names, required
    assert not any(n.startswith("promptbench/conf/local/") and n.endswith(".yaml") for n in names)


# ------------------------------------------------------------------------------------------- typed schema
@pytest.mark.parametrize("override, key", [("method.epochs=two", "method.epochs"), ("shots=abc", "shots"),
                                           ("trainer.deterministic=maybe", "trainer.deterministic"),
                                           ("method.optim.lr=fast", "method.optim.lr")])
def test_bad_values_fail_when_composing(override: str, key: str) -> None:
    with pytest.raises(Exception, match="Error merging override") as info:
        compose([override])
    assert key in str(info.value.__cause__)


def test_schema_keeps_values_open_keys_and_struct_mode() -> None:
    cfg = compose(["method=coop", "method.optim.lr=1e-3", "method.n_ctx=8", "trainer.threads=null"])
    assert isinstance(cfg.method.optim.lr, float) and cfg.method.optim.lr == 0.001
    assert cfg.method.n_ctx == 8 and cfg.trainer.threads is None
    with pytest.raises(Exception, match="Could not override 'method.epochz'"):
        compose(["method.epochz=3"])


def test_train_rejects_a_bad_value_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "method.epochs=two"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "method.epochs=two" in err and "Integer" in err


def test_train_multirun_total_and_bad_sweep_value() -> None:
    assert check_train_overrides(["-m", "method=zeroshot,coop", "seed=1,2"]) == (4, None)
    total, error = check_train_overrides(["-m", "method=zeroshot", "shots=1,abc"])
    assert total is None and "shots=abc" in error


# ------------------------------------------------------------------------------------------- CLI
def test_version_and_suggestions(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("promptbench ")
    assert cli.main(["trian"]) == 2
    assert "did you mean 'train'?" in capsys.readouterr().err
    assert "did you mean" not in unknown_command("xyzzy", cli.COMMANDS)


def test_completion_script_registers_promptbench_only() -> None:
    script = completion_script(cli.COMMANDS)
    assert script.rstrip().endswith("complete -o nospace -o default -F _promptbench_complete promptbench")
    assert "train list sweep" in script
    assert is_completion_request(["-sc", "install=bash"]) and not is_completion_request(["-sc", "query=bash"])


# ------------------------------------------------------------------------------------------- preflight
def test_preflight_reports_each_missing_input_once(tmp_path: Path) -> None:
    cells = compose_cells(grid(["method=zeroshot,coop", "dataset=demo_btmri,btmri", f"paths.data_root={tmp_path}",
                                f"paths.output_dir={tmp_path}"]), with_status=False)
    missing = missing_inputs(cells)
    assert [(m.what, len(m.cells)) for m in missing] == [("dataset btmri", 2)]
    assert str(tmp_path) in missing[0].problem
    assert check_backbone(compose(["backbone=medclip_tiny"]).backbone) is None
    bad = compose(["backbone=medclip_tiny", f"backbone.source=local-dir:{tmp_path}"]).backbone
    assert "open_clip_config.json" in check_backbone(bad)


# ------------------------------------------------------------------------------------------- launchers
def test_submitit_launchers_get_one_array_and_a_job_name() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        slurm = hydra_compose("train", ["experiment=few_shot", "hydra/launcher=slurm"], return_hydra_config=True)
        local = hydra_compose("train", ["experiment=demo", "hydra/launcher=slurm_local"], return_hydra_config=True)
        joblib = hydra_compose("train", ["experiment=demo"], return_hydra_config=True)
    assert slurm.hydra.sweeper.max_batch_size is None and slurm.hydra.launcher.name == "pb_few_shot"
    assert slurm.hydra.launcher.max_num_timeout > 0
    assert local.hydra.sweeper.max_batch_size == min(200, os.cpu_count()) and local.hydra.launcher.name == "pb_demo"
    assert joblib.hydra.sweeper.max_batch_size == 200


# ------------------------------------------------------------------------------------------- progress
def test_progress_counts_in_finishing_order_with_eta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.START_ENV, str(time.time() - 100))
    monkeypatch.setenv(progress.PENDING_ENV, "3")
    assert progress.finish(tmp_path, "4", "skip") == ("[1/4] ", "")
    prefix, eta = progress.finish(tmp_path, "4", "done")
    assert prefix == "[2/4] " and "ETA 0:03:" in eta  # 100 s per ran cell, 2 cells left
    prefix, eta = progress.finish(tmp_path, "4", "failed")
    assert prefix == "[3/4] " and "ETA 0:00:5" in eta


# ------------------------------------------------------------------------------------------- README blocks
def test_readme_blocks_are_replaced_between_markers(tmp_path: Path) -> None:
    rt = _readme_tables()
    text = "a\n<!-- pb:t -->\n| old |\n<!-- /pb:t -->\nb <!-- pb:n -->1 %<!-- /pb:n --> c <!-- pb:x -->k<!-- /pb:x -->"

    def missing(_: Path) -> str:
        raise rt.SourceMissing("nothing")

    new, outcomes = rt.regenerate(text, tmp_path, {"t": lambda _: "\n| new |\n", "n": lambda _: "2 %", "x": missing})
    assert new == text.replace("| old |", "| new |").replace("1 %", "2 %")
    assert [(o.name, o.changed) for o in outcomes] == [("t", True), ("n", True), ("x", False)]
    assert rt.first_pipe_table("# T\n\n| a |\n|---|\n| 1 |\n\nnote | x") == "| a |\n|---|\n| 1 |"
    in_readme = {m["name"] for m in rt.MARKER.finditer((REPO / "README.md").read_text())}
    assert in_readme == set(rt.BLOCKS)
