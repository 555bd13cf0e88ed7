"""The package's one-way layers (docs/ARCHITECTURE.md), checked by import-linter's contract in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from promptbench.config import compose
from promptbench.methods.registry import load_all

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([LINT, str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's Python files and pyproject.toml in a temporary folder (where a back-edge can be planted)."""
    dest = tmp_path_factory.mktemp("layers")
    skip = shutil.ignore_patterns("*.pyc", "__pycache__", "resources", "*.json")
    shutil.copytree(ROOT / "promptbench", dest / "promptbench", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


@pytest.mark.skipif(not Path(LINT).exists(), reason="import-linter is a dev dependency (pip install -e .[dev])")
def test_the_layers_contract_holds_and_a_planted_back_edge_breaks_it(tree_copy: Path) -> None:
    kept = _lint(tree_copy)
    assert kept.returncode == 0, kept.stdout[-2000:]
    assert "promptbench layers KEPT" in kept.stdout
    planted = tree_copy / "promptbench" / "core" / "fileio.py"
    original = planted.read_text()
    try:  # the foundation importing the CLI: the kind of edge the layers forbid (even inside a function)
        back_edge = "\n\ndef _back_edge():\n    from promptbench.cli import main\n\n    return main\n"
        planted.write_text(original + back_edge)
        broken = _lint(tree_copy)
    finally:
        planted.write_text(original)
    assert broken.returncode != 0
    assert "promptbench.core is not allowed to import promptbench.cli" in broken.stdout
    assert "promptbench.core.fileio -> promptbench.cli" in broken.stdout


def test_every_module_imports_first_without_a_cycle() -> None:
    """Each module imported first in a clean package state: a module-level cycle would fail with a partially
    initialised module."""
    code = r"""
import importlib, pkgutil, sys
import promptbench
names = [m.name for m in pkgutil.walk_packages(promptbench.__path__, "promptbench.") if not m.name.endswith("__main__")]
bad = []
for name in names:
    for loaded in [k for k in sys.modules if k == "promptbench" or k.startswith("promptbench.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:
        bad.append(f"{name}: {type(err).__name__}: {err}")
print(len(names))
print("\n".join(bad))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    count, *errors = out.stdout.strip().splitlines()
    assert int(count) > 90 and not [e for e in errors if e.strip()], errors


def _loaded_after(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with ``prefixes`` that a fresh interpreter holds after importing ``modules``."""
    code = (f"import sys, {', '.join(modules)}; "
            f"print('\\n'.join(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_importing_the_config_layer_loads_no_sweep_machinery_and_no_torch() -> None:
    config = ["promptbench.config", "promptbench.config.schema", "promptbench.config.overrides"]
    heavy = ("promptbench.sweep", "promptbench.methods", "promptbench.engine", "hydra_plugins", "torch")
    assert _loaded_after(config, heavy) == []


def test_the_cli_and_status_modules_load_no_torch() -> None:
    """``promptbench --help``, status checks and table collection stay light: torch only where a model is built."""
    light = ["promptbench.cli", "promptbench.engine.results", "promptbench.sweep.status", "promptbench.report.collect",
             "promptbench.backbones.sources", "promptbench.backbones.weights"]
    assert _loaded_after(light, ("torch",)) == []


def _heavy_modules_after(argv: list[str]) -> list[str]:
    """Run ``promptbench <argv>`` in a fresh interpreter: its exit code, then the torch, Lightning and method
    modules it imported."""
    code = ("import sys, io, contextlib\nfrom promptbench.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        rc = main({argv!r})\n"
            "    except SystemExit as done:\n        rc = done.code or 0\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning') or "
            "m.startswith('promptbench.methods.') and m not in ('promptbench.methods.config', "
            "'promptbench.methods.registry'))\nprint(rc, *heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["completion", "bash"], ["train", "--help"],
                                  ["table", "--experiment", "demo", "--no-plots", "paths.output_dir={tmp}"]])
def test_commands_that_build_nothing_import_neither_torch_nor_the_methods(argv: list[str], tmp_path: Path) -> None:
    """``--help``, ``list``, ``completion`` (run on every TAB) and ``table`` (composes the demo grid, reads results)
    stay light: no torch, Lightning or method."""
    assert _heavy_modules_after([a.format(tmp=tmp_path) for a in argv]) == ["0"]


def test_table_with_plots_of_finished_results_imports_neither_torch_nor_the_methods(tmp_path: Path) -> None:
    """Drawing the figures of existing results groups methods by family read from the sources, not by importing
    every method (and torch with it)."""
    from .test_report import write

    for i, method in enumerate(["zeroshot", "coop", "vpt_shallow", "clip_lora"]):
        for shots in (1, 16):
            for seed in (1, 2, 3):
                write(tmp_path / "results", "ct", method, shots, seed, {"test/acc": 0.4 + 0.1 * i + 0.01 * seed})
    assert _heavy_modules_after(["table", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "tables"),
                                 "--expected", "none", f"paths.output_dir={tmp_path}",
                                 "+table.figure.split_by=group"]) == ["0"]
    drawn = sorted(p.name for p in (tmp_path / "tables").rglob("*.png"))
    assert any("text" in name for name in drawn) and any("visual" in name for name in drawn), drawn


@pytest.mark.parametrize("name", sorted(load_all()))
def test_a_methods_config_declares_whether_it_trains_as_its_class_does(name: str) -> None:
    """``method.trains`` (read by the config layer's ``method.epochs`` range) is the class's ``trains``."""
    cfg = compose([f"method={name}"])
    assert OmegaConf.select(cfg, "method.trains") is load_all()[name].trains


@pytest.mark.parametrize("name", sorted(load_all()))
def test_a_methods_config_declares_whether_the_demo_leaves_it_out_as_its_class_does(name: str) -> None:
    """``method.demo_excluded`` (read from the YAML by ``${pb_methods:demo,...}`` without importing the method) is
    the class's ``demo_excluded``."""
    from promptbench.methods.registry import declared_demo_excluded

    cfg = compose([f"method={name}"])
    assert OmegaConf.select(cfg, "method.demo_excluded") is load_all()[name].demo_excluded
    assert declared_demo_excluded(name) is load_all()[name].demo_excluded
