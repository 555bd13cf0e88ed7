"""A cell's numbers depend only on its config (issue 21): every registered method gives bitwise the same metrics
alone (fresh process state) and after other cells in one process, in any order; the backbone build, the feature
store and the data loaders neither read nor advance the global RNGs.

Default: the in-process comparison for every method, one real ``promptbench sweep`` process, and unit checks.
``slow``: the launcher matrix (a fresh ``train`` process per method, a basic-launcher sweep, two joblib workers,
``reuse_backbone=false``), ``pytest -m slow tests/test_integrity_rng.py``."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from promptbench.config import compose
from promptbench.engine.run import run
from promptbench.methods.registry import load_all

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "BTMRI"
pytestmark = pytest.mark.skipif(not DEMO.is_dir(), reason="no vendored demo data")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
       "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
METHODS = sorted(load_all())
#: per-method knobs that only make a cell cheap (fewer iterations / passes); none removes a random draw. They go in
#: ``tuned/few_shot/<method>/demo_btmri.yaml`` of an extra config folder, so one sweep can hold every method (TPT
#: keeps the packaged demo file: 8 views)
CHEAP = {"clip_lora": {"iters_per_shot": 2}, "clap": {"multiplier_views": 2},
         "linear_probe": {"search_steps": 1, "max_iter": 50}, "lp_plus_plus": {"fit_epochs": 20}}


def tiny_root(base: Path, per_class: dict[str, int] | None = None) -> tuple[Path, Path]:
    """(data root, config folder): a demo-BTMRI root with a few real images per class and split (linked, not
    copied), and the config folder holding the :data:`CHEAP` knobs."""
    per_class = per_class or {"train": 2, "val": 1, "test": 3}
    split = json.loads((DEMO / "split_BTMRI.json").read_text())
    picked: dict[str, list[Any]] = {}
    for name, n in per_class.items():
        counts: dict[int, int] = {}
        picked[name] = []
        for entry in split[name]:
            if counts.get(entry[1], 0) < n:
                counts[entry[1]] = counts.get(entry[1], 0) + 1
                picked[name].append(entry)
    root = base / "data"
    (root / "BTMRI").mkdir(parents=True, exist_ok=True)
    (root / "BTMRI" / "split_BTMRI.json").write_text(json.dumps(picked))
    if not (root / "BTMRI" / "BTMRI").exists():
        (root / "BTMRI" / "BTMRI").symlink_to(DEMO / "BTMRI", target_is_directory=True)
    conf = base / "conf"
    for method, knobs in CHEAP.items():
        folder = conf / "tuned" / "few_shot" / method
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "demo_btmri.yaml").write_text("# @package _global_\nmethod: " + json.dumps(knobs) + "\n")
    return root, conf


def common(data: tuple[Path, Path]) -> list[str]:
    """Every cell's overrides but the method: 1 shot, seed 1, 2 epochs, tiny_clip, the tiny root."""
    root, conf = data
    return [f"hydra.searchpath=[file://{conf}]", "backbone=tiny_clip", "dataset=demo_btmri", f"dataset.root={root}",
            "shots=1", "seed=1", "method.epochs=2", "logger=none", "trainer.enable_progress_bar=false",
            "trainer.threads=1"]


def overrides(method: str, data: tuple[Path, Path]) -> list[str]:
    return [*common(data), f"method={method}"]


def forget_process_state() -> None:
    """What a fresh process would not have: the cached backbones and the in-memory feature entries."""
    import promptbench.backbones as backbones
    from promptbench.features.store import memory_cache

    backbones._CACHE.clear()
    memory_cache.clear()


def disturb(seed: int) -> None:
    """Leave the global generators somewhere else, as a launcher or an earlier cell would."""
    torch.manual_seed(seed)
    torch.rand(seed % 7 + 1)
    np.random.seed(seed)
    random.seed(seed)


def metrics_of(results: Path, method: str) -> dict[str, float]:
    path = results / "results/few_shot/demo_btmri/tiny_clip" / method / "shots_1/seed_1/result.json"
    result = json.loads(path.read_text())
    assert result["status"] == "ok", result.get("error")
    return result["metrics"]


