"""Run guards: signals (SIGINT/SIGTERM → :class:`Interrupted`), divergence (a non-finite metric →
:class:`Diverged`; the training loss is watched by :class:`promptbench.engine.callbacks.FiniteLossGuard`) and the
parent watchdog that stops a joblib worker whose driver has gone. Imports neither torch nor Lightning: every
command installs the signal handlers (``promptbench --help`` and ``completion`` stay instant).

Interrupted derives from ``BaseException`` but not from ``KeyboardInterrupt``: Lightning turns a
``KeyboardInterrupt`` inside ``fit`` into ``sys.exit(1)``, which would lose the signal; any other exception is
re-raised after its teardown.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: environment variable: the pid of the sweep driver, watched by its workers
DRIVER_PID_ENV = "PROMPTBENCH_DRIVER_PID"
#: seconds a sweep driver waits for its workers to record their interrupted cells and exit
FORWARD_WAIT_S = 30.0


class Interrupted(BaseException):  # noqa: N818 - reads as the status it records
    """SIGINT or SIGTERM arrived; ``exit_code`` is 128 + the signal number (130, 143)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Diverged(RuntimeError):
    """A non-finite training loss or final metric: the run stops and is recorded as ``diverged``."""


_received: int | None = None
_count = 0
_forward = False


def received_signal() -> int | None:
    """The first SIGINT/SIGTERM this process received (None if none)."""
    return _received


def _children() -> list[int]:
    """Process ids of this process's children (Linux ``/proc``; empty elsewhere)."""
    me, out = os.getpid(), []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = entry.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me:
                out.append(int(entry.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def forward_to_children(signum: int, wait_s: float = FORWARD_WAIT_S) -> list[int]:
    """Send ``signum`` to every child process (joblib/loky workers, not loky's resource tracker, which ignores
    signals) and wait up to ``wait_s`` for them to record their cells and exit, so none outlives the driver."""
    sent = []
    for pid in _children():
        if "resource_tracker" in _cmdline(pid):
            continue
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
            sent.append(pid)
    end = time.monotonic() + wait_s
    while any(_running(pid) for pid in sent) and time.monotonic() < end:
        time.sleep(0.1)
    return sent


#: callbacks that record the cells in flight, run before a later signal ends the process at once
_last_words: list[Callable[[int], None]] = []


def _say_last_words(signum: int) -> None:
    """Record every cell in flight (as interrupted by ``signum``) before the process exits at once."""
    for record in list(_last_words):
        with contextlib.suppress(BaseException):
            record(signum)


def _handler(signum: int, _frame: Any) -> None:
    global _received, _count
    _count += 1
    if _received is None:
        _received = signum
        if _forward:
            forward_to_children(signum)
        raise Interrupted(signum)
    if _count >= 3:  # a third signal while the first is being recorded: record what is in flight, then leave now
        _say_last_words(signum)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)


def install_signal_handlers(forward: bool = False) -> bool:
    """SIGINT and SIGTERM raise :class:`Interrupted` (once; later signals are ignored while it is handled, a
    third one records the cells in flight and exits at once), for the rest of the process: for a command's
    process; a run or sweep inside a longer-lived one uses :func:`handled_signals`. ``forward``: also pass the
    signal on to child processes. Main thread only; returns whether the handlers were installed."""
    global _forward
    if threading.current_thread() is not threading.main_thread():
        return False
    _forward = _forward or forward
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _handler)
    return True


@contextlib.contextmanager
def handled_signals(forward: bool = False) -> Iterator[bool]:
    """:func:`install_signal_handlers` for the duration of the block only. It starts with no signal on record (one
    left by an earlier run whose :class:`Interrupted` was caught is stale); on leaving it the previous handlers
    come back and, unless an enclosing block (or the command) had installed them too, the received signal and
    the count are reset, so a later run in the same process (a notebook, the test suite) starts clean. Yields
    whether the handlers were installed (main thread only)."""
    global _received, _count, _forward
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    before = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    outermost = all(handler is not _handler for handler in before.values())
    forward_before = _forward
    _received, _count = None, 0
    install_signal_handlers(forward)
    try:
        yield True
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _forward = forward_before
        if outermost:  # nested (a cell inside a sweep): the signal still belongs to the enclosing block
            _received, _count = None, 0


@contextlib.contextmanager
def recorded_if_killed(record: Callable[[int], None]) -> Iterator[None]:
    """Within this block a signal that ends the process at once (the third) first calls ``record(signum)``:
    the cell in flight is on disk before any exit."""
    _last_words.append(record)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _last_words.remove(record)


_watchdog: threading.Thread | None = None


def start_parent_watchdog(interval_s: float = 1.0, grace_s: float = 30.0) -> None:
    """In a worker process: when the driver dies (``$PROMPTBENCH_DRIVER_PID``, set by the sweep driver, else the
    parent process), send ourselves SIGTERM (the running cell is recorded as interrupted), and exit after
    ``grace_s`` if still alive."""
    global _watchdog
    if _watchdog is not None:
        return
    parent = int(os.environ.get(DRIVER_PID_ENV) or os.getppid())

    def gone() -> bool:
        if Path("/proc").is_dir():
            return not _running(parent)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    def watch() -> None:
        while not gone():
            time.sleep(interval_s)
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(128 + signal.SIGTERM)

    _watchdog = threading.Thread(target=watch, name="promptbench-parent-watchdog", daemon=True)
    _watchdog.start()


# --------------------------------------------------------------------------------------------- divergence
def check_finite(metrics: Mapping[str, float], hint: str = "") -> None:
    """Raise :class:`Diverged` naming the first non-finite metric."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        key = sorted(bad)[0]
        raise Diverged(f"metric {key} is {bad[key]}" + (f" ({hint})" if hint else ""))
