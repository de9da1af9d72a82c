"""Thread-pool sizes for frameworks that size their CPU pools from the affinity mask.

XLA (JAX, and Trax on its JAX math backend) offers no setting for its CPU
thread count: its client starts one worker per CPU the process may run on, once,
when it starts. To give it ``threads`` workers, the mask is narrowed while the
client starts and widened again afterwards, on every thread of the process, so
that the pool keeps its size but the operating system may run its threads on
any CPU. Narrowing for the whole run instead would pin every such process to the
same first CPUs: two one-thread runs side by side would share one core.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def sized_thread_pools(threads: int | None) -> Iterator[None]:
    """Inside, the process may run on ``threads`` CPUs; after, every thread on all of them again.

    Start the framework's CPU client inside the block. ``None`` leaves the mask alone.
    """
    if threads is None:
        yield
        return
    original = os.sched_getaffinity(0)
    if threads < 1:
        raise ValueError(f"threads={threads}: give at least one thread")
    os.sched_setaffinity(0, sorted(original)[:threads])
    try:
        yield
    finally:
        widen_all_threads(original)
    log.info(
        "started CPU thread pools with %d of %d CPUs", min(threads, len(original)), len(original)
    )


def widen_all_threads(cpus: set[int]) -> None:
    """Set the affinity of every thread of this process to ``cpus``.

    Threads inherit their creator's mask when they start, so a pool started under
    a narrowed mask stays on it unless each thread is widened by its own id.
    """
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, FileNotFoundError):  # the thread has ended meanwhile
            continue