def differing(expected: dict[str, dict[str, float]], got: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    """method -> the metric keys whose values differ (exact float equality; a missing key differs too)."""
    out = {}
    for method, metrics in expected.items():
        keys = sorted(k for k in set(metrics) | set(got[method]) if metrics.get(k) != got[method].get(k))
        if keys:
            out[method] = keys
    return out


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> tuple[tuple[Path, Path], dict[str, dict[str, float]]]:
    """Every method's metrics from a cell run alone: no cached backbone or features, own output folder."""
    base = tmp_path_factory.mktemp("rng_alone")
    data = tiny_root(base)
    threads = torch.get_num_threads()
    out = {}
    try:
        for i, method in enumerate(METHODS):
            forget_process_state()
            disturb(1000 + i)
            out[method] = run(compose([*overrides(method, data), f"paths.output_dir={base / method}"]))["metrics"]
    finally:
        torch.set_num_threads(threads)
    return data, out


def test_every_method_gives_the_same_numbers_alone_and_after_other_cells(alone, tmp_path):
    """One process, one output folder (shared backbone and feature store), a shuffled order, other draws between
    cells: every metric of every method equals the cell run alone."""
    data, expected = alone
    order = METHODS[:]
    random.Random(21).shuffle(order)
    threads = torch.get_num_threads()
    got = {}
    try:
        for i, method in enumerate(order):
            disturb(i)
            got[method] = run(compose([*overrides(method, data), f"paths.output_dir={tmp_path}"]))["metrics"]
    finally:
        torch.set_num_threads(threads)
    diff = differing(expected, got)
    assert not diff, f"methods whose metrics differ: {sorted(diff)} ({diff})"


def test_a_sweep_process_gives_the_numbers_of_cells_run_alone(alone, tmp_path):
    """A real ``promptbench sweep`` (basic launcher, one process): its first cell is alone in a fresh process, the
    next ones run after it on its cached backbone and features."""
    data, expected = alone
    picked = ["coop", "vpt_shallow", "clip_adapter", "maple"]
    cmd = [sys.executable, "-m", "promptbench.cli", "sweep", *common(data), f"method={','.join(picked)}",
           "hydra/launcher=basic", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
           f"paths.output_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {m: metrics_of(tmp_path, m) for m in picked}
    diff = differing({m: expected[m] for m in picked}, got)
    assert not diff, f"methods whose metrics differ: {sorted(diff)} ({diff})"


# ------------------------------------------------------------------------------------------------ unit checks


def _state() -> tuple[bytes, bytes, Any]:
    np_state = np.random.get_state()
    return torch.get_rng_state().numpy().tobytes(), np_state[1].tobytes() + repr(np_state[2:]).encode(), \
        random.getstate()


def test_building_a_backbone_neither_reads_nor_advances_the_global_rng():
    from promptbench.backbones import build_backbone

    cfg = compose(["backbone=tiny_clip"]).backbone
    disturb(5)
    before = _state()
    first = build_backbone(cfg)
    assert _state() == before  # the caller's streams are where they were
    disturb(6)
    second = build_backbone(cfg)
    # a random-init backbone is a function of its config, not of the state it was built in
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_loaders_and_feature_computation_draw_nothing_from_the_global_rng(tmp_path):
    """Iterating the data loaders and computing frozen features (a cache miss) leave the global RNG as a cache hit
    does: a cached and an uncached cell continue from the same state."""
    from promptbench.backbones import build_backbone
    from promptbench.engine.run import _build_datamodule
    from promptbench.features import FeatureDataModule, FeatureStore

    cfg = compose([*overrides("coop", tiny_root(tmp_path)), f"paths.output_dir={tmp_path}"])
    backbone = build_backbone(cfg.backbone)
    dm = _build_datamodule(cfg, backbone, tmp_path)
    dm.setup("fit")
    disturb(3)
    before = _state()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), *dm.test_dataloader()):
        assert len(list(loader)) > 0
    assert _state() == before
    features = FeatureDataModule(dm, backbone, FeatureStore(tmp_path / "features", memory=False), epochs=2)
    computed = features.train_features(0), features.eval_features(dm.val_dataloader().dataset)
    assert features.store.hits["computed"] >= 1 and _state() == before
    again = FeatureDataModule(dm, backbone, FeatureStore(tmp_path / "features", memory=False), epochs=2)
    cached = again.train_features(0), again.eval_features(dm.val_dataloader().dataset)
    assert again.store.hits["computed"] == 0 and _state() == before
    assert all(torch.equal(a, b) for a, b in zip(computed, cached))


# ------------------------------------------------------------------------------------------- launcher matrix


def _cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "promptbench.cli", *args, "hydra/job_logging=disabled",
                           "hydra/hydra_logging=disabled"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_every_method_gives_the_same_numbers_under_every_launcher(tmp_path):
    """(a) each method alone in a fresh ``promptbench train`` process is the reference for (b) one basic-launcher
    sweep of all methods in reverse order, (c) two joblib workers, (d) ``reuse_backbone=false``."""
    data = tiny_root(tmp_path)
    # the cheap knobs as ``++`` overrides of every cell (a key another method lacks is added and ignored there):
    # the same config everywhere, without the extra config folder
    cells = [o for o in common(data) if not o.startswith("hydra.searchpath")]
    cells += sorted({f"++method.{k}={v}" for knobs in CHEAP.values() for k, v in knobs.items()})
    for method in METHODS:
        _cli("train", *cells, f"method={method}", f"paths.output_dir={tmp_path / 'a' / method}")
    expected = {m: metrics_of(tmp_path / "a" / m, m) for m in METHODS}
    runs = {"b": ["hydra/launcher=basic"], "c": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
            "d": ["hydra/launcher=basic", "reuse_backbone=false"]}
    for name, launcher in runs.items():
        _cli("sweep", *cells, f"method={','.join(reversed(METHODS))}", *launcher, f"paths.output_dir={tmp_path / name}")
        got = {m: metrics_of(tmp_path / name, m) for m in METHODS}
        diff = differing(expected, got)
        assert not diff, f"{name}: methods whose metrics differ: {sorted(diff)} ({diff})"
