"""Reliability (issue 14) with real processes: SIGTERM/SIGINT are recorded as interrupted and exit 143/130 with a
summary, a good result survives the interrupted re-run, joblib workers stop with their driver, stale cell claims
of dead processes are taken over, and two concurrent sweeps on one folder compute every cell once.

Only the SIGTERM and claim tests run by default (each start of the CLI costs ~10-30 s on a loaded machine);
the others are ``slow`` (``pytest -m slow tests/test_reliability_processes.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptbench.engine.results import read_attempts, read_result

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (REPO / "data" / "demo" / "BTMRI").is_dir(), reason="no vendored demo data")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore",
       "PYTHONPATH": str(REPO)}
COMMON = ["backbone=tiny_clip", "dataset=demo_btmri", "logger=none", "trainer.enable_progress_bar=false",
          "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def cell(out: Path, method: str = "coop", shots: int = 1, seed: int = 1, variant: str = "") -> Path:
    name = method + (f"+{variant}" if variant else "")
    return out / "results" / "few_shot" / "demo_btmri" / "tiny_clip" / name / f"shots_{shots}" / f"seed_{seed}"


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "promptbench.cli", *args], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until ``path`` exists (the cell's manifest: the run is under way)."""
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} early: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"{path} never appeared")
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_records_interrupted_keeps_the_good_result_and_exits_143(tmp_path: Path) -> None:
    from promptbench.config import compose
    from promptbench.engine.run import run

    good = run(compose([*COMMON[:4], "method=coop", "shots=1", "method.epochs=1", f"paths.output_dir={tmp_path}"]))
    proc = start("train", *COMMON, "method=coop", "shots=1", "method.epochs=5000", f"paths.output_dir={tmp_path}")
    # the re-run (another config: the earlier result is stale) writes its manifest when training starts
    start_mtime = (cell(tmp_path) / "manifest.json").stat().st_mtime_ns
    end = time.monotonic() + 240
    while (cell(tmp_path) / "manifest.json").stat().st_mtime_ns == start_mtime:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < end
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "promptbench train: interrupted by SIGTERM" in err
    assert read_result(cell(tmp_path) / "result.json") == good        # the good result is untouched
    attempts = read_attempts(cell(tmp_path))
    assert [a["status"] for a in attempts] == ["ok", "interrupted"]
    assert attempts[-1]["error"] == "interrupted by SIGTERM"


def test_a_dead_process_claim_is_taken_over(tmp_path: Path) -> None:
    from promptbench.sweep.claims import claim, lock_holder

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from promptbench.sweep.claims import claim\n"
         f"with claim(Path({str(tmp_path)!r})) as h:\n    print('held', h, flush=True); time.sleep(600)"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held None"
    with claim(tmp_path) as other:
        assert other == f"pid {holder.pid} on {os.uname().nodename}"    # claimed: this process must not run it
    assert lock_holder(tmp_path) == f"pid {holder.pid} on {os.uname().nodename}"
    holder.kill()                                                          # SIGKILL: no clean-up ran
    holder.wait()
    assert lock_holder(tmp_path) is None
    with claim(tmp_path) as mine:
        assert mine is None                                                # the stale claim is taken over


@pytest.mark.slow
def test_sigint_stops_a_sweep_with_its_summary_and_exit_130(tmp_path: Path) -> None:
    proc = start("sweep", *COMMON, "method=zeroshot,coop", "shots=1", "method.epochs=5000", "hydra/launcher=basic",
                 f"paths.output_dir={tmp_path}")
    wait_for(cell(tmp_path) / "manifest.json", proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "sweep finished: 1 done, 0 stale, 1 failed, 0 missing" in out
    assert "FAILED few_shot/demo_btmri/tiny_clip/coop/shots_1/seed_1: interrupted by SIGINT" in out
    assert "promptbench sweep: interrupted by SIGINT" in err
    assert read_result(cell(tmp_path) / "result.json")["status"] == "interrupted"


@pytest.mark.slow
def test_joblib_workers_stop_with_their_driver(tmp_path: Path) -> None:
    proc = start("sweep", *COMMON, "method=coop", "shots=1", "seed=1,2", "method.epochs=5000",
                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"paths.output_dir={tmp_path}")
    for seed in (1, 2):
        wait_for(cell(tmp_path, seed=seed) / "manifest.json", proc)
    children = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                if _ppid(p) == proc.pid]
    assert len(children) >= 2
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "sweep finished:" in out
    end = time.monotonic() + 60
    while any(alive(pid) for pid in children) and time.monotonic() < end:
        time.sleep(0.5)
    assert not [pid for pid in children if alive(pid)], "orphaned workers"
    for seed in (1, 2):                                                    # each worker recorded its cell
        assert read_attempts(cell(tmp_path, seed=seed))[-1]["status"] == "interrupted"


def _ppid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.slow
def test_two_concurrent_sweeps_compute_every_cell_once(tmp_path: Path) -> None:
    args = ["sweep", *COMMON, "method=coop", "shots=1", "seed=1,2,3,4", "method.epochs=15", "hydra/launcher=basic",
            f"paths.output_dir={tmp_path}"]
    first, second = start(*args), start(*args)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode in (0, 1) and second.returncode in (0, 1), [o[1][-1500:] for o in outs]
    for seed in (1, 2, 3, 4):
        attempts = read_attempts(cell(tmp_path, seed=seed))
        assert [a["status"] for a in attempts] == ["ok"], (seed, attempts)  # computed exactly once
    printed = outs[0][0] + outs[1][0]
    assert printed.count(" done (") == 4                                   # 4 runs between the two sweeps
    again = subprocess.run([sys.executable, "-m", "promptbench.cli", *args, "--dry-run"], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert "4 cells: 4 done, 0 stale, 0 failed, 0 missing" in again.stdout


@pytest.mark.slow
def test_a_worker_whose_parent_was_killed_stops(tmp_path: Path) -> None:
    """SIGKILL to a driver leaves its workers re-parented; the watchdog sends them SIGTERM (the cell is recorded
    as interrupted) and they exit."""
    child = ("import time; from promptbench.engine.guards import install_signal_handlers, start_parent_watchdog\n"
             "install_signal_handlers(); start_parent_watchdog(interval_s=0.1, grace_s=5)\n"
             "try:\n    time.sleep(120)\nexcept BaseException as err:\n"
             f"    open({str(tmp_path / 'seen')!r}, 'w').write(type(err).__name__ + ' ' + str(err)); raise\n")
    parent = ("import os, subprocess, sys\n"
              "os.environ['PROMPTBENCH_DRIVER_PID'] = str(os.getpid())\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}])\nprint(p.pid, flush=True)\n"
              "import time; time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    time.sleep(8)                                                          # the worker imports torch, arms itself
    proc.kill()
    proc.wait()
    end = time.monotonic() + 60
    while alive(worker) and time.monotonic() < end:
        time.sleep(0.2)
    assert not alive(worker)
    assert (tmp_path / "seen").read_text() == "Interrupted SIGTERM"
