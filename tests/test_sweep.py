"""Sweeps: the experiment grid, launcher presets, GPU pinning, and end to end through Hydra multirun: a real
two-method × two-seed sweep, its table, resume (skip), a failing cell (recorded, retried) and --dry-run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from promptbench import cli
from promptbench.config import compose, overrides
from promptbench.engine.results import config_hash, read_result
from promptbench.methods import load_all
from promptbench.sweep import gpus
from promptbench.sweep import grid as sweep_grid

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (REPO / "data" / "demo" / "BTMRI").is_dir(), reason="no vendored demo data")


def cell_args(out: Path, methods: str = "zeroshot,coop", seeds: str = "1,2") -> list[str]:
    """A small grid on the demo experiment: tiny random-init backbone, one demo dataset, 1 shot, 1 epoch,
    in-process launcher (the demo's joblib workers would not see the tests' monkeypatches)."""
    return ["experiment=demo", f"method={methods}", "dataset=demo_btmri", "shots=1", f"seed={seeds}",
            "backbone=tiny_clip", "method.epochs=1", f"paths.output_dir={out}", "logger=none",
            "trainer.enable_progress_bar=false", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
            "hydra/launcher=basic"]


def result_files(out: Path) -> list[Path]:
    return sorted((out / "results").rglob("result.json"))


# ------------------------------------------------------------------------------------------ the grid
def test_grid_is_the_experiment_params_and_the_command_line_wins() -> None:
    cells = sweep_grid.grid(["experiment=seed_comparison"])
    assert len(cells) == 5 * 4 * 1 * 3
    assert cells[0] == ["method=zeroshot", "dataset=covid", "shots=16", "seed=1", "experiment=seed_comparison"]
    narrowed = sweep_grid.grid(["experiment=seed_comparison", "method=biomed_dpt", "seed=1,2"])
    assert len(narrowed) == 4 * 2 and all("method=biomed_dpt" in c for c in narrowed)
    assert len(sweep_grid.grid(["experiment=few_shot"])) == len(load_all()) * 11 * 5 * 3     # every registered method
    assert len(sweep_grid.grid(["method=zeroshot,coop", "seed=1,2,3"])) == 6          # no experiment: a plain grid


def test_base_to_novel_excludes_busi_unless_switched_on() -> None:
    default = sweep_grid.grid(["experiment=base_to_novel", "method=coop", "seed=1"])
    with_busi = sweep_grid.grid(["experiment=base_to_novel", "method=coop", "seed=1", "table.include_busi=true"])
    assert len(default) == 10 and not any("dataset=busi" in c for c in default)
    assert len(with_busi) == 11 and sum("dataset=busi" in c for c in with_busi) == 1


def test_cells_compose_like_hydra_and_the_table_block_is_not_hashed(tmp_path: Path) -> None:
    overrides = sweep_grid.grid(["experiment=base_to_novel", "method=coop,zeroshot", "dataset=btmri", "seed=1,2"])
    cells = sweep_grid.compose_cells(overrides, keep_config=True)
    for cell, ovs in zip(cells, overrides):
        full = compose(ovs)                                            # a full Hydra composition per cell
        assert cell.config_hash == config_hash(full)
        assert cell.label == f"base_to_novel/btmri/biomedclip/{full.method.name}/shots_16/seed_{full.seed}"
    assert cells[0].cfg.method.epochs == 50                             # conf/tuned/base_to_novel/coop applies
    plain = compose(["method=coop", "dataset=btmri", "protocol=base_to_novel", "backbone=biomedclip", "shots=16"])
    retitled = compose([*overrides[0], "table.title=other", "table.include_busi=true"])
    assert config_hash(retitled) == cells[0].config_hash
    assert config_hash(plain) == cells[0].config_hash                    # a plain `train` run of it counts as done
    assert cells[0].cfg.logger.tags == ["base_to_novel"]


def test_launcher_presets_compose() -> None:
    from hydra import compose as hydra_compose

    with overrides._hydra():
        basic = hydra_compose("train", [], return_hydra_config=True).hydra.launcher
        joblib = hydra_compose("train", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"],
                               return_hydra_config=True).hydra.launcher
        slurm = hydra_compose("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                              return_hydra_config=True).hydra.launcher
    assert basic._target_.endswith("BasicLauncher")
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 3
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu"
    assert slurm.gpus_per_node == 1 and slurm.timeout_min > 0 and slurm.submitit_folder.endswith(".submitit/%j")


def test_a_checked_grid_is_launched_as_one_batch_without_composing_every_job_again() -> None:
    """promptbench composes and checks a sweep's grid before launching; inside ``grid_checked`` the sweeper skips
    Hydra's second composition of every job and the grid is one batch (no idle workers at batch ends)."""
    from hydra import compose as hydra_compose
    from hydra.core.plugins import Plugins

    from promptbench.config.resolvers import GRID_CHECKED_ENV, grid_checked

    with overrides._hydra():
        cfg = hydra_compose("train", ["experiment=demo", "hydra/launcher=joblib"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.promptbench_sweeper.CheckedGridSweeper"
    composed = []

    class Loader:  # stands in for Hydra's config loader: records what the sweeper composes
        def load_sweep_config(self, master_config, sweep_overrides):
            composed.append(list(sweep_overrides))

    sweeper = Plugins.instance().class_name_to_class[cfg.hydra.sweeper._target_](max_batch_size=None, params=None)
    sweeper.config, sweeper.hydra_context = cfg, type("Ctx", (), {"config_loader": Loader()})()
    batch = [["method=coop", "seed=1"], ["method=coop", "seed=2"]]
    sweeper.validate_batch_is_legal(batch)
    assert composed == batch                      # outside: Hydra's own check, one composition per job
    with grid_checked():
        assert os.environ[GRID_CHECKED_ENV] == "1"
        sweeper.validate_batch_is_legal(batch)
        with overrides._hydra():
            inside = hydra_compose("train", ["experiment=demo", "hydra/launcher=joblib"], return_hydra_config=True)
        assert inside.hydra.sweeper.max_batch_size is None     # one batch
    assert composed == batch and GRID_CHECKED_ENV not in os.environ
    assert cfg.hydra.sweeper.max_batch_size == 200


def test_a_worker_reuses_a_composition_and_gets_hydras_own_job_config(tmp_path: Path) -> None:
    """Jobs with the same config-group choices are composed once per worker (GridConfigLoader); each job's config,
    hydra node included, equals Hydra's own composition of that job."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from promptbench.sweep import launchers

    common = ["skip_done=true", "continue_on_error=true", f"paths.output_dir={tmp_path}"]
    jobs = [["method=coop", "dataset=demo_btmri", "shots=1", "seed=1"],
            ["method=coop", "dataset=demo_btmri", "shots=4", "seed=3"],       # reused
            ["method=maple", "dataset=demo_btmri", "shots=4", "seed=3"],      # other groups: composed
            ["method=coop", "dataset=demo_btmri", "shots=16", "seed=2"],      # reused
            ["method=coop", "dataset=demo_btmri", "shots=16", "method.epochs=3"],  # other value keys: composed
            ["method=coop", "dataset=demo_btmri", "shots=1", "+method.extra=1"]]   # an addition: Hydra's path
    launchers._JOB_CONFIGS.clear()
    calls = []
    with overrides._hydra():
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", ["experiment=demo", *common], run_mode=RunMode.MULTIRUN)

        class Counting:
            def load_sweep_config(self, master_config, overrides):
                calls.append(overrides)
                return loader.load_sweep_config(master_config, overrides)

        for job in jobs:
            ours = launchers.compose_job(Counting(), master, [*common, *job])
            theirs = loader.load_sweep_config(master, [*common, *job])
            assert OmegaConf.to_container(ours) == OmegaConf.to_container(theirs), job
            assert ours.hydra.overrides.task == [*common, *job] and ours.seed == theirs.seed
    assert [c[len(common):] for c in calls] == [jobs[0], jobs[2], jobs[4], jobs[5]]
    launchers._JOB_CONFIGS.clear()


@pytest.mark.parametrize(("env", "job_id"), [
    ({"SLURM_JOB_ID": "41", "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "0"}, "41_0"),  # the array's first
    ({"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "2"}, "41_2"),
    ({"SLURM_JOB_ID": "57"}, "57")])                                                            # not an array
def test_a_slurm_task_renames_only_itself(env: dict, job_id: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``scontrol update JobId=<array id>`` renames every task of the array; a task names itself by
    ``<array id>_<task id>`` (a fake ``scontrol`` records what it was asked)."""
    from promptbench.sweep.launchers import name_slurm_task

    fake = tmp_path / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'asked'}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "PROMPTBENCH_SLURM_RENAME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert name_slurm_task("few_shot/demo_btmri/coop/shots_1/seed_1")
    assert (tmp_path / "asked").read_text().split() == ["update", f"JobId={job_id}",
                                                       "JobName=pb_few_shot_demo_btmri_coop_shots_1_seed_1"]


def test_joblib_workers_do_not_collect_garbage_after_every_cell() -> None:
    """loky runs a full gc.collect() after every task unless psutil is installed (a dependency for that reason)."""
    from joblib.externals.loky import process_executor

    assert process_executor._USE_PSUTIL


def test_each_worker_pins_its_own_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus, "_PINNED_GPU", None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus.pin_worker_gpu(tmp_path, ["0", "1"]) == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert gpus.pin_worker_gpu(tmp_path, ["0", "1"]) == "0"            # a reused worker keeps its GPU
    other = subprocess.run(  # a second worker process while this one holds GPU 0
        [sys.executable, "-c", "from pathlib import Path; from promptbench.sweep.gpus import pin_worker_gpu;"
         f"print(pin_worker_gpu(Path({str(tmp_path)!r}), ['0', '1']))"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert other.stdout.strip() == "1", other.stderr


def test_one_gpu_is_not_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus, "_PINNED_GPU", None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus.pin_worker_gpu(tmp_path, ["3"]) is None and "CUDA_VISIBLE_DEVICES" not in os.environ


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """``python -m promptbench.cli sweep`` on zeroshot × coop × seeds 1, 2 (a real Hydra multirun)."""
    out = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "promptbench.cli", "sweep", *cell_args(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    return out, proc


def test_sweep_runs_every_cell_through_hydra_multirun(swept) -> None:
    out, proc = swept
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in lines] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert all(" done " in line for line in lines), lines
    assert "sweep finished: 4 done, 0 stale, 0 failed, 0 missing" in proc.stdout
    results = [read_result(p) for p in result_files(out)]
    assert len(results) == 4 and all(r["status"] == "ok" for r in results)
    assert {(r["identity"]["method"], r["identity"]["seed"]) for r in results} == {
        ("zeroshot", 1), ("zeroshot", 2), ("coop", 1), ("coop", 2)}
    assert (out / "hydra").is_dir() and list((out / "hydra").glob("multirun_*/multirun.yaml"))
    assert not list((out / "hydra").glob("multirun_*/*/.hydra"))  # no per-job config copies (hydra.output_subdir)


def test_table_of_the_sweep_matches_the_result_files(swept) -> None:
    out, _ = swept
    args = [a for a in cell_args(out) if not a.startswith("hydra/")]
    assert cli.main(["table", "--experiment", "demo", *args[1:]]) == 0
    tables = out / "tables" / "demo"
    long = pd.read_csv(tables / "long.csv")
    assert len(long) == 4 and set(long["method"]) == {"zeroshot", "coop"}
    md = (tables / "table.md").read_text()
    for method in ("zeroshot", "coop"):
        accs = [read_result(p)["metrics"]["test/acc"] for p in result_files(out) if f"/{method}/" in str(p)]
        cell = f"{statistics.mean(accs) * 100:.2f} ± {statistics.stdev(accs) * 100:.2f}"
        assert f"| {method} | {cell} |" in md, md
        summary = pd.read_csv(tables / "summary.csv")
        row = summary[(summary.method == method) & (summary.dataset == "demo_btmri")]
        assert row["mean"].item() == pytest.approx(statistics.mean(accs))
        assert row["std"].item() == pytest.approx(statistics.stdev(accs), abs=1e-12)
    assert (tables / "table.tex").is_file() and (tables / "table.html").is_file()


def test_rerun_skips_every_finished_cell(swept, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    out, _ = swept
    before = {p: p.stat().st_mtime_ns for p in result_files(out)}
    monkeypatch.setattr(sys, "argv", ["promptbench"])

    def must_not_run(cfg):  # a finished cell must never reach run()
        raise AssertionError(f"re-ran {cfg.method.name} seed {cfg.seed}")

    monkeypatch.setattr("promptbench.engine.run.run", must_not_run)
    assert cli.main(["sweep", *cell_args(out)]) == 0
    printed = capsys.readouterr().out
    assert "sweep: 4 cells, 4 already done" in printed and "sweep finished: 4 done" in printed
    assert "FAILED" not in printed
    assert {p: p.stat().st_mtime_ns for p in result_files(out)} == before


def test_failed_cell_is_recorded_the_rest_finish_and_the_next_run_retries(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import promptbench.engine.run as engine_run

    monkeypatch.setattr(sys, "argv", ["promptbench"])
    original = engine_run._run

    def flaky(cfg, *args, **kwargs):
        if int(cfg.seed) == 2:
            raise RuntimeError("injected failure for seed 2")
        return original(cfg, *args, **kwargs)

    args = cell_args(tmp_path, methods="zeroshot", seeds="1,2")
    monkeypatch.setattr(engine_run, "_run", flaky)
    assert cli.main(["sweep", *args]) == 1                               # some cell failed
    captured = capsys.readouterr()
    assert "[2/2] few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_2 FAILED: RuntimeError: injected" in captured.err
    assert "[1/2] few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_1 done" in captured.out
    assert "sweep finished: 1 done, 0 stale, 1 failed, 0 missing" in captured.out
    failed = tmp_path / "results/few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_2/result.json"
    assert json.loads(failed.read_text())["status"] == "failed"
    assert "injected failure" in json.loads(failed.read_text())["error"]

    # --dry-run: one line per cell with its status (a third seed is missing); nothing runs
    assert cli.main(["sweep", *args[:4], "seed=1,2,3", *args[5:], "--dry-run"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0] == "[1/3] done    few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_1"
    assert listing[1].startswith("[2/3] failed  few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_2  (RuntimeError")
    assert listing[2] == "[3/3] missing few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_3"
    assert listing[3] == "3 cells: 1 done, 0 stale, 1 failed, 1 missing"
    assert not (tmp_path / "results/few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_3").exists()

    monkeypatch.setattr(engine_run, "_run", original)                    # the cause is fixed: the retry succeeds
    done_mtime = (tmp_path / "results/few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_1/result.json").stat()
    assert cli.main(["sweep", *args]) == 0
    out = capsys.readouterr().out
    assert "[1/2] few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_1 skip (done)" in out
    assert "[2/2] few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_2 done" in out
    assert json.loads(failed.read_text())["status"] == "ok"
    assert (tmp_path / "results/few_shot/demo_btmri/tiny_clip/zeroshot/shots_1/seed_1/result.json"
            ).stat().st_mtime_ns == done_mtime.st_mtime_ns


def test_dry_run_reports_a_changed_config_as_stale(swept, capsys: pytest.CaptureFixture) -> None:
    out, _ = swept
    args = [a if a != "method.epochs=1" else "method.epochs=2" for a in cell_args(out, methods="coop", seeds="1")]
    assert cli.main(["sweep", *args, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(
        "[1/1] stale   few_shot/demo_btmri/tiny_clip/coop/shots_1/seed_1  (config changed")


def test_wandb_offline_run_per_cell_is_created_and_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    from promptbench.tracking.loggers import wandb_run_id

    seen: list[dict] = []
    real_init = wandb.init

    def init(**kwargs):  # Lightning's WandbLogger calls wandb.init(**kwargs) when the run is first used
        seen.append(kwargs)
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    finished: list[str] = []
    real_finish = wandb.finish

    def finish(*args, **kwargs):
        finished.append(wandb.run.id if wandb.run is not None else "")
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(wandb, "finish", finish)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(sys, "argv", ["promptbench"])
    args = [a for a in cell_args(tmp_path, methods="zeroshot", seeds="1") if not a.startswith("logger=")]
    assert cli.main(["sweep", *args, "logger=wandb"]) == 0
    assert wandb.run is None                                             # finished, nothing left open
    assert len(seen) == 1
    assert seen[0]["group"] == "few_shot/demo_btmri/tiny_clip/zeroshot/1"   # the cell without its seed
    assert seen[0]["name"].endswith("/seed1") and seen[0]["mode"] == "offline"
    # method, dataset, modality, protocol, backbone, shots, experiment tag
    assert set(seen[0]["tags"]) == {"zeroshot", "demo_btmri", "MRI", "few_shot", "tiny_clip", "1-shot", "demo"}
    assert seen[0]["config"]["method"]["name"] == "zeroshot"
    result = read_result(next((tmp_path / "results").rglob("result.json")))
    assert seen[0]["id"] == wandb_run_id(result["identity"], result["hashes"]["config"])   # deterministic
    runs = list((tmp_path / "results").rglob("offline-run-*"))            # the cell's own offline run
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert len(finished) == 1 and runs[0].name.endswith(finished[0])        # that run was finished


def test_a_slurm_time_limit_warning_in_the_first_half_of_the_job_is_refused_before_submitting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``signal_delay_s=120`` with a 1-minute limit: the warning reached the task before submitit's handler existed
    and the cell was lost (issue 26); refused in one line, nothing written. A limit twice the delay is accepted."""
    args = [*cell_args(tmp_path / "out")[:-1], "hydra/launcher=slurm"]
    assert cli.main(["sweep", *args, "hydra.launcher.timeout_min=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "signal_delay_s=120" in err and "timeout_min=1 " in err, err
    assert "raise timeout_min to at least 4" in err and not (tmp_path / "out").exists()
    assert cli.main(["sweep", *args, "hydra.launcher.timeout_min=4", "--dry-run"]) == 0


def test_submitits_sacct_warning_is_said_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SLURM accounting submitit warns on every status poll; the driver passes the first, then none."""
    import logging

    from promptbench.sweep import launchers

    log = logging.getLogger("submitit")
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    monkeypatch.setattr(log, "filters", [])
    monkeypatch.setattr(log, "handlers", [handler])
    monkeypatch.setattr(log, "disabled", False)
    monkeypatch.setattr(log, "level", logging.WARNING)
    monkeypatch.setattr(launchers._SacctSaidOnce, "said", False)
    launchers.quiet_sacct_polling()
    launchers.quiet_sacct_polling()                         # idempotent: one filter
    for call in range(1, 4):
        log.warning(f"Call #{call} - Bypassing sacct error boom, status may be inaccurate.")
    log.warning("another warning")
    assert len(said) == 2 and said[0].startswith("Call #1 - Bypassing sacct error") and "said once" in said[0]
    assert said[1] == "another warning" and len(log.filters) == 1
