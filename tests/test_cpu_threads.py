"""The affinity window that sizes XLA's CPU pool, on real threads of this process."""

import os
import threading

import pytest

from harness.cpu_threads import sized_thread_pools

CPUS = os.sched_getaffinity(0)


def test_threads_started_inside_run_on_every_cpu_afterwards():
    seen = {}
    release = threading.Event()

    def pool_worker():
        seen["inside"] = os.sched_getaffinity(0)
        release.wait(10)
        seen["after"] = os.sched_getaffinity(0)

    with sized_thread_pools(1):
        assert len(os.sched_getaffinity(0)) == 1
        worker = threading.Thread(target=pool_worker)
        worker.start()
        while "inside" not in seen:
            release.wait(0.01)
    release.set()
    worker.join()
    assert len(seen["inside"]) == 1
    assert seen["after"] == CPUS
    assert os.sched_getaffinity(0) == CPUS


def test_the_mask_comes_back_when_the_framework_fails_to_start():
    with pytest.raises(RuntimeError), sized_thread_pools(1):
        raise RuntimeError("no backend")
    assert os.sched_getaffinity(0) == CPUS


def test_no_thread_count_leaves_the_mask_alone():
    with sized_thread_pools(None):
        assert os.sched_getaffinity(0) == CPUS
