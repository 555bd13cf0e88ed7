"""Conventions users bring from lightning-hydra-template and pip (issue 22, item 6): did-you-mean for config-group
options, ``train --help`` without implementation-detail groups, the ``debug`` group, top-level ``tags``, and the
lock file beside pyproject's open ranges."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from promptbench import cli
from promptbench.config import CONFIG_DIR, compose
from promptbench.config.choices import choice_error, group_options, help_groups
from promptbench.engine.limits import capped_budget, is_debug_result, trainer_limits
from promptbench.engine.results import config_hash, identity, is_done
from promptbench.tracking.tags import run_tags

REPO = Path(__file__).resolve().parents[1]
needs_demo = pytest.mark.skipif(not (REPO / "data" / "demo" / "BTMRI").is_dir(), reason="no vendored demo data")
TINY = ["backbone=tiny_clip", "method=coop", "dataset=demo_btmri", "shots=2"]


# ------------------------------------------------------------------------------------------- did you mean
@pytest.mark.parametrize(("override", "group", "close"), [
    ("method=cop", "method", "coop"), ("dataset=btmr", "dataset", "btmri"), ("backbone=biomedclp", "backbone",
                                                                            "biomedclip"),
    ("protocol=fewshot", "protocol", "few_shot"), ("logger=tensorbord", "logger", "tensorboard"),
    ("trainer=gpus", "trainer", "gpu"), ("experiment=fewshot", "experiment", "few_shot"),
    ("debug=fats", "debug", "fast"), ("fidelity=papers", "fidelity", "paper"),
    ("hydra/launcher=jobib", "hydra/launcher", "joblib"),
])
def test_unknown_option_of_every_group_is_one_line_with_suggestions(override: str, group: str, close: str) -> None:
    value = override.split("=", 1)[1]
    error = choice_error([override])
    assert error is not None and "\n" not in error
    assert error.startswith(f"unknown {group} '{value}'; did you mean ") and close in error.split("?")[0]
    assert "(available: " in error and "_base" not in error


def test_known_options_sweeps_and_nulls_pass() -> None:
    assert choice_error(["method=coop", "dataset=btmri", "experiment=null", "debug=default", "shots=4",
                         "method.epochs=3", "hydra/launcher=joblib", "method=_base", "+tags=[a]"]) is None
    error = choice_error(["method=coop,cop"])  # inside a sweep list
    assert error is not None and error.startswith("unknown method 'cop'; did you mean coop")
    assert "cocoop" in error.split("?")[0]
    assert choice_error(["method=choice(zeroshot,kgcop)"]).startswith("unknown method 'kgcop'")


def test_user_config_folders_count_as_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user, extra = tmp_path / "user", tmp_path / "extra"
    (user / "method").mkdir(parents=True)
    (user / "method" / "coop_long.yaml").write_text("defaults:\n  - coop\n  - _self_\nepochs: 99\n")
    (extra / "dataset").mkdir(parents=True)
    (extra / "dataset" / "my_xray.yaml").write_text("name: my_xray\n")
    monkeypatch.setenv("PROMPTBENCH_CONFIG_PATH", str(user))
    assert "coop_long" in group_options("method")
    assert choice_error(["method=coop_long"]) is None
    assert "coop_long" in choice_error(["method=coop_lng"]).split("?")[0]
    search = f"hydra.searchpath=[file://{extra}]"
    assert choice_error(["dataset=my_xray"]) is not None  # not on the search path without the override
    assert choice_error(["dataset=my_xray", search]) is None
    assert "my_xray" in choice_error(["dataset=my_xra", search])


def test_cli_train_and_sweep_print_one_line_before_hydra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "method=cop"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("promptbench: train: unknown method 'cop'; did you mean coop") and "\n" not in err
    assert cli.main(["train", "-m", "method=coop,cop", "seed=1"]) == 2
    assert "unknown method 'cop'" in capsys.readouterr().err
    assert cli.main(["sweep", "experiment=demo", "method=coop,cop", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweep: unknown method 'cop'; did you mean coop") and "\n" not in err
    (tmp_path / "experiment").mkdir()  # a typo in an experiment's own grid is caught too
    (tmp_path / "experiment" / "typo.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      method: zeroshot,cop\n")
    monkeypatch.setenv("PROMPTBENCH_CONFIG_PATH", str(tmp_path))
    assert cli.main(["sweep", "experiment=typo", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("sweep: unknown method 'cop'")


# ------------------------------------------------------------------------------------------- --help
def test_help_groups_hide_base_and_tuned() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", return_hydra_config=True)
    template = OmegaConf.select(cfg, "hydra.help.template")  # resolved: ${pb_help_groups:} filled in
    assert "$CONFIG" in template and "== Configuration groups ==" in template
    groups = dict(line.split(": ", 1) for line in help_groups().splitlines())
    assert {"method", "dataset", "backbone", "debug", "logger", "experiment"} <= set(groups)
    assert not any(g.startswith("tuned") for g in groups) and "hydra" not in groups
    assert "_base" not in help_groups() and "coop" in groups["method"].split(", ")


def test_train_help_output(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "promptbench.cli", "train", "--help"], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    groups = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert re.search(r"^method: .*\bcoop\b", groups, re.M) and re.search(r"^debug: default, fast$", groups, re.M)
    assert "_base" not in groups and "tuned" not in groups
    assert "shots: 16" in proc.stdout and "debug=default" in proc.stdout  # the config and the header


# ------------------------------------------------------------------------------------------- debug group
def test_debug_config_is_its_own_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTBENCH_OUTPUT", str(tmp_path))
    real, debug, fast = compose(TINY), compose([*TINY, "debug=default"]), compose([*TINY, "debug=fast"])
    assert debug.debug_run is True and "debug_run" not in real
    assert debug.paths.output_dir == f"{tmp_path}/debug" and real.paths.output_dir == str(tmp_path)
    assert list(debug.logger.kinds) == [] and debug.features.enabled is False
    assert trainer_limits(debug) == {"limit_train_batches": 2, "limit_val_batches": 2, "limit_test_batches": 2}
    assert trainer_limits(fast)["limit_train_batches"] == 1 and trainer_limits(real) == {}
    assert config_hash(debug) != config_hash(real)  # never taken for the real cell's result
    assert capped_budget(debug, 50, None) == (1, None) and capped_budget(debug, 2, 1000) == (1, 1000)
    assert capped_budget(real, 50, None) == (50, None) and capped_budget(debug, 0, None) == (0, None)
    with pytest.raises(ValueError, match="limit_train_batches"):
        trainer_limits(OmegaConf.create({"trainer": {"limit_train_batches": 0}}))


@needs_demo
def test_debug_run_end_to_end_is_kept_out_of_tables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import shutil

    from promptbench.engine.results import read_result, result_path
    from promptbench.engine.run import run
    from promptbench.report.collect import collect

    monkeypatch.setenv("PROMPTBENCH_OUTPUT", str(tmp_path))
    cfg = compose([*TINY, "debug=default"])
    result = run(cfg)
    path = result_path(cfg)
    assert path.is_relative_to(tmp_path / "debug" / "results") and read_result(path)["status"] == "ok"
    assert result["timing"]["epochs"] == 1 and 1 <= result["timing"]["steps"] <= 2
    assert is_debug_result(result) and not (path.parent / "csv").exists()  # no logger
    assert collect(tmp_path).empty and collect(tmp_path / "debug" / "results").empty
    real = tmp_path / "real" / "results" / path.relative_to(tmp_path / "debug" / "results")  # same file, unmarked
    real.parent.mkdir(parents=True)
    shutil.copy(path, real)
    text = real.read_text().replace('"debug_run": true', '"debug_run": false')
    real.write_text(text)
    assert len(collect(tmp_path / "real")) == 1
    assert not is_done(compose(TINY))  # the real cell is still to run


# ------------------------------------------------------------------------------------------- tags
def test_tags_are_metadata_not_identity() -> None:
    plain, tagged = compose(TINY), compose([*TINY, "tags=[ablation,run2]"])
    assert list(tagged.tags) == ["ablation", "run2"] and list(plain.tags) == []
    assert config_hash(plain) == config_hash(tagged) and identity(plain) == identity(tagged)
    assert run_tags(tagged) == ["ablation", "run2"] and run_tags({"tags": "one"}) == ["one"]
    assert run_tags({"tags": ["a", "a", " "]}) == ["a"] and run_tags({}) == []
    with pytest.raises(ValueError, match="tags="):
        run_tags({"tags": [{"a": 1}]})


@needs_demo
def test_tags_reach_every_logger_and_result(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from promptbench.engine.results import cell_dir
    from promptbench.engine.run import run
    from tests.test_loggers import offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [*TINY, "debug=fast", "logger=wandb", "logger.kinds=[csv,tensorboard,wandb]",
                 f"paths.output_dir={tmp_path}"]
    cfg = compose([*overrides, "tags=[ablation,run2]"])
    result = run(cfg)
    cell = cell_dir(cfg)
    assert result["tags"] == ["ablation", "run2"] and result["config"]["tags"] == ["ablation", "run2"]
    _, info = offline_run(cell)
    assert {"ablation", "run2", "coop", "2-shot"} <= set(info["tags"])
    hparams = yaml.safe_load((cell / "csv" / "hparams.yaml").read_text())
    assert hparams["tags"] == ["ablation", "run2"] and hparams["identity"]["method"] == "coop"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((cell / "tensorboard").glob("version_*"))), size_guidance={"tensors": 0})
    events.Reload()
    assert "tags/text_summary" in events.Tags()["tensors"]
    retagged = compose([*overrides, "tags=[other]"])  # retagging never makes the finished cell stale
    assert config_hash(retagged) == result["hashes"]["config"] and is_done(retagged)


# ------------------------------------------------------------------------------------------- lock file, CPU torch
def _write_lock():
    import importlib.util

    spec = importlib.util.spec_from_file_location("write_lock", REPO / "scripts" / "write_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_pins_the_tokenisation_stack_within_pyproject_ranges() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    lock_tool = _write_lock()
    lock = lock_tool.read_lock(REPO / "requirements-lock.txt")
    for name in ("open-clip-torch", "transformers", "timm", "tokenizers", "torch", "torchvision", "hydra-core",
                 "lightning", "omegaconf"):
        assert name in lock, name
    constraints = lock_tool.read_lock(REPO / "constraints.txt")
    assert constraints and all(lock[name] == version for name, version in constraints.items())  # torch, vision
    for req in lock_tool.project_requirements(REPO / "pyproject.toml"):  # every direct dependency, in its range
        name = canonicalize_name(req.name)
        assert name in lock, f"{name} is not locked"
        assert req.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} outside {req}"
    for name, version in lock.items():
        assert not name.startswith(lock_tool.HARDWARE_PREFIXES), name  # nvidia-*/triton: torch's own business
        assert Version(version).local is None and str(Requirement(f"{name}=={version}").specifier) == f"=={version}"


def test_install_cpu_uses_the_pinned_torch_from_the_cpu_index(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    proc = subprocess.run(["make", "-n", "install-cpu", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    constraints = [line for line in (REPO / "constraints.txt").read_text().splitlines()
                   if line.startswith(("torch==", "torchvision=="))]
    line = next(x for x in proc.stdout.splitlines() if "--index-url" in x)
    assert all(pin in line.split() for pin in constraints) and "https://download.pytorch.org/whl/cpu" in line
    assert "-c constraints.txt" in proc.stdout  # then the usual install, which keeps the CPU build
    docs = (REPO / "docs" / "install.md").read_text()
    assert " ".join(constraints) + " --index-url https://download.pytorch.org/whl/cpu" in docs


def test_batch_limits_are_counts_or_fractions() -> None:
    from omegaconf import OmegaConf

    from promptbench.engine.limits import trainer_limits

    assert trainer_limits(OmegaConf.create({"trainer": {"limit_train_batches": 2, "limit_val_batches": 0.5}})) == {
        "limit_train_batches": 2, "limit_val_batches": 0.5}
    for bad in (0, -1, 1.5, True, "two"):
        with pytest.raises(ValueError, match=r"trainer.limit_test_batches=.* must be a number of batches"):
            trainer_limits(OmegaConf.create({"trainer": {"limit_test_batches": bad}}))
