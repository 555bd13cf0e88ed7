"""Sweeps survive (issue 21): a joblib worker killed mid-cell (SIGKILL, the OOM killer) fails only its own cell,
recorded by the driver, while the other workers' cells go on; Ctrl-C pressed twice still records the running
cell; signal handlers live only as long as the run that installed them; a filesystem without ``flock`` runs the
cells unclaimed with one warning.

The real two-worker SIGKILL sweep and the double Ctrl-C on a joblib sweep are ``slow`` (worker start-up costs
~30 s each on a loaded machine); the launch loop's survival, the handlers' scope and the lock fallback run by
default."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptbench.engine.results import read_attempts, read_result

REPO = Path(__file__).resolve().parents[1]
HAVE_DEMO = (REPO / "data" / "demo" / "BTMRI").is_dir()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore",
       "PYTHONPATH": str(REPO)}
COMMON = ["backbone=tiny_clip", "dataset=demo_btmri", "logger=none", "trainer.enable_progress_bar=false",
          "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
needs_demo = pytest.mark.skipif(not HAVE_DEMO, reason="no vendored demo data")


def cell(out: Path, method: str = "coop", shots: int = 1, seed: int = 1) -> Path:
    return out / "results" / "few_shot" / "demo_btmri" / "tiny_clip" / method / f"shots_{shots}" / f"seed_{seed}"


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "promptbench.cli", *args], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_until(ready, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {what}: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{what} never happened")
        time.sleep(0.2)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s: {err[-2000:]}")


# ------------------------------------------------------------------------------------------ dead workers
def test_a_worker_killed_mid_call_fails_only_its_call_and_the_others_go_on(tmp_path: Path) -> None:
    """The launch loop on real loky workers: call 1 SIGKILLs its worker while call 0 runs on the other; call 0
    finishes on its (same) worker, call 1 is handed to ``on_death`` with the cause and the dead pid, call 2 runs
    on a new worker. (loky's shared pool, under hydra-joblib-launcher, broke every call in flight.)"""
    from promptbench.sweep.launchers import death_line, run_in_workers, shutdown_slots

    dead = tmp_path / "dead_pid"
    long_call = "(__import__('time').sleep(6), __import__('os').getpid())[1]"
    dying = (f"(open({str(dead)!r}, 'w').write(str(__import__('os').getpid())), __import__('time').sleep(1), "
             "__import__('os').kill(__import__('os').getpid(), 9))")
    deaths: list[tuple[int, str, int | None, str]] = []

    def on_death(i: int, started: str, pid: int | None, line: str) -> str:
        deaths.append((i, started, pid, line))
        return "failed"

    t0 = time.monotonic()
    try:
        results = run_in_workers(2, [(eval, long_call), (eval, dying), (eval, "__import__('os').getpid()")],
                                 on_death)
    finally:
        shutdown_slots()
    assert time.monotonic() - t0 < 120
    killed = int(dead.read_text())
    assert [d[0] for d in deaths] == [1] and results[1] == "failed"
    assert deaths[0][2] == killed
    assert deaths[0][3] == death_line(-9) and deaths[0][3].startswith("worker killed by signal 9 (SIGKILL): out of "
                                                                      "memory?")
    assert isinstance(results[0], int) and results[0] != killed     # the other worker's call was not lost
    assert isinstance(results[2], int) and results[2] != killed     # the remaining call ran on a live worker


def test_death_lines_name_the_signal_or_the_exit_code() -> None:
    from promptbench.sweep.launchers import death_line

    assert death_line(-15) == "worker killed by signal 15 (SIGTERM)"
    assert death_line(3) == "worker exited with code 3 while running the cell"
    loky = RuntimeError("A worker process managed by the executor was unexpectedly terminated. ...\n"
                        "The exit codes of the workers are {SIGKILL(-9)}")
    assert death_line(None, loky) == death_line(-9)
    assert death_line(None) == "worker process died (exit code unknown)"


@needs_demo
@pytest.mark.slow
def test_sigkill_of_one_joblib_worker_fails_its_cell_and_the_sweep_finishes(tmp_path: Path) -> None:
    """Two workers each run a long coop cell; one is SIGKILLed (as the OOM killer does). The other cell finishes,
    the zero-shot cells still run, the killed cell has an attempt saying so, the summary is printed, exit 1."""
    from promptbench.sweep.claims import lock_holder

    proc = start("sweep", *COMMON, "method=coop,zeroshot", "shots=1", "seed=1,2", "method.epochs=800",
                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"paths.output_dir={tmp_path}")
    coop = [cell(tmp_path, seed=s) for s in (1, 2)]
    wait_until(lambda: all((c / "manifest.json").exists() and lock_holder(c) for c in coop), proc,
               "both coop cells training")
    victim = int((coop[0] / ".lock").read_text().split()[1])                  # "pid N on host": its worker
    assert victim != proc.pid
    os.kill(victim, signal.SIGKILL)
    out, err = finish(proc)
    assert proc.returncode == 1, err[-3000:]
    assert "sweep finished: 3 done, 0 stale, 1 failed, 0 missing" in out, out[-2000:]
    line = "worker killed by signal 9 (SIGKILL): out of memory?"
    assert f"FAILED few_shot/demo_btmri/tiny_clip/coop/shots_1/seed_1: {line}" in out
    assert f"coop/shots_1/seed_1 FAILED: {line}" in err                          # the driver's progress line
    attempts = read_attempts(coop[0])
    assert [a["status"] for a in attempts] == ["failed"] and attempts[0]["error"].startswith(line)
    assert read_result(coop[0] / "result.json")["status"] == "failed"
    for seed in (1, 2):                                                          # every other cell ran once
        for path in (coop[1], cell(tmp_path, "zeroshot", seed=seed)):
            assert [a["status"] for a in read_attempts(path)] == ["ok"], path


# ------------------------------------------------------------------------------------------ signals
@needs_demo
@pytest.mark.slow
def test_ctrl_c_twice_on_a_joblib_sweep_still_records_the_cell(tmp_path: Path) -> None:
    """A terminal's Ctrl-C goes to the driver and its workers (one process group), and the driver forwards it:
    pressed twice, the busy worker sees 3-4 signals. Its cell used to be lost (no attempt), while the driver said
    it was recorded."""
    proc = start("sweep", *COMMON, "method=coop", "shots=1", "seed=1", "method.epochs=5000",
                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"paths.output_dir={tmp_path}")
    wait_until(lambda: (cell(tmp_path) / "manifest.json").exists(), proc, "training")
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = finish(proc, 120)
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    assert "FAILED few_shot/demo_btmri/tiny_clip/coop/shots_1/seed_1: interrupted by SIGINT" in out, out[-1000:]
    attempts = read_attempts(cell(tmp_path))
    assert [a["status"] for a in attempts] == ["interrupted"], (out[-1000:], err[-2000:])
    assert attempts[0]["error"] == "interrupted by SIGINT"


@needs_demo
def test_three_quick_signals_record_the_cell_before_exiting(tmp_path: Path) -> None:
    """SIGINT three times in quick succession to ``train``: the third exits at once, but only after the running
    cell's interrupted attempt is on disk (it used to ``os._exit`` first)."""
    proc = start("train", *COMMON, "method=coop", "shots=1", "method.epochs=5000", f"paths.output_dir={tmp_path}")
    wait_until(lambda: (cell(tmp_path) / "manifest.json").exists(), proc, "training")
    time.sleep(1.0)
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, err = finish(proc, 120)
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    attempts = read_attempts(cell(tmp_path))
    assert [a["status"] for a in attempts] == ["interrupted"], err[-2000:]
    assert attempts[0]["error"] == "interrupted by SIGINT"
    assert read_result(cell(tmp_path) / "result.json")["status"] == "interrupted"


def test_handlers_last_only_as_long_as_the_block_that_installed_them() -> None:
    from promptbench.engine import guards

    seen: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        with guards.handled_signals():
            assert signal.getsignal(signal.SIGTERM) is guards._handler
            with pytest.raises(guards.Interrupted), guards.handled_signals():   # nested: a cell in a sweep
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            assert guards.received_signal() == signal.SIGTERM                   # still the enclosing block's
            assert signal.getsignal(signal.SIGTERM) is guards._handler
        assert guards.received_signal() is None and guards._count == 0
        os.kill(os.getpid(), signal.SIGTERM)                                     # the old handler again
        time.sleep(0.1)
        assert seen == [signal.SIGTERM]
        from promptbench import cli

        assert cli.main(["sweep", "--help"]) == 0                                # a command run in-process
        assert signal.getsignal(signal.SIGTERM) is not guards._handler
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert seen == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


@needs_demo
def test_after_an_interrupted_cell_a_later_cell_is_not_interrupted(tmp_path: Path, monkeypatch) -> None:
    """In one long-lived process (a notebook, the test suite): a cell interrupted by SIGTERM, then a cell that
    fails. The second used to be recorded ``interrupted`` (the first signal was never forgotten) and SIGTERM kept
    raising ``Interrupted`` after the runs had returned."""
    from promptbench.config import compose
    from promptbench.engine import guards
    from promptbench.engine import run as run_module
    from promptbench.sweep.driver import run_cell

    def interrupted(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    seen: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        base = [*COMMON[:4], "method=coop", "shots=1", f"paths.output_dir={tmp_path}", "continue_on_error=true"]
        monkeypatch.setattr(run_module, "_run", interrupted)
        with pytest.raises(guards.Interrupted):
            run_cell(compose([*base, "seed=1"]))
        assert read_attempts(cell(tmp_path, seed=1))[-1]["status"] == "interrupted"
        assert guards.received_signal() is None
        monkeypatch.setattr(run_module, "_run", broken)
        assert run_cell(compose([*base, "seed=2"])) == "failed"
        attempt = read_attempts(cell(tmp_path, seed=2))[-1]
        assert (attempt["status"], attempt["error"]) == ("failed", "RuntimeError: boom")
        os.kill(os.getpid(), signal.SIGTERM)                                     # behaves as before the runs
        time.sleep(0.1)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_last_words_record_the_cell_in_flight_once(tmp_path: Path) -> None:
    """What a third signal writes before ``os._exit``: one interrupted attempt, none when run() recorded it."""
    from promptbench.config import compose
    from promptbench.engine.results import now_iso
    from promptbench.sweep.claims import record_cut_short

    cfg = compose([*COMMON[:4], "method=coop", "shots=1", f"paths.output_dir={tmp_path}"])
    started = now_iso()
    assert record_cut_short(cfg, started, "interrupted by SIGINT", status="interrupted")
    assert not record_cut_short(cfg, started, "interrupted by SIGINT", status="interrupted")
    attempts = read_attempts(cell(tmp_path))
    assert [(a["status"], a["error"], a["pid"]) for a in attempts] == [("interrupted", "interrupted by SIGINT",
                                                                        os.getpid())]
    assert read_result(cell(tmp_path) / "result.json")["status"] == "interrupted"


# ------------------------------------------------------------------------------------------ no flock
WARNED_ENV = "PROMPTBENCH_NO_LOCKS_WARNED"  # promptbench.sweep.claims.NO_LOCKS_ENV


def no_flock(*_args, **_kwargs):
    raise OSError(errno.ENOLCK, "No locks available")


def test_without_flock_cells_run_unclaimed_with_one_warning(tmp_path: Path, monkeypatch, capsys) -> None:
    """ENOLCK (NFS without lockd, some FUSE mounts) used to read as "claimed by another process": every cell
    looked running and nothing was ever computed."""
    import fcntl

    from promptbench.sweep import claims as cells

    monkeypatch.setenv(WARNED_ENV, "")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with cells.claim(tmp_path / "a") as holder:
        assert holder is None                                                # claimed (unlocked): it runs
        assert cells.lock_holder(tmp_path / "a") is None                     # and is never shown as running
    with cells.claim(tmp_path / "b") as holder:
        assert holder is None
    assert not cells.locks_work(tmp_path / "c")                             # the sweep driver's probe
    err = capsys.readouterr().err
    assert err.count("warning: cannot lock") == 1, err
    assert "ENOLCK" in err and "paths.output_dir" in err
    monkeypatch.setattr(fcntl, "flock", lambda *_a: (_ for _ in ()).throw(OSError(errno.EWOULDBLOCK, "busy")))
    with cells.claim(tmp_path / "a") as holder:                              # a real holder is still a holder
        assert holder is not None


@needs_demo
def test_without_flock_a_sweep_cell_is_computed(tmp_path: Path, monkeypatch, capsys) -> None:
    import fcntl

    from promptbench.config import compose
    from promptbench.engine import run as run_module
    from promptbench.sweep.driver import run_cell
    from promptbench.sweep.grid import compose_cells

    calls: list[str] = []

    def fake_run(cfg):
        calls.append(str(cfg.seed))
        return {"metrics": {"test/acc": 0.5}}

    monkeypatch.setenv(WARNED_ENV, "")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(run_module, "run", fake_run)
    args = [*COMMON[:4], "method=zeroshot", "shots=1", "seed=1", f"paths.output_dir={tmp_path}"]
    (cell(tmp_path, "zeroshot")).mkdir(parents=True)
    (cell(tmp_path, "zeroshot") / ".lock").write_text("pid 1 on elsewhere")  # a claim file left by anyone
    assert [c.status for c in compose_cells([args])] == ["missing"]          # not "running"
    assert run_cell(compose(args)) == "done" and calls == ["1"]
    assert capsys.readouterr().err.count("warning: cannot lock") == 1
