"""Progress bars of the silent minutes (promptbench.core.console.progress)."""

from __future__ import annotations

import multiprocessing

from promptbench.core import console


def test_small_work_gets_no_bar_and_large_work_a_bar_that_yields_every_item() -> None:
    small = [1, 2, 3]
    assert console.progress(small, len(small), "x") is small
    large = list(range(console.PROGRESS_MIN))
    bar = console.progress(large, len(large), "composing")
    assert bar is not large and list(bar) == large


def _in_child(queue) -> None:
    items = list(range(console.PROGRESS_MIN))
    queue.put(console.progress(items, len(items), "x") is items)


def test_a_worker_process_never_draws_a_bar() -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_in_child, args=(queue,))
    proc.start()
    proc.join(120)
    assert queue.get(timeout=10) is True
